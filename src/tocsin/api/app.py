"""The aiohttp application: routes from the route table, one error shape, a 64 KiB body limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from tocsin.api.context import API_CONTEXT, ApiContext
from tocsin.api.errors import Handler, error_middleware
from tocsin.api.routes import ROUTES
from tocsin.config import Settings
from tocsin.monitor.maintenance import Window
from tocsin.monitor.states import StateRow
from tocsin.tickets.store import TicketStore

MAX_BODY_BYTES = 64 * 1024


def make_app(
    settings: Settings,
    store: TicketStore,
    *,
    ping: Handler | None = None,
    subjects: Callable[[str], list[StateRow] | None] | None = None,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    readiness: Callable[[], dict[str, str]] | None = None,
    maintenance: Callable[[str], list[Window]] | None = None,
    maintenance_changed: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """The API; the running monitor lends `ping` (serving /ping/{key}, push heartbeats),
    `subjects` (its live view of an org's subjects) and its maintenance windows (and how to
    tell it the store's changed)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware])
    context = ApiContext.build(settings, store, ping, subjects)
    context.metrics, context.readiness = metrics, readiness
    context.maintenance, context.maintenance_changed = maintenance, maintenance_changed
    app[API_CONTEXT] = context
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
    return app
