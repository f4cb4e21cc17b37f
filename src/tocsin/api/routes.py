"""The route table: one list that both registers the routes and writes the OpenAPI document,
so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from tocsin.api import maintenance, schemas, subjects, tickets, webhooks
from tocsin.api.context import API_CONTEXT
from tocsin.api.errors import ApiError, Handler
from tocsin.api.openapi import build_document


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, object]
    repeatable: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    scopes: tuple[str, ...] = ()  # any of these; () = no token needed
    body: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    query: tuple[QueryParam, ...] = ()
    name: str | None = None  # when one handler serves two methods

    @property
    def operation_id(self) -> str:
        return self.name or self.handler.__name__


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "checks": {}})


async def readyz(request: web.Request) -> web.Response:
    context = request.app[API_CONTEXT]
    checks: dict[str, str] = {}
    try:
        await context.store.ping()
        checks["store"] = "ok"
    except Exception as exc:  # any failure to reach the store means not ready
        checks["store"] = f"unreachable: {type(exc).__name__}"
    cause = context.store.health.cause  # writes failing says more than a read that works
    if cause is not None:
        checks["store"] = cause
    if context.readiness is not None:
        checks.update(context.readiness())
    ready = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition format."""
    render = request.app[API_CONTEXT].metrics
    if render is None:
        raise ApiError(404, "not_found", "metrics are served by the daemon")
    body = await render()
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def ping(request: web.Request) -> web.StreamResponse:
    """Push heartbeats: GET or POST /ping/{key} (?status=fail for an explicit failure)."""
    handler = request.app[API_CONTEXT].ping
    if handler is None:
        raise ApiError(404, "not_found", "no push heartbeats are configured", "key")
    return await handler(request)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_document(ROUTES))


_STATE_SCHEMA: dict[str, object] = {"type": "string", "enum": ["open", "in_progress", "resolved"]}
LIST_QUERY = (
    QueryParam(
        "state",
        "Filter by state; repeat or comma-separate for several.",
        _STATE_SCHEMA,
        repeatable=True,
    ),
    QueryParam(
        "source",
        "Filter by source.",
        {"type": "string", "enum": ["health_monitor", "user", "workflow"]},
    ),
    QueryParam("kind", "Filter by kind.", {"type": "string"}),
    QueryParam(
        "subject_type",
        "Filter by subject type.",
        {"type": "string", "enum": ["device", "integration", "space", "other"]},
    ),
    QueryParam("subject_id", "Filter by subject id.", {"type": "string"}),
    QueryParam(
        "q", "Case-insensitive text search in subject, description and kind.", {"type": "string"}
    ),
    QueryParam(
        "limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
    ),
    QueryParam("cursor", "The next_cursor of the previous page.", {"type": "string"}),
)

TICKETS = "/api/v1/orgs/{org}/tickets"
TICKET = TICKETS + "/{seq}"
MAINTENANCE = "/api/v1/orgs/{org}/maintenance"
_ERR = schemas.ErrorOut
_WRITE_ERRORS: dict[int, type[BaseModel] | None] = {
    400: _ERR,
    401: _ERR,
    403: _ERR,
    404: _ERR,
    409: _ERR,
    413: _ERR,
    422: _ERR,
}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/metrics", metrics, "Prometheus metrics (text format).", responses={200: None}),
    Route(
        "GET",
        "/ping/{key}",
        ping,
        "A push heartbeat (text answer: OK).",
        responses={200: None, 400: None, 404: None},
        name="ping_get",
    ),
    Route(
        "POST",
        "/ping/{key}",
        ping,
        "A push heartbeat; the body may say status=fail.",
        responses={200: None, 400: None, 404: None},
        name="ping_post",
    ),
    Route("GET", "/healthz", healthz, "The process is alive.", responses={200: schemas.HealthOut}),
    Route(
        "GET",
        "/readyz",
        readyz,
        "The store is reachable.",
        responses={200: schemas.HealthOut, 503: schemas.HealthOut},
    ),
    Route("GET", "/api/v1/openapi.json", openapi_document, "This document.", responses={200: None}),
    Route(
        "GET",
        TICKETS,
        tickets.list_tickets,
        "List tickets, newest first.",
        ("read",),
        responses={
            200: schemas.TicketListOut,
            400: _ERR,
            401: _ERR,
            403: _ERR,
            404: _ERR,
            422: _ERR,
        },
        query=LIST_QUERY,
    ),
    Route(
        "POST",
        TICKETS,
        tickets.open_ticket,
        "Open a ticket (workflow Open Ticket, or user Report issue).",
        ("write", "workflow"),
        body=schemas.OpenTicketIn,
        responses={201: schemas.TicketDetailOut, 200: schemas.TicketDetailOut, **_WRITE_ERRORS},
    ),
    Route(
        "GET",
        TICKET,
        tickets.get_ticket,
        "One ticket with its timeline.",
        ("read",),
        responses={200: schemas.TicketDetailOut, 400: _ERR, 401: _ERR, 403: _ERR, 404: _ERR},
    ),
    Route(
        "PATCH",
        TICKET,
        tickets.edit_ticket,
        "Edit the description.",
        ("write",),
        body=schemas.EditIn,
        responses={200: schemas.TicketDetailOut, **_WRITE_ERRORS},
    ),
    Route(
        "POST",
        TICKET + "/start",
        tickets.start_ticket,
        "Open -> In Progress.",
        ("write",),
        body=schemas.TransitionIn,
        responses={200: schemas.TicketDetailOut, **_WRITE_ERRORS},
    ),
    Route(
        "POST",
        TICKET + "/resolve",
        tickets.resolve_ticket,
        "Open or In Progress -> Resolved.",
        ("write", "workflow"),
        body=schemas.TransitionIn,
        responses={200: schemas.TicketDetailOut, **_WRITE_ERRORS},
    ),
    Route(
        "POST",
        TICKET + "/reopen",
        tickets.reopen_ticket,
        "Resolved -> Open.",
        ("write",),
        body=schemas.TransitionIn,
        responses={200: schemas.TicketDetailOut, **_WRITE_ERRORS},
    ),
    Route(
        "GET",
        "/api/v1/orgs/{org}/subjects",
        subjects.list_subjects,
        "Every subject's health, since when, last probe result and open ticket.",
        ("read",),
        responses={200: subjects.SubjectListOut, 401: _ERR, 403: _ERR, 404: _ERR},
    ),
    Route(
        "GET",
        MAINTENANCE,
        maintenance.list_maintenance,
        "The org's maintenance windows (the config's first, then oldest first); a one-off "
        "window that has ended is not listed.",
        ("read",),
        responses={200: schemas.MaintenanceListOut, 401: _ERR, 403: _ERR, 404: _ERR},
    ),
    Route(
        "POST",
        MAINTENANCE,
        maintenance.add_maintenance,
        "Add a maintenance window: while it is active, the subjects it covers open no tickets.",
        ("write",),
        body=schemas.MaintenanceIn,
        responses={201: schemas.MaintenanceWindowOut, **_WRITE_ERRORS},
    ),
    Route(
        "DELETE",
        MAINTENANCE + "/{id}",
        maintenance.remove_maintenance,
        "Remove a maintenance window the API or the CLI added (a config window: 409).",
        ("write",),
        responses={204: None, 401: _ERR, 403: _ERR, 404: _ERR, 409: _ERR},
    ),
    Route(
        "POST",
        TICKET + "/comments",
        tickets.add_comment,
        "Add a comment (markdown).",
        ("write", "workflow"),
        body=schemas.CommentIn,
        responses={201: schemas.TicketDetailOut, **_WRITE_ERRORS},
    ),
    Route(
        "GET",
        "/api/v1/orgs/{org}/webhooks/deliveries",
        webhooks.list_deliveries,
        "Webhook deliveries, newest first.",
        ("write",),
        responses={
            200: webhooks.DeliveryListOut,
            400: _ERR,
            401: _ERR,
            403: _ERR,
            404: _ERR,
            422: _ERR,
        },
        query=(
            QueryParam(
                "status",
                "Filter by status; repeat or comma-separate for several.",
                {"type": "string", "enum": ["pending", "delivering", "delivered", "failed"]},
                repeatable=True,
            ),
            QueryParam("endpoint", "Filter by webhook name.", {"type": "string"}),
            QueryParam(
                "limit",
                "Page size.",
                {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            ),
            QueryParam("cursor", "The next_cursor of the previous page.", {"type": "string"}),
        ),
    ),
    Route(
        "POST",
        "/api/v1/orgs/{org}/webhooks/deliveries/{delivery_id}/redeliver",
        webhooks.redeliver,
        "Send a delivery again now, with its webhook-id and a fresh retry schedule.",
        ("write",),
        responses={
            200: webhooks.DeliveryOut,
            400: _ERR,
            401: _ERR,
            403: _ERR,
            404: _ERR,
            409: _ERR,
        },
    ),
)
