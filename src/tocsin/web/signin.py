"""Signing in and out: a token, or a configured user's name and password (argon2), into a
session cookie (HttpOnly, SameSite=Strict, Secure when the daemon is published as https).

A failed sign-in waits [web] login_delay before it answers, and guesses from one address wait
their turn, so a guesser gets about one try per delay; it is logged with the name tried and
the address, never the password or token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tocsin.config import OrgConfig, UserConfig
from tocsin.web import render
from tocsin.web.access import CSRF_FIELD, signed_in
from tocsin.web.context import WEB_CONTEXT, WebContext
from tocsin.web.sessions import COOKIE, Session, create, new_id, remove

log = structlog.get_logger("tocsin.web")

LOGIN_COOKIE = "tocsin_login"  # the sign-in form's CSRF token, before there is a session
_hasher = PasswordHasher()
# Verified against when the name is unknown, so an unknown name costs what a wrong password does.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def _orgs(context: WebContext) -> list[OrgConfig]:
    return list(context.settings.config.orgs)


def _has_users(context: WebContext) -> bool:
    return any(org.users for org in _orgs(context))


def _safe_next(target: str | None) -> str | None:
    """Only a path on this server (never //host or a scheme: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and "\\" not in target else None


def _form(
    request: web.Request,
    context: WebContext,
    *,
    error: str | None = None,
    status: int = 200,
    username: str = "",
) -> web.Response:
    csrf = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render.page(
        request,
        "login.html",
        None,
        {
            "csrf": csrf,
            "users": _has_users(context),
            "orgs": [org for org in _orgs(context) if org.users],
            "error": error,
            "username": username,
            "next": _safe_next(request.query.get("next")) or "",
        },
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        csrf,
        httponly=True,
        samesite="Strict",
        secure=context.secure_cookies,
        path="/login",
    )
    return response


async def login_form(request: web.Request) -> web.Response:
    context = request.app[WEB_CONTEXT]
    session = await signed_in(request)
    if session is not None:
        raise web.HTTPSeeOther(f"/orgs/{session.org}/tickets")
    return _form(request, context)


def _find_user(
    context: WebContext, org_slug: str, name: str
) -> tuple[OrgConfig, UserConfig] | None:
    found = [
        (org, user)
        for org in _orgs(context)
        if not org_slug or org.slug == org_slug
        for user in org.users
        if user.name == name
    ]
    return found[0] if len(found) == 1 else None


def _verify(encoded: str, password: str) -> bool:
    try:
        return _hasher.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


async def login(request: web.Request) -> web.StreamResponse:
    context = request.app[WEB_CONTEXT]
    form = await request.post()
    expected = request.cookies.get(LOGIN_COOKIE, "")
    presented = form.get(CSRF_FIELD)
    if (
        not expected
        or not isinstance(presented, str)
        or not hmac.compare_digest(presented, expected)
    ):
        return _form(
            request,
            context,
            error="The sign-in form expired (its CSRF token is missing): try again.",
            status=403,
        )
    token_text = str(form.get("token") or "").strip()
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    org_slug = str(form.get("org") or "")
    client = request.remote or "unknown"
    response: web.StreamResponse
    async with _one_at_a_time(context, client):
        who = await _identify(context, token_text, username, password, org_slug)
        if who is None:
            log.warning(
                "sign-in failed",
                client=client,
                method="token" if token_text else "password",
                username=username or None,
            )
            delay: timedelta = context.settings.config.web.login_delay
            await asyncio.sleep(delay.total_seconds())
            response = _form(
                request,
                context,
                error="That did not sign you in: check the token, or the name and password.",
                status=401,
                username=username,
            )
        else:
            target = _safe_next(str(form.get("next") or ""))
            response = await _start_session(request, context, *who, target=target)
    return response


@contextlib.asynccontextmanager
async def _one_at_a_time(context: WebContext, client: str) -> AsyncIterator[None]:
    """Sign-ins from one address run one after another (so each failure's wait holds the
    next guess back); the entry goes once nobody from there is waiting."""
    entry = context.login_queues.setdefault(client, [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        async with entry[0]:
            yield
    finally:
        entry[1] -= 1
        if not entry[1]:
            del context.login_queues[client]


async def _identify(
    context: WebContext, token_text: str, username: str, password: str, org_slug: str
) -> tuple[str, str, str, str] | None:
    """(org, name, scope, via) for good credentials, else None."""
    if token_text:
        token = context.api.tokens.identify(token_text)
        return None if token is None else (token.org, token.name, token.scope, "token")
    if not username or not password:
        return None
    found = _find_user(context, org_slug, username)
    encoded = found[1].password_argon2 if found else _DUMMY_HASH
    ok = await asyncio.to_thread(_verify, encoded, password)
    if not ok or found is None:
        return None
    org, user = found
    return org.slug, user.name, user.role, "user"


async def _start_session(
    request: web.Request,
    context: WebContext,
    org: str,
    name: str,
    scope: str,
    via: str,
    *,
    target: str | None,
) -> web.StreamResponse:
    now = context.clock()
    lifetime: timedelta = context.settings.config.web.session_lifetime
    session_id = new_id()
    session = Session(org, name, scope, via, secrets.token_urlsafe(24), now + lifetime)
    await context.api.store.writer.run(lambda conn: create(conn, session_id, session, now))
    log.info("signed in", org=org, name=name, via=via, client=request.remote)
    if target is None or not target.startswith(f"/orgs/{org}/"):
        target = f"/orgs/{org}/tickets"
    response = _see_other(target)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(lifetime.total_seconds()),
        httponly=True,
        samesite="Strict",
        secure=context.secure_cookies,
        path="/",
    )
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    context = request.app[WEB_CONTEXT]
    session_id = request.cookies.get(COOKIE)
    session = await signed_in(request)
    if session_id and session is not None:
        form = await request.post()
        presented = form.get(CSRF_FIELD)
        if not isinstance(presented, str) or not hmac.compare_digest(presented, session.csrf):
            raise web.HTTPForbidden(text="the form's CSRF token is missing: reload the page")
        await context.api.store.writer.run(lambda conn: remove(conn, session_id))
        context.sessions.forget(session_id)
        log.info("signed out", org=session.org, name=session.name)
    response = _see_other("/login")
    response.del_cookie(COOKIE, path="/")
    return response


def _see_other(target: str) -> web.Response:
    """A 303 that carries cookies (an HTTPException is raised, not returned)."""
    return web.Response(status=303, headers={"Location": target})


async def home(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    raise web.HTTPSeeOther(f"/orgs/{session.org}/tickets" if session else "/login")
