"""The health board: every subject of the org grouped by space, with its health, since when,
its last probe result and its open ticket; counts per health at the top. Live: the monitor's
own view, not the last save (as the subjects API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tocsin.api.errors import ApiError
from tocsin.api.subjects import group_tickets, no_ticket_because, rows_of
from tocsin.monitor import states
from tocsin.monitor.storm import STORM_ID
from tocsin.web import render
from tocsin.web.access import visitor
from tocsin.web.site import OrgSite

# What the board shows, in this order: the tracker's health, but a subject held by a window,
# a parent, its group or the storm says so, and one flapping says that.
SHOWN = (
    ("down", "Down"),
    ("failing", "Failing"),
    ("flapping", "Flapping"),
    ("recovering", "Recovering"),
    ("covered", "Covered by a parent or group"),
    ("maintenance", "In maintenance"),
    ("unknown", "Unknown"),
    ("up", "Up"),
)
SHOWN_NAMES = dict(SHOWN)
ORDER = {key: n for n, (key, _) in enumerate(SHOWN)}
MAX_ROWS = 1000  # rows one page shows (a 100,000-subject site: filter); counts cover all


@dataclass(frozen=True)
class BoardRow:
    row: states.StateRow
    shown: str  # a SHOWN key
    because: str | None
    space: str | None

    @property
    def ref(self) -> str:
        return f"{self.row.key.type}:{self.row.key.id}"


def shown(row: states.StateRow, because: str | None) -> str:
    if row.maintenance_until is not None or (because or "").startswith("maintenance"):
        return "maintenance"
    if row.flapping:
        return "flapping"
    if row.health == "unreachable" or because is not None:
        return "covered"
    return row.health if row.health in SHOWN_NAMES else "unknown"


async def board_page(request: web.Request) -> web.Response:
    context, session = await visitor(request)
    site = context.site.org(session.org)
    rows = await context.subjects.get(session.org, lambda: rows_of(context.api, session.org))
    groups = group_tickets(rows)
    wanted = request.query.get("health", "")
    if wanted and wanted not in SHOWN_NAMES:
        allowed = ", ".join(SHOWN_NAMES)
        message = f"health: {wanted!r} is not one of {allowed}"
        raise ApiError(422, "invalid_value", message, "health")
    needle = request.query.get("q", "").casefold().strip()
    counts = dict.fromkeys(SHOWN_NAMES, 0)
    chosen: list[BoardRow] = []
    # A space's own row and the org's storm subject are not devices to count: their tickets
    # (Multiple devices offline) are shown on the space's heading and above the board.
    incidents = {
        row.key.id: row.ticket_seq for row in rows if row.key.type != "device" and row.ticket_seq
    }
    for row in rows:
        if row.key.type == "space" or (row.key.type == "other" and row.key.id == STORM_ID):
            continue
        because = no_ticket_because(row, groups)
        board_row = BoardRow(
            row, shown(row, because), because, site.space_of(row.key.type, row.key.id)
        )
        counts[board_row.shown] += 1
        if wanted and board_row.shown != wanted:
            continue
        if needle and needle not in row.name.casefold() and needle not in row.key.id.casefold():
            continue
        chosen.append(board_row)
    return render.page(
        request,
        "subjects.html",
        session,
        {
            "org": site,
            "counts": [(key, name, counts[key]) for key, name in SHOWN],
            "total": sum(counts.values()),
            "sections": _sections(site, chosen[:MAX_ROWS], incidents),
            "storm": incidents.get(STORM_ID),
            "cut": max(0, len(chosen) - MAX_ROWS),
            "wanted": wanted,
            "q": request.query.get("q", ""),
            "names": SHOWN_NAMES,
        },
    )


def _sections(
    site: OrgSite, rows: list[BoardRow], incidents: dict[str, int]
) -> list[dict[str, Any]]:
    """Rows by space (the config's order, then integrations and subjects in no space), the
    worst first within each."""
    by_space: dict[str | None, list[BoardRow]] = {}
    for row in rows:
        by_space.setdefault(row.space, []).append(row)
    order = [*site.spaces, None]
    sections = []
    for space in order:
        members = by_space.get(space)
        if not members:
            continue
        members.sort(key=lambda r: (ORDER[r.shown], r.row.name.casefold()))
        sections.append(
            {
                "id": space or "",
                "name": site.space_name(space) if space else "Not in a space",
                "rows": members,
                "group_seq": incidents.get(space) if space else None,
            }
        )
    return sections
