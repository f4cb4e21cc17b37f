"""The pages' routes on the daemon's aiohttp application, the headers every page carries
(a strict Content-Security-Policy: no inline script or style, nothing from elsewhere; framing
denied) and error pages in HTML for the pages' paths (the API keeps its JSON errors)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from tocsin.api.context import API_CONTEXT
from tocsin.api.errors import Handler, as_api_error
from tocsin.config import Settings
from tocsin.web import board, deliveries, render, report, signin, tickets
from tocsin.web.access import MAX_FORM_BYTES, signed_in, visitor
from tocsin.web.context import WEB_CONTEXT, WebContext
from tocsin.web.live import Live
from tocsin.web.sessions import Session, SessionBook
from tocsin.web.site import Site

log = structlog.get_logger("tocsin.web")

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
API_PREFIXES = ("/api/", "/ping/", "/healthz", "/readyz", "/metrics")


def is_page(path: str) -> bool:
    return not path.startswith(API_PREFIXES)


@web.middleware
async def page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For pages: the security headers, and errors as an HTML page with the API's message."""
    if not is_page(request.path):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(SECURITY_HEADERS)
            raise
        message = exc.text if exc.status == 403 and exc.text else exc.reason
        if exc.status == 404:
            message = f"There is no page at {request.path}."
        elif exc.status == 413:
            message = f"The form is larger than {MAX_FORM_BYTES // 1024} KiB: shorten the text."
        response = await _error(request, exc.status, message)
    except Exception as exc:
        mapped = as_api_error(exc)
        if mapped is None:
            log.exception("unhandled error", method=request.method, path=request.path)
            response = await _error(request, 500, "An internal error; it has been logged.")
        else:
            response = await _error(request, mapped.status, mapped.message)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/static/") and response.status == 200:  # named by content
            response.headers.setdefault("Cache-Control", "public, max-age=86400")
        else:
            response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _error(request: web.Request, status: int, message: str) -> web.Response:
    session = await _quiet_session(request)
    return render.page(
        request, "error.html", session, {"status": status, "message": message}, status=status
    )


async def _quiet_session(request: web.Request) -> Session | None:
    try:
        return await signed_in(request)
    except Exception:  # an error page must render even when the store does not answer
        return None


async def live(request: web.Request) -> web.StreamResponse:
    context, session = await visitor(request)
    kinds = frozenset(request.query.get("kinds", "tickets,subjects").split(",")) & {
        "tickets",
        "subjects",
    }

    async def still_signed_in() -> bool:
        return await signed_in(request) is not None

    wanted = kinds or frozenset({"tickets"})
    return await context.live.stream(request, session.org, wanted, still_signed_in)


def add_pages(
    app: web.Application,
    settings: Settings,
    *,
    subjects_changed: Callable[[], float] | None = None,
) -> WebContext:
    """Serve the pages from `app` (tocsin.api.app.make_app's, before it starts), reading
    through the API's context: its store and the monitor's views."""
    api = app[API_CONTEXT]
    # Inside the API's error middleware: pages answer errors as pages, the API as JSON.
    app.middlewares.append(page_middleware)
    context = WebContext(
        api=api,
        site=Site(settings),
        sessions=SessionBook(api.store.database),
        live=Live(subjects_changed),
    )
    app[WEB_CONTEXT] = context
    render.setup(app)
    api.store.on_change(context.live.tickets_changed)  # description edits too
    api.store.on_triggers(context.counts.clear)  # an open or a transition: counts change

    async def close_streams(app: web.Application) -> None:
        await context.live.close()

    app.on_shutdown.append(close_streams)
    org = "/orgs/{org}"
    ticket = org + "/tickets/{seq:[^/]+}"
    router = app.router
    router.add_get("/", signin.home)
    router.add_get("/login", signin.login_form)
    router.add_post("/login", signin.login)
    router.add_post("/logout", signin.logout)
    router.add_get(org + "/tickets", tickets.list_page)
    router.add_get(ticket, tickets.detail_page)
    for name, handler in tickets.ACTIONS.items():
        router.add_post(f"{ticket}/{name}", handler)
    router.add_get(org + "/report", report.report_form)
    router.add_post(org + "/report", report.report)
    router.add_get(org + "/subjects", board.board_page)
    router.add_get(org + "/webhooks", deliveries.webhooks_page)
    router.add_post(org + "/webhooks/deliveries/{delivery_id}/redeliver", deliveries.redeliver)
    router.add_get(org + "/live", live)
    router.add_static("/static/", STATIC, name="static", append_version=True)
    return context
