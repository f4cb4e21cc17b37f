"""What the tracker hears (events) and what it answers (decisions), each decision with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tocsin.probes.observation import Observation

# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """A probe result for the subject."""

    observation: Observation


@dataclass(frozen=True)
class Tick:
    """Time passed with no observation: windows may have expired."""


@dataclass(frozen=True)
class TicketOpened:
    """The wiring applied an `OpenTicket` decision and the store gave the ticket `seq`.

    Report it before the subject's next event: until then decisions that need the seq wait.
    """

    seq: int


@dataclass(frozen=True)
class TicketStartedByPerson:
    seq: int


@dataclass(frozen=True)
class TicketResolvedByPerson:
    """A person resolved the ticket; `at` is when (the store's resolved_at), default now.

    `at` matters when the wiring reconciles with the store at start-up: the reopen window runs
    from the resolution, not from when the tracker heard of it.
    """

    seq: int
    at: datetime | None = None


@dataclass(frozen=True)
class TicketReopenedByPerson:
    seq: int


@dataclass(frozen=True)
class ParentChanged:
    """Whether a parent the subject depends on is down: `parent` names the one that holds its
    ticket back (failing, down or unreachable itself), None once none is. The wiring says it
    when that changes; an unknown parent changes nothing.

    `restart`: released, whether a subject still unhealthy starts its debounce again (a
    parent's outage: its children coming back after it open nothing on the way) or goes on
    from where it was (a group that did not form: a subject past its debounce opens now)."""

    parent: str | None
    restart: bool = True


@dataclass(frozen=True)
class Covered:
    """Group ticket `seq` (a space's Multiple devices offline) now covers this subject's outage:
    its own open ticket, opened moments before the group formed, is resolved with a comment
    saying so. The wiring says it once the subject is held by that group."""

    seq: int


Event = (
    Observed
    | Tick
    | TicketOpened
    | TicketStartedByPerson
    | TicketResolvedByPerson
    | TicketReopenedByPerson
    | ParentChanged
    | Covered
)

# -- decisions -----------------------------------------------------------------------------------


class Reason(StrEnum):
    """Why the tracker decided something. The first group changes tickets; the rest are edges
    the wiring logs once (`Note`), such as "went unhealthy" and "recovered"."""

    OPEN = "open"
    REOPEN_IN_WINDOW = "reopen_in_window"
    REOPEN_STILL_UNHEALTHY = "reopen_still_unhealthy"
    AUTO_RESOLVE = "auto_resolve"
    RECOVERED_NOTE = "recovered_note"
    DETAIL_CHANGED = "detail_changed"
    FAILED_AGAIN = "failed_again"  # down again on a ticket that was left open after recovery
    FLAPPING = "flapping"
    COVERED = "covered"  # its own ticket resolved: a group ticket covers the outage
    GROUP_GREW = "group_grew"  # on a group ticket: twice as many members as it last said

    FAILING = "failing"  # went unhealthy: the debounce window started
    DEBOUNCE_CANCELLED = "debounce_cancelled"
    RECOVERING = "recovering"  # healthy again: the recovery window started
    RELAPSED = "relapsed"  # unhealthy again inside the recovery window
    BECAME_UNKNOWN = "became_unknown"
    FLAPPING_STOPPED = "flapping_stopped"
    IGNORED = "ignored"  # a ticket event about another ticket than the subject's monitor ticket
    SUPPRESSED_BY_PARENT = "suppressed_by_parent"  # past the debounce, but a parent is down
    PARENT_DOWN = "parent_down"  # a parent went down: this subject opens no ticket meanwhile
    PARENT_UP = "parent_up"  # no parent is down any more: the debounce runs from now


@dataclass(frozen=True)
class OpenTicket:
    """Open a new health-monitor ticket for the subject; then report `TicketOpened(seq)`."""

    kind: str
    description: str
    reason: Reason = Reason.OPEN


@dataclass(frozen=True)
class ReopenTicket:
    seq: int
    comment: str
    reason: Reason


@dataclass(frozen=True)
class ResolveTicket:
    seq: int
    comment: str
    reason: Reason = Reason.AUTO_RESOLVE


@dataclass(frozen=True)
class Comment:
    seq: int
    body: str
    reason: Reason


@dataclass(frozen=True)
class Note:
    """No ticket change: an edge for the log (and metrics), e.g. DEBOUNCE_CANCELLED."""

    reason: Reason
    text: str


Decision = OpenTicket | ReopenTicket | ResolveTicket | Comment | Note
TicketDecision = OpenTicket | ReopenTicket | ResolveTicket | Comment


def ticket_decisions(decisions: list[Decision]) -> list[TicketDecision]:
    """The decisions that change a ticket, without the log-only notes."""
    return [d for d in decisions if not isinstance(d, Note)]
