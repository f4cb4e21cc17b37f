"""Maintenance windows through the API (while one is active, the subjects it covers open no
tickets; they are still probed):

- GET    /api/v1/orgs/{org}/maintenance: the org's windows, the config's first, then the
  store's oldest first; a one-off window that has ended is not listed (scope read).
- POST   /api/v1/orgs/{org}/maintenance: add one (scope write): exactly one of `subject`,
  `space`, `labels`; `start` + `end` (RFC 3339 with an offset), `for` (from now) or `cron` +
  `duration`; `reason`. 201 with the window.
- DELETE /api/v1/orgs/{org}/maintenance/{id}: remove one the API or the CLI added (scope
  write); a config window (`config-N`) is 409: it is removed from the config file.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from tocsin.api.auth import authenticate, require
from tocsin.api.context import API_CONTEXT, ApiContext
from tocsin.api.errors import ApiError, read_json_object
from tocsin.api.query import whole_number
from tocsin.api.schemas import MaintenanceIn
from tocsin.monitor import maintenance_store
from tocsin.monitor.config import refuse_never_firing
from tocsin.monitor.maintenance import MAX_DURATION, Target, Window, WindowError, utc_text

log = structlog.get_logger("tocsin.api")

READ = frozenset({"read"})
WRITE = frozenset({"write"})
CONFIG_ID = re.compile(r"config-\d+")
IN_CONFIG = "defined in the config file; remove it there"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _caller(request: web.Request, needs: frozenset[str]) -> tuple[ApiContext, str, str]:
    """(the context, the org, the token's name), once the token may do this in the org."""
    context = request.app[API_CONTEXT]
    token = authenticate(request, context.tokens)
    org = request.match_info["org"]
    require(token, org, needs)
    return context, org, token.name


def window_json(window: Window, now: datetime) -> dict[str, Any]:
    """The window as the API (and `tocsin maintenance --json`) shows it: its fields, `active`,
    `until` (the end of the occurrence covering `now`) and `next_start` (when not active)."""
    occurrence = window.occurrence(now)
    body = window.to_json()
    body["active"] = occurrence is not None
    body["until"] = utc_text(occurrence[1]) if occurrence is not None else None
    # Outside an occurrence the next change is the next start (None: it never starts again).
    body["next_start"] = None if occurrence is not None else utc_text(window.next_change(now))
    return body


def listing_order(window: Window) -> tuple[int, int, str]:
    """Config windows first in config order, then the store's oldest first."""
    number = window.id.removeprefix("config-")
    kind = 0 if window.source == "config" else 1
    return (kind, int(number) if number.isdigit() else 0, window.id)


def current(windows: list[Window], now: datetime) -> list[Window]:
    """The windows to list: not a one-off that has ended, in listing order."""
    return sorted((w for w in windows if not w.over(now)), key=listing_order)


async def _windows(context: ApiContext, org: str) -> list[Window]:
    if context.maintenance is not None:
        return context.maintenance(org)
    return await maintenance_store.load(context.store.database.read, org)


async def list_maintenance(request: web.Request) -> web.Response:
    context, org, _ = _caller(request, READ)
    now = _utcnow()
    windows = current(await _windows(context, org), now)
    return web.json_response({"windows": [window_json(w, now) for w in windows]})


def build_window(body: MaintenanceIn, org: str, created_by: str, now: datetime) -> Window:
    """The window a request asks for (id "new": the store gives it its own); ApiError 422
    naming the field otherwise."""
    start, end = body.start, body.end
    if body.for_ is not None:
        if start is not None or end is not None:
            raise _invalid("for", "give for, or start and end, not both")
        if body.cron is not None or body.duration is not None:
            raise _invalid("for", "give for, or cron and duration, not both")
        if body.for_.total_seconds() <= 0 or body.for_ > MAX_DURATION:
            raise _invalid("for", "must be positive and at most 366 days")
        start, end = now, now + body.for_
    try:
        return refuse_never_firing(
            Window(
                id="new",
                org=org,
                target=Target(body.subject, body.space, body.labels),
                reason=body.reason,
                start=start,
                end=end,
                cron=body.cron,
                duration=body.duration,
                source="api",
                created_at=now,
                created_by=created_by,
            )
        )
    except WindowError as exc:
        raise _invalid(exc.field, exc.message) from None


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_value", f"{field}: {message}", field)


def _check_target(context: ApiContext, org: str, target: Target) -> None:
    """A subject or space must be one of the org's, when the monitor can say (else: taken)."""
    if context.subjects is None or (target.subject is None and target.space is None):
        return
    rows = context.subjects(org)
    if rows is None:  # no live view (a standby): taken as it is
        return
    if target.subject is not None and not any(r.key.id == target.subject for r in rows):
        raise _invalid("subject", f"no subject {target.subject!r} in the org")
    if target.space is not None and not any(
        r.key.type == "space" and r.key.id == target.space for r in rows
    ):
        raise _invalid("space", f"no space {target.space!r} in the org")


async def _changed(context: ApiContext) -> None:
    """Tell the monitor (if any) to read the store's windows now; it would within seconds."""
    if context.maintenance_changed is None:
        return
    try:
        await context.maintenance_changed()
    except Exception:  # the change is stored: the monitor's next look finds it
        log.exception("telling the monitor of a maintenance change failed")


async def add_maintenance(request: web.Request) -> web.Response:
    context, org, token_name = _caller(request, WRITE)
    body = MaintenanceIn.model_validate_json(await read_json_object(request))
    now = _utcnow()
    window = build_window(body, org, token_name, now)
    _check_target(context, org, window.target)
    stored = await context.store.writer.run(lambda conn: maintenance_store.add(conn, window))
    await _changed(context)
    response = web.json_response(window_json(stored, now), status=201)
    response.headers["Location"] = f"/api/v1/orgs/{org}/maintenance/{stored.id}"
    return response


async def remove_maintenance(request: web.Request) -> web.Response:
    context, org, _ = _caller(request, WRITE)
    window_id = request.match_info["id"]
    if CONFIG_ID.fullmatch(window_id):
        known = context.maintenance is None or any(
            w.id == window_id for w in context.maintenance(org)
        )
        if known:
            raise ApiError(409, "defined_in_config", f"{window_id}: {IN_CONFIG}", "id")
    removed = whole_number(window_id) and await context.store.writer.run(
        lambda conn: maintenance_store.remove(conn, org, window_id)
    )
    if not removed:
        raise ApiError(404, "not_found", f"no maintenance window {window_id!r}", "id")
    await _changed(context)
    return web.Response(status=204)
