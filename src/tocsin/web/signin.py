"""Signing in and out: a token, or a configured user's name and password (argon2), into a
session cookie (HttpOnly, SameSite=Strict, Secure when the daemon is published as https).

A failed sign-in waits [web] login_delay before it answers, and guesses from one address wait
their turn, so a guesser gets about one try per delay; it is logged with the name tried and
the address, never the password or token.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tocsin.config import OrgConfig, Scope, UserConfig
from tocsin.web import render
from tocsin.web.access import CSRF_FIELD, same, signed_in
from tocsin.web.context import WEB_CONTEXT, WebContext
from tocsin.web.sessions import COOKIE, Session, create, fingerprint, new_id, remove
from tocsin.web.throttle import client_address

log = structlog.get_logger("tocsin.web")

LOGIN_COOKIE = "tocsin_login"  # the sign-in form's CSRF token, before there is a session
_hasher = PasswordHasher()
# argon2 takes 64 MiB and tens of ms a check: at most two at once, on threads of their own (the
# loop's default executor also resolves host names for the probes).
_ARGON2 = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tocsin-argon2")


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so an unknown name costs what a wrong
    password does (made at the first such sign-in: hashing costs 64 MiB and tens of ms, which
    neither the daemon's start nor a CLI command should pay)."""
    return _hasher.hash(secrets.token_hex(16))


def _safe_next(target: str | None) -> str | None:
    """Only a path on this server (never //host or a scheme: no open redirect), printable."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if not target.isprintable():  # CR/LF would end the Location header
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
    target: str | None = None,
) -> web.Response:
    csrf = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    with_users = [org for org in context.settings.config.orgs if org.users]
    response = render.page(
        request,
        "login.html",
        None,
        {
            "csrf": csrf,
            "users": bool(with_users),
            "orgs": with_users,
            "error": error,
            "username": username,
            "next": _safe_next(target or request.query.get("next")) or "",
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
        for org in context.settings.config.orgs
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
    target = _safe_next(str(form.get("next") or ""))
    if not expected or not same(form.get(CSRF_FIELD), expected):
        return _form(
            request,
            context,
            error="The sign-in form expired (its CSRF token is missing): try again.",
            status=403,
            target=target,
        )
    token_text = str(form.get("token") or "").strip()
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    org_slug = str(form.get("org") or "")
    client = client_address(request, context.settings.config.web.trusted_proxies)
    response: web.StreamResponse
    async with context.login_queues.turn(client):
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
                target=target,
            )
        else:
            response = await _start_session(request, context, who, target=target)
    return response


@dataclass(frozen=True)
class Identity:
    org: str
    name: str
    scope: Scope
    via: str  # token | user
    credential: str  # sessions.fingerprint of the token's digest or the user's hash


async def _identify(
    context: WebContext, token_text: str, username: str, password: str, org_slug: str
) -> Identity | None:
    """Who good credentials are, else None."""
    if token_text:
        token = context.api.tokens.identify(token_text)
        if token is None:
            return None
        return Identity(token.org, token.name, token.scope, "token", fingerprint(token.sha256))
    if not username or not password:
        return None
    found = _find_user(context, org_slug, username)
    encoded = found[1].password_argon2 if found else _dummy_hash()
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(_ARGON2, _verify, encoded, password)
    if not ok or found is None:
        return None
    org, user = found
    credential = fingerprint(user.password_argon2.encode())
    return Identity(org.slug, user.name, user.role, "user", credential)


async def _start_session(
    request: web.Request, context: WebContext, who: Identity, *, target: str | None
) -> web.StreamResponse:
    now = context.clock()
    lifetime: timedelta = context.settings.config.web.session_lifetime
    session_id = new_id()
    csrf = secrets.token_urlsafe(24)
    session = Session(who.org, who.name, who.scope, who.via, who.credential, csrf, now + lifetime)
    await context.api.store.writer.run(lambda conn: create(conn, session_id, session, now))
    client = client_address(request, context.settings.config.web.trusted_proxies)
    log.info("signed in", org=who.org, name=who.name, via=who.via, client=client)
    if target is None or not target.startswith(f"/orgs/{who.org}/"):
        target = f"/orgs/{who.org}/tickets"
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
    response = _see_other("/login")
    if session_id and session is not None:
        form = await request.post()
        if not same(form.get(CSRF_FIELD), session.csrf):
            raise web.HTTPForbidden(text="the form's CSRF token is missing: reload the page")
        await context.api.store.writer.run(lambda conn: remove(conn, session_id))
        context.sessions.forget(session_id)
        log.info("signed out", org=session.org, name=session.name)
        # Only then: a post from another site (which carries no SameSite=Strict cookie) must
        # not be able to sign anyone out.
        response.del_cookie(COOKIE, path="/")
    return response


def _see_other(target: str) -> web.Response:
    """A 303 that carries cookies (an HTTPException is raised, not returned)."""
    return web.Response(status=303, headers={"Location": target})


async def home(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    raise web.HTTPSeeOther(f"/orgs/{session.org}/tickets" if session else "/login")
