"""Webhook deliveries for write users: the org's endpoints and their health, recent
deliveries with status and attempts, and Redeliver (the API's operation)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from tocsin.api.errors import ApiError
from tocsin.api.query import enum_values, whole_number
from tocsin.api.webhooks import decode_cursor, encode_cursor, redeliver_now
from tocsin.delivery import ops
from tocsin.delivery.outbox import Status
from tocsin.web import render
from tocsin.web.access import WRITE, posted, visitor
from tocsin.web.context import WebContext
from tocsin.web.sessions import Session

PAGE_SIZE = 50


async def _page(
    request: web.Request,
    context: WebContext,
    session: Session,
    *,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> web.Response:
    site = context.site.org(session.org)
    read = context.api.store.database.read
    statuses = [s.value for s in enum_values(request.query, "status", Status)]
    endpoint = request.query.get("endpoint") or None
    if endpoint is not None and endpoint not in site.webhooks:
        message = f"endpoint: no webhook {endpoint!r} receives this org's tickets"
        raise ApiError(422, "invalid_value", message, "endpoint")
    raw_cursor = request.query.get("cursor")
    before = decode_cursor(raw_cursor) if raw_cursor else None
    rows, more = await ops.list_deliveries(
        read,
        org=session.org,
        endpoint=endpoint,
        statuses=statuses,
        limit=PAGE_SIZE,
        before=before,
    )
    endpoints = await ops.endpoint_health(read, site.webhooks, with_counts=False)
    next_href = None
    if more is not None:
        kept = {"endpoint": endpoint or "", "status": ",".join(statuses)}
        params = {
            **{k: v for k, v in kept.items() if v},
            "cursor": encode_cursor(more),
        }
        next_href = f"/orgs/{session.org}/webhooks?{urlencode(params)}"
    return render.page(
        request,
        "webhooks.html",
        session,
        {
            "org": site,
            "endpoints": endpoints,
            "deliveries": rows,
            "next_href": next_href,
            "error": error,
            "notice": notice,
            "statuses": [s.value for s in Status],
            "status_filter": ",".join(statuses),
            "endpoint": endpoint or "",
        },
        status=status,
    )


async def webhooks_page(request: web.Request) -> web.Response:
    context, session = await visitor(request, WRITE)
    again = request.query.get("redelivered", "")
    notice = f"Delivery {again} is queued to be sent again now." if whole_number(again) else None
    return await _page(request, context, session, notice=notice)


async def redeliver(request: web.Request) -> web.Response:
    context, session, _ = await posted(request, WRITE)
    try:
        delivery_id = await redeliver_now(
            context.api, session.org, request.match_info["delivery_id"]
        )
    except ApiError as exc:
        if exc.status not in (404, 409):
            raise
        # Gone, or being sent right now: the API's words, on the deliveries page.
        return await _page(request, context, session, error=exc.message, status=exc.status)
    raise web.HTTPSeeOther(f"/orgs/{session.org}/webhooks?redelivered={delivery_id}")
