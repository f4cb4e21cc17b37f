"""The aiohttp application: routes from the route table, one error shape, a 64 KiB body limit."""

from __future__ import annotations

from aiohttp import web

from tocsin.api.context import API_CONTEXT, ApiContext
from tocsin.api.errors import Handler, error_middleware
from tocsin.api.routes import ROUTES
from tocsin.config import Settings
from tocsin.tickets.store import TicketStore

MAX_BODY_BYTES = 64 * 1024


def make_app(
    settings: Settings, store: TicketStore, *, ping: Handler | None = None
) -> web.Application:
    """The API; `ping` serves /ping/{key} (push heartbeats) when the monitor has push subjects."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware])
    app[API_CONTEXT] = ApiContext.build(settings, store, ping)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
    return app
