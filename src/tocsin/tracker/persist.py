"""A subject's tracker state as JSON-ready data, in wall-clock UTC, and back.

Monotonic readings mean nothing to another process, so `dump` writes every moment as the UTC
time that is as far before `saved_at` as it was before `now` on the monotonic clock (a wall-clock
step during the run does not distort it), and `load` puts each moment as far before the new
`now` as its age at saving plus the time since `saved_at`, that gap clamped at zero: a wall
clock that went backwards while tocsin was stopped counts as no time passed, never as negative.

Restored, a subject is `unknown` until its first observation; its ticket (open, or resolved
with the reopen window still running), the failure's nature, the recent probe results and the
flapping counters are kept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.tracker.state import (
    MonitorTicket,
    Nature,
    Now,
    ProbeResult,
    SubjectHealth,
    SubjectState,
)

VERSION = 1


def dump(state: SubjectState, now: Now) -> dict[str, Any]:
    """The state as JSON-serialisable data (observation `data` must itself be JSON-ready)."""

    def wall_at(mono: float) -> str:
        age = max(0.0, now.mono - mono)
        return (now.wall - timedelta(seconds=age)).isoformat()

    def wall(moment: Now | None) -> str | None:
        return None if moment is None else wall_at(moment.mono)

    ticket = state.ticket
    return {
        "version": VERSION,
        "saved_at": now.wall.isoformat(),
        "subject": {"org": state.subject.org, "type": state.subject.type, "id": state.subject.id},
        "health": state.health.value,  # for people reading the file; restored as unknown
        "first_failure": wall(state.first_failure),
        "nature": None
        if state.nature is None
        else {"kind_hint": state.nature.kind_hint, "error_class": state.nature.error_class},
        "recent": [
            {
                "at": wall(result.at),
                "health": result.observation.health.value,
                "detail": result.observation.detail,
                "kind_hint": result.observation.kind_hint,
                "error_class": result.observation.error_class,
                "latency_ms": result.observation.latency_ms,
                "data": dict(result.observation.data),
            }
            for result in state.recent
        ],
        "ticket": None
        if ticket is None
        else {
            "seq": ticket.seq,
            "kind": ticket.kind,
            "open": ticket.open,
            "in_progress": ticket.in_progress,
            "resolved_at": wall(ticket.resolved_at),
            "resolved_by_person": ticket.resolved_by_person,
            "owned_by_person": ticket.owned_by_person,
            "unhealthy_at_resolution": ticket.unhealthy_at_resolution,
            "recovery_noted": ticket.recovery_noted,
            "flap_noted": ticket.flap_noted,
        },
        "flapping": state.flapping,
        "changes": [wall_at(t) for t in state.changes],
        "held_by": state.held_by,
    }


def load(data: dict[str, Any], now: Now) -> SubjectState:
    """The state `dump` saved, restored at `now`; raise ValueError if `data` is not such a dump.

    An open ticket whose seq was never reported (tocsin stopped between deciding to open and
    the store answering) is dropped: the wiring reconciles with the store at start-up
    (`adopt_open_ticket`), which is the truth about tickets.
    """
    if not isinstance(data, dict) or data.get("version") != VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ValueError(f"not a tracker state of version {VERSION} (version {version!r})")
    try:
        return _load(data, now)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"invalid tracker state: {exc!r}") from None


def _load(data: dict[str, Any], now: Now) -> SubjectState:
    saved_at = _utc(data["saved_at"])
    gap = max(0.0, (now.wall - saved_at).total_seconds())

    def at(text: str) -> Now:
        wall = _utc(text)
        age = max(0.0, (saved_at - wall).total_seconds())
        return Now(now.mono - gap - age, wall)

    def moment(text: str | None) -> Now | None:
        return None if text is None else at(text)

    key = data["subject"]
    subject = SubjectKey(str(key["org"]), str(key["type"]), str(key["id"]))
    nature = data["nature"]
    ticket_data = data["ticket"]
    ticket = None
    if ticket_data is not None and (ticket_data["seq"] is not None or not ticket_data["open"]):
        ticket = MonitorTicket(
            seq=None if ticket_data["seq"] is None else int(ticket_data["seq"]),
            kind=str(ticket_data["kind"]),
            open=bool(ticket_data["open"]),
            in_progress=bool(ticket_data["in_progress"]),
            resolved_at=moment(ticket_data["resolved_at"]),
            resolved_by_person=bool(ticket_data["resolved_by_person"]),
            owned_by_person=bool(ticket_data["owned_by_person"]),
            unhealthy_at_resolution=bool(ticket_data["unhealthy_at_resolution"]),
            recovery_noted=bool(ticket_data["recovery_noted"]),
            flap_noted=bool(ticket_data["flap_noted"]),
        )
    recent = tuple(
        ProbeResult(
            at(item["at"]),
            Observation(
                health=Health(item["health"]),
                detail=str(item["detail"]),
                kind_hint=item["kind_hint"],
                error_class=item["error_class"],
                latency_ms=item["latency_ms"],
                data=dict(item["data"]),
            ),
        )
        for item in data["recent"]
    )
    ticket_open = ticket is not None and ticket.open
    return SubjectState(
        subject=subject,
        health=SubjectHealth.UNKNOWN,
        since=now,
        first_failure=moment(data["first_failure"]) if ticket_open else None,
        nature=None if nature is None else Nature(nature["kind_hint"], nature["error_class"]),
        recent=recent,
        ticket=ticket,
        flapping=bool(data["flapping"]),
        changes=tuple(at(text).mono for text in data["changes"]),
        # Kept until the parent is seen again (added later: older saves have none).
        held_by=None if data.get("held_by") is None else str(data["held_by"]),
    )


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment.astimezone(UTC)
