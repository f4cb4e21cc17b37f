"""GET /api/v1/orgs/{org}/subjects: every monitored subject's health, since when, the last
probe result and its open ticket (from the tracker's persisted state, flushed every few
seconds by the monitor)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from tocsin.api.auth import authenticate, require
from tocsin.api.context import API_CONTEXT, ApiContext
from tocsin.monitor import states
from tocsin.monitor.maintenance import HOLD_PREFIX
from tocsin.monitor.storm import STORM_HOLD, STORM_ID
from tocsin.tickets.model import rfc3339, ticket_url


class SubjectRefOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    id: str
    name: str


class SubjectHealthOut(BaseModel):
    """A subject's health as the monitor last saw it."""

    model_config = ConfigDict(extra="forbid")
    subject: SubjectRefOut
    health: Literal["unknown", "up", "failing", "down", "recovering", "unreachable"]
    """unreachable: past its debounce with no ticket of its own, held by a parent that is down
    or by its space's group ticket (no_ticket_because says which)."""
    flapping: bool
    since: str | None
    last_result: dict[str, Any] | None
    ticket_seq: int | None
    ticket_url: str | None
    no_ticket_because: str | None
    """Why an unhealthy subject has no ticket of its own: "maintenance until <time>" (a
    maintenance window covers it), "group #N" (its space's Multiple devices offline ticket
    covers it; "group <space> forming" until that opens), "storm #N" (more tickets fell due
    in a minute than [monitor] storm_limit: the org's storm ticket covers it), "parent <id>" (a
    parent it depends on is down); null otherwise."""
    maintenance_until: str | None
    """In maintenance: when the window that holds it ends (it is probed, opens no ticket)."""
    updated_at: str


class SubjectListOut(BaseModel):
    """Every subject of the org."""

    model_config = ConfigDict(extra="forbid")
    subjects: list[SubjectHealthOut]


def group_tickets(rows: list[states.StateRow]) -> dict[str, int | None]:
    """Each space of these rows (one org's) with its open group ticket, or None; and the
    storm's (under STORM_HOLD)."""
    found = {row.key.id: row.ticket_seq for row in rows if row.key.type == "space"}
    for row in rows:
        if row.key.type == "other" and row.key.id == STORM_ID:
            found[STORM_HOLD] = row.ticket_seq
    return found


def subject_json(
    row: states.StateRow, base_url: str, groups: dict[str, int | None] | None = None
) -> dict[str, Any]:
    """The subject as the API shows it; `groups`: `group_tickets` of its org's rows."""
    return {
        "subject": {"type": row.key.type, "id": row.key.id, "name": row.name},
        "health": row.health,
        "flapping": row.flapping,
        "since": rfc3339(row.since) if row.since else None,
        "last_result": row.last_result,
        "ticket_seq": row.ticket_seq,
        "ticket_url": ticket_url(base_url, row.key.org, row.ticket_seq) if row.ticket_seq else None,
        "no_ticket_because": no_ticket_because(row, groups or {}),
        "maintenance_until": rfc3339(row.maintenance_until) if row.maintenance_until else None,
        "updated_at": rfc3339(row.updated_at),
    }


def no_ticket_because(row: states.StateRow, groups: dict[str, int | None]) -> str | None:
    """Why an unhealthy subject has no ticket of its own, in a few words; `groups`: the org's
    spaces with their open group tickets (`group_tickets`)."""
    held_by = row.state.get("held_by")
    if not held_by or row.ticket_seq is not None or row.health not in ("failing", "unreachable"):
        return None
    if held_by.startswith(HOLD_PREFIX):
        if row.maintenance_until is not None:
            return f"maintenance until {rfc3339(row.maintenance_until)}"
        return f"maintenance window {held_by.removeprefix(HOLD_PREFIX)}"
    if held_by == STORM_HOLD:
        seq = groups.get(STORM_HOLD)
        return f"storm #{seq}" if seq is not None else "storm"
    if held_by in groups:  # a space: its group holds the device (a depends_on id names one)
        seq = groups[held_by]
        return f"group #{seq}" if seq is not None else f"group {held_by} forming"
    return f"parent {held_by}"


async def rows_of(context: ApiContext, org: str) -> list[states.StateRow]:
    """The org's subjects: the running monitor's live view, else the last saved state."""
    rows = context.subjects(org) if context.subjects is not None else None
    if rows is not None:
        return rows
    return await states.load(context.store.database.read, org)


async def list_subjects(request: web.Request) -> web.Response:
    context = request.app[API_CONTEXT]
    token = authenticate(request, context.tokens)
    org = request.match_info["org"]
    require(token, org, frozenset({"read"}))
    rows = await rows_of(context, org)
    groups = group_tickets(rows)
    subjects = [subject_json(r, context.base_url, groups) for r in rows]
    return web.json_response({"subjects": subjects})
