"""Who is looking at a page and what they may do: the session cookie, checked against the
config as it is now (a user or token removed by a reload signs its sessions out, a changed role
applies at once), the CSRF token every form carries, and the API's own scope rules."""

from __future__ import annotations

import hmac
from dataclasses import replace
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from tocsin.api.auth import GRANTS
from tocsin.api.errors import ApiError
from tocsin.tickets.model import Actor, ActorType
from tocsin.web.context import WEB_CONTEXT, WebContext
from tocsin.web.sessions import COOKIE, Session, fingerprint

Form = MultiDictProxy[str | bytes | bytearray | web.FileField]
READ = frozenset({"read"})
WRITE = frozenset({"write"})
WRITE_OR_WORKFLOW = frozenset({"write", "workflow"})
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 512 * 1024


def can(session: Session, needs: frozenset[str]) -> bool:
    return bool(GRANTS[session.scope] & needs)


def actor(session: Session) -> Actor:
    """The person (or workflow token) on the timeline, by the name they signed in with."""
    kind = ActorType.WORKFLOW if session.scope == "workflow" else ActorType.USER
    return Actor(kind, session.name)


def _current(context: WebContext, session: Session) -> Session | None:
    """The session as the config stands now: None if its user or token is gone or has a new
    password or secret; the scope the config gives now."""
    if session.via == "user":
        for org in context.settings.config.orgs:
            if org.slug == session.org:
                for user in org.users:
                    if user.name == session.name and same(
                        session.credential, fingerprint(user.password_argon2.encode())
                    ):
                        return replace(session, scope=user.role)
        return None
    for token in context.settings.tokens:
        if (
            token.org == session.org
            and token.name == session.name
            and same(session.credential, fingerprint(token.sha256))
        ):
            return replace(session, scope=token.scope)
    return None


def same(presented: object, expected: str) -> bool:
    """Whether a secret a client sent (a form field: any text, or not text at all) is
    `expected`, in time that does not depend on where they differ."""
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


async def signed_in(request: web.Request) -> Session | None:
    context = request.app[WEB_CONTEXT]
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    session = await context.sessions.find(session_id, context.clock())
    return None if session is None else _current(context, session)


async def visitor(request: web.Request, needs: frozenset[str] = READ) -> tuple[WebContext, Session]:
    """The signed-in session for this org's page; else to the sign-in page and back."""
    context = request.app[WEB_CONTEXT]
    session = await signed_in(request)
    if session is None:
        raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
    _own_org(request, session)
    _scope(session, needs)
    return context, session


def _own_org(request: web.Request, session: Session) -> None:
    """The page's org must be the session's: another's does not exist for it."""
    org = request.match_info["org"]
    if session.org != org:
        raise ApiError(404, "org_not_found", f"no org {org!r}", "org")


def _scope(session: Session, needs: frozenset[str]) -> None:
    if not can(session, needs):
        wanted = " or ".join(sorted(needs))
        raise ApiError(403, "forbidden", f"this needs {wanted} access; you have {session.scope}")


async def posted(request: web.Request, needs: frozenset[str]) -> tuple[WebContext, Session, Form]:
    """A form post from a page: signed in, the session's CSRF token, the scope it needs."""
    context = request.app[WEB_CONTEXT]
    session = await signed_in(request)
    if session is None:
        raise ApiError(401, "unauthorized", "you are signed out; sign in and try again")
    _own_org(request, session)
    # A form is form-encoded: 20,000 characters of Chinese take 180 KB of it, more than the
    # API's 64 KiB of JSON.
    form = await request.clone(client_max_size=MAX_FORM_BYTES).post()
    if not same(form.get(CSRF_FIELD), session.csrf):
        raise ApiError(
            403, "csrf_failed", "the form's CSRF token is missing or stale: reload the page"
        )
    _scope(session, needs)
    return context, session, form


def text_field(form: Form, name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or not isinstance(value, str):
        if required:
            raise ApiError(422, "missing_field", f"{name} is required", name)
        return None
    return value.replace("\r\n", "\n")
