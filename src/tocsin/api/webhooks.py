"""Webhook deliveries through the API, for write-scope tokens of the org:

- GET  /api/v1/orgs/{org}/webhooks/deliveries: newest first; `status` (repeatable or
  comma-separated), `endpoint`, `limit` (1-200), `cursor`.
- POST /api/v1/orgs/{org}/webhooks/deliveries/{delivery_id}/redeliver: send it again now with
  its webhook-id and a fresh retry schedule (409 while an attempt is in flight).
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from tocsin import cursors
from tocsin.api.auth import authenticate, require
from tocsin.api.context import API_CONTEXT, ApiContext
from tocsin.api.errors import ApiError
from tocsin.api.query import enum_values, limit, refuse_unknown, whole_number
from tocsin.delivery import ops
from tocsin.delivery.outbox import Status
from tocsin.tickets.store import utcnow

WRITE = frozenset({"write"})
LIST_PARAMS = frozenset({"status", "endpoint", "limit", "cursor"})
MAX_LIMIT = 200


class DeliveryOut(BaseModel):
    """One delivery of one trigger to one endpoint."""

    model_config = ConfigDict(extra="forbid")
    id: int
    endpoint: str
    org: str
    type: str = Field(description="The trigger: ticket.opened, ticket.started, ...")
    ticket_seq: int
    webhook_id: str = Field(description="The webhook-id header, the same on every attempt.")
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int
    created_at: str
    next_attempt_at: str | None = Field(description="When a pending delivery is tried next.")
    last_attempt_at: str | None
    last_status: int | None = Field(description="The HTTP status of the last answer, if any.")
    last_error: str | None
    delivered_at: str | None


class DeliveryListOut(BaseModel):
    """Deliveries, newest first."""

    model_config = ConfigDict(extra="forbid")
    deliveries: list[DeliveryOut]
    next_cursor: str | None


def _caller(request: web.Request) -> tuple[ApiContext, str]:
    context = request.app[API_CONTEXT]
    token = authenticate(request, context.tokens)
    org = request.match_info["org"]
    require(token, org, WRITE)
    return context, org


def encode_cursor(delivery_id: int) -> str:
    return cursors.encode("delivery", delivery_id)


def decode_cursor(cursor: str) -> int:
    delivery_id = cursors.decode("delivery", cursor)
    if delivery_id is None:
        raise ApiError(422, "invalid_value", "cursor: not a cursor this API gave out", "cursor")
    return delivery_id


async def list_deliveries(request: web.Request) -> web.Response:
    context, org = _caller(request)
    query = request.query
    refuse_unknown(query, LIST_PARAMS)
    statuses = [status.value for status in enum_values(query, "status", Status)]
    cursor = query.get("cursor")
    rows, more = await ops.list_deliveries(
        context.store.database.read,
        org=org,
        endpoint=query.get("endpoint") or None,
        statuses=statuses,
        limit=limit(query, MAX_LIMIT),
        before=decode_cursor(cursor) if cursor else None,
    )
    return web.json_response(
        {
            "deliveries": [row.to_json() for row in rows],
            "next_cursor": encode_cursor(more) if more is not None else None,
        }
    )


async def redeliver_now(context: ApiContext, org: str, raw: str) -> int:
    """Queue the org's delivery `raw` (the path's text) to be sent again now; its id. A 400
    for what is not a delivery id, 404 for another org's or none, 409 while one is in flight."""
    if not whole_number(raw):
        raise ApiError(
            400,
            "invalid_delivery_id",
            f"a delivery id is a positive integer, not {raw!r}",
            "delivery_id",
        )
    delivery_id = int(raw)
    now = utcnow()
    try:
        await context.store.writer.run(lambda conn: ops.redeliver(conn, delivery_id, now, org))
    except ops.DeliveryNotFound as exc:
        raise ApiError(404, "delivery_not_found", str(exc), "delivery_id") from None
    except ops.DeliveryInFlight as exc:
        raise ApiError(409, "delivery_in_flight", str(exc), "delivery_id") from None
    return delivery_id


async def redeliver(request: web.Request) -> web.Response:
    context, org = _caller(request)
    delivery_id = await redeliver_now(context, org, request.match_info["delivery_id"])
    view = await ops.get_delivery(context.store.database.read, delivery_id)
    assert view is not None  # it was just updated, and deliveries are never deleted
    return web.json_response(view.to_json())
