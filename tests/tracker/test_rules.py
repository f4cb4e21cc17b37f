"""TRACKER.md's table, row by row: a state, one event, the state it becomes and the decisions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from tests.tracker.helpers import DEVICE, HOUR, MIN, at, bad, ok, unknown
from tocsin.tracker import (
    Comment,
    Event,
    MonitorTicket,
    Nature,
    Note,
    Observed,
    OpenTicket,
    Reason,
    ReopenTicket,
    ResolveTicket,
    SubjectHealth,
    SubjectState,
    Tick,
    TicketDecision,
    TicketOpened,
    TicketReopenedByPerson,
    TicketResolvedByPerson,
    TicketStartedByPerson,
    Windows,
    step,
    ticket_decisions,
)

H = SubjectHealth
NATURE = Nature("device_offline", "http_5xx")
OPEN = MonitorTicket(seq=7, kind="device_offline")


def resolved(ago: float, *, by_person_while_failing: bool = False) -> MonitorTicket:
    """Ticket #7, resolved `ago` seconds before the row's state began."""
    return replace(
        OPEN,
        open=False,
        resolved_at=at(-ago),
        resolved_by_person=by_person_while_failing,
        unhealthy_at_resolution=by_person_while_failing,
    )


def state(
    health: SubjectHealth, ticket: MonitorTicket | None = None, **changes: object
) -> SubjectState:
    """A subject in `health` since at(0), failing since at(0) when unhealthy."""
    start = SubjectState(DEVICE, health=health, since=at(0), ticket=ticket)
    if health in (H.FAILING, H.DOWN, H.RECOVERING):
        start = replace(start, first_failure=at(0), nature=NATURE)
    return replace(start, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Row:
    start: SubjectState
    event: Event
    after: float  # seconds after at(0)
    health: SubjectHealth
    decisions: tuple[tuple[type[TicketDecision], Reason], ...] = ()
    notes: tuple[Reason, ...] | None = None  # checked when given
    windows: Windows = field(default_factory=Windows)


def row(*values: object, id: str, **options: object) -> object:
    return pytest.param(Row(*values, **options), id=id)  # type: ignore[arg-type]


DEBOUNCE = 2 * MIN
RECOVERY = 1 * MIN
NO_AUTO_RESOLVE = Windows(auto_resolve=False)
KEEP_IN_PROGRESS = Windows(auto_resolve_in_progress=False)
UP_AGAIN_AFTER_NOTE = replace(OPEN, recovery_noted=True)

ROWS = [
    # unknown
    row(state(H.UNKNOWN), Observed(ok()), 0, H.UP, id="unknown-healthy-becomes-up"),
    row(
        state(H.UNKNOWN, OPEN),
        Observed(ok()),
        0,
        H.RECOVERING,
        id="unknown-healthy-with-open-ticket-becomes-recovering",
    ),
    row(state(H.UNKNOWN), Observed(bad()), 0, H.FAILING, id="unknown-unhealthy-becomes-failing"),
    row(
        state(H.UNKNOWN, OPEN),
        Observed(bad()),
        0,
        H.DOWN,
        id="unknown-unhealthy-with-open-ticket-becomes-down-and-opens-nothing",
    ),
    row(
        state(H.UNKNOWN, resolved(HOUR)),
        Observed(bad()),
        0,
        H.FAILING,
        id="unknown-unhealthy-with-resolved-ticket-becomes-failing",
    ),
    row(state(H.UNKNOWN, OPEN), Tick(), 2 * HOUR, H.UNKNOWN, id="unknown-tick-decides-nothing"),
    row(
        state(H.UNKNOWN, UP_AGAIN_AFTER_NOTE),
        Observed(bad()),
        0,
        H.DOWN,
        ((Comment, Reason.FAILED_AGAIN),),
        id="unknown-unhealthy-on-a-ticket-that-said-recovered-comments-failed-again",
    ),
    # up
    row(
        state(H.UP),
        Observed(bad()),
        0,
        H.FAILING,
        (),
        (Reason.FAILING,),
        id="up-unhealthy-becomes-failing",
    ),
    row(state(H.UP), Observed(ok()), 10, H.UP, (), (), id="up-healthy-stays-up"),
    row(state(H.UP), Tick(), HOUR, H.UP, (), (), id="up-tick-stays-up"),
    # failing
    row(
        state(H.FAILING),
        Observed(ok()),
        60,
        H.UP,
        (),
        (Reason.DEBOUNCE_CANCELLED,),
        id="failing-healthy-inside-debounce-cancels-it",
    ),
    row(
        state(H.FAILING),
        Observed(bad()),
        DEBOUNCE - 1,
        H.FAILING,
        id="failing-unhealthy-inside-debounce-stays-failing",
    ),
    row(
        state(H.FAILING),
        Tick(),
        DEBOUNCE - 1,
        H.FAILING,
        id="failing-tick-inside-debounce-stays-failing",
    ),
    row(
        state(H.FAILING),
        Observed(bad()),
        DEBOUNCE,
        H.DOWN,
        ((OpenTicket, Reason.OPEN),),
        id="failing-unhealthy-debounce-elapsed-opens",
    ),
    row(
        state(H.FAILING),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        ((OpenTicket, Reason.OPEN),),
        id="failing-tick-debounce-elapsed-opens",
    ),
    row(
        state(H.FAILING, resolved(23 * HOUR)),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        ((ReopenTicket, Reason.REOPEN_IN_WINDOW),),
        id="failing-debounce-elapsed-reopens-a-ticket-resolved-inside-the-window",
    ),
    row(
        state(H.FAILING, resolved(24 * HOUR - DEBOUNCE - 1)),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        ((ReopenTicket, Reason.REOPEN_IN_WINDOW),),
        id="failing-reopens-one-second-before-the-window-ends",
    ),
    row(
        state(H.FAILING, resolved(24 * HOUR - DEBOUNCE)),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        ((OpenTicket, Reason.OPEN),),
        id="failing-opens-a-new-ticket-once-the-window-has-run-out",
    ),
    row(
        state(H.FAILING, resolved(0, by_person_while_failing=True)),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        ((ReopenTicket, Reason.REOPEN_STILL_UNHEALTHY),),
        id="failing-after-a-person-resolved-while-unhealthy-reopens-still-unhealthy",
    ),
    row(
        state(H.FAILING),
        Observed(unknown()),
        60,
        H.UNKNOWN,
        (),
        (Reason.DEBOUNCE_CANCELLED,),
        id="failing-unknown-cancels-the-debounce",
    ),
    row(
        state(H.FAILING, UP_AGAIN_AFTER_NOTE),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        ((Comment, Reason.FAILED_AGAIN),),
        id="failing-on-a-ticket-left-open-comments-instead-of-opening-another",
    ),
    row(
        state(H.FAILING, replace(OPEN, owned_by_person=True)),
        Tick(),
        DEBOUNCE,
        H.DOWN,
        (),
        id="failing-on-a-ticket-a-person-reopened-goes-down-quietly",
    ),
    row(
        state(H.FAILING, replace(OPEN, owned_by_person=True)),
        Observed(ok()),
        60,
        H.RECOVERING,
        (),
        (Reason.RECOVERING,),
        id="failing-healthy-on-an-open-ticket-starts-its-recovery",
    ),
    # down
    row(
        state(H.DOWN, OPEN),
        Observed(bad()),
        60,
        H.DOWN,
        (),
        (),
        id="down-same-failure-decides-nothing",
    ),
    row(
        state(H.DOWN, OPEN),
        Observed(bad("timeout after 5 s", latency_ms=5000.0, status=None)),
        60,
        H.DOWN,
        (),
        id="down-other-detail-text-status-and-latency-is-not-a-change",
    ),
    row(
        state(H.DOWN, OPEN),
        Observed(bad(kind="integration_unreachable")),
        60,
        H.DOWN,
        ((Comment, Reason.DETAIL_CHANGED),),
        id="down-other-kind-hint-comments",
    ),
    row(
        state(H.DOWN, OPEN),
        Observed(bad(error="timeout")),
        60,
        H.DOWN,
        ((Comment, Reason.DETAIL_CHANGED),),
        id="down-other-error-class-comments",
    ),
    row(
        state(H.DOWN, OPEN),
        Observed(ok()),
        60,
        H.RECOVERING,
        (),
        (Reason.RECOVERING,),
        id="down-healthy-becomes-recovering",
    ),
    row(state(H.DOWN, OPEN), Tick(), 10 * HOUR, H.DOWN, id="down-tick-stays-down"),
    row(
        state(H.DOWN, OPEN),
        Observed(unknown()),
        60,
        H.UNKNOWN,
        id="down-unknown-keeps-the-ticket-open-and-decides-nothing",
    ),
    # recovering
    row(
        state(H.RECOVERING, OPEN),
        Observed(bad()),
        30,
        H.DOWN,
        (),
        (Reason.RELAPSED,),
        id="recovering-unhealthy-becomes-down",
    ),
    row(
        state(H.RECOVERING, OPEN),
        Observed(ok()),
        RECOVERY - 1,
        H.RECOVERING,
        id="recovering-healthy-inside-recovery-stays-recovering",
    ),
    row(
        state(H.RECOVERING, OPEN),
        Observed(ok()),
        RECOVERY,
        H.UP,
        ((ResolveTicket, Reason.AUTO_RESOLVE),),
        id="recovering-healthy-recovery-elapsed-resolves",
    ),
    row(
        state(H.RECOVERING, OPEN),
        Tick(),
        RECOVERY,
        H.UP,
        ((ResolveTicket, Reason.AUTO_RESOLVE),),
        id="recovering-tick-recovery-elapsed-resolves",
    ),
    row(
        state(H.RECOVERING, OPEN),
        Tick(),
        RECOVERY,
        H.UP,
        ((Comment, Reason.RECOVERED_NOTE),),
        windows=NO_AUTO_RESOLVE,
        id="recovering-with-auto-resolve-off-only-comments",
    ),
    row(
        state(H.RECOVERING, replace(OPEN, in_progress=True)),
        Tick(),
        RECOVERY,
        H.UP,
        ((ResolveTicket, Reason.AUTO_RESOLVE),),
        id="recovering-in-progress-resolves-by-default",
    ),
    row(
        state(H.RECOVERING, replace(OPEN, in_progress=True)),
        Tick(),
        RECOVERY,
        H.UP,
        ((Comment, Reason.RECOVERED_NOTE),),
        windows=KEEP_IN_PROGRESS,
        id="recovering-in-progress-with-auto-resolve-in-progress-off-only-comments",
    ),
    row(
        state(H.RECOVERING, OPEN),
        Tick(),
        RECOVERY,
        H.UP,
        ((ResolveTicket, Reason.AUTO_RESOLVE),),
        windows=KEEP_IN_PROGRESS,
        id="recovering-open-not-in-progress-resolves-with-auto-resolve-in-progress-off",
    ),
    row(
        state(H.RECOVERING, replace(OPEN, owned_by_person=True)),
        Tick(),
        RECOVERY,
        H.UP,
        ((Comment, Reason.RECOVERED_NOTE),),
        id="recovering-on-a-ticket-a-person-reopened-only-comments",
    ),
    row(
        state(H.RECOVERING, UP_AGAIN_AFTER_NOTE),
        Tick(),
        RECOVERY,
        H.UP,
        (),
        windows=NO_AUTO_RESOLVE,
        id="recovering-again-after-a-recovered-note-does-not-repeat-it",
    ),
    row(
        state(H.RECOVERING, OPEN),
        Observed(unknown()),
        RECOVERY,
        H.UNKNOWN,
        id="recovering-unknown-resolves-nothing",
    ),
    # a person resolved
    row(
        state(H.DOWN, OPEN),
        TicketResolvedByPerson(7),
        HOUR,
        H.FAILING,
        id="down-person-resolved-becomes-failing",
    ),
    row(
        state(H.FAILING, UP_AGAIN_AFTER_NOTE),
        TicketResolvedByPerson(7),
        60,
        H.FAILING,
        id="failing-person-resolved-stays-failing",
    ),
    row(
        state(H.RECOVERING, OPEN),
        TicketResolvedByPerson(7),
        30,
        H.UP,
        id="recovering-person-resolved-becomes-up",
    ),
    row(state(H.UP, OPEN), TicketResolvedByPerson(7), 30, H.UP, id="up-person-resolved-stays-up"),
    row(
        state(H.UNKNOWN, OPEN),
        TicketResolvedByPerson(7),
        30,
        H.UNKNOWN,
        id="unknown-person-resolved-stays-unknown",
    ),
    row(
        state(H.DOWN, OPEN),
        TicketResolvedByPerson(3),
        30,
        H.DOWN,
        (),
        (Reason.IGNORED,),
        id="a-person-resolving-another-ticket-changes-nothing",
    ),
    # a person reopened
    *(
        row(
            state(health, resolved(HOUR)),
            TicketReopenedByPerson(7),
            30,
            health,
            (),
            (),
            id=f"{health}-person-reopened-keeps-health",
        )
        for health in (H.UNKNOWN, H.UP, H.FAILING)
    ),
    row(
        state(H.UP, resolved(HOUR)),
        TicketReopenedByPerson(6),
        30,
        H.UP,
        (),
        (Reason.IGNORED,),
        id="a-person-reopening-an-older-ticket-is-not-the-monitors-business",
    ),
    row(
        state(H.DOWN, OPEN),
        TicketStartedByPerson(7),
        30,
        H.DOWN,
        (),
        (),
        id="a-person-starting-work-changes-no-health",
    ),
]


@pytest.mark.parametrize("case", ROWS)
def test_the_table(case: Row) -> None:
    after, decisions = step(case.start, case.event, at(case.after), case.windows)
    assert after.health is case.health
    made = [(type(d), d.reason) for d in ticket_decisions(decisions)]
    assert made == list(case.decisions)
    if case.notes is not None:
        assert [d.reason for d in decisions if isinstance(d, Note)] == list(case.notes)
    if after.health in (H.DOWN, H.RECOVERING):
        assert after.ticket_open  # down and recovering always have their ticket open


def test_it_debounces_from_the_resolution_when_a_person_resolves_an_unhealthy_subject() -> None:
    after, _ = step(state(H.DOWN, OPEN), TicketResolvedByPerson(7), at(HOUR), Windows())
    assert after.since == at(HOUR)
    assert after.ticket == replace(
        OPEN,
        open=False,
        resolved_at=at(HOUR),
        resolved_by_person=True,
        unhealthy_at_resolution=True,
    )


def test_a_resolution_the_store_reports_late_counts_from_when_it_happened() -> None:
    event = TicketResolvedByPerson(7, at=at(HOUR).wall)
    after, _ = step(state(H.DOWN, OPEN), event, at(HOUR + 90), Windows())
    assert after.since == at(HOUR)  # 90 s of the 2 min debounce are already gone
    _, decisions = step(after, Tick(), at(HOUR + DEBOUNCE), Windows())
    assert [d.reason for d in ticket_decisions(decisions)] == [Reason.REOPEN_STILL_UNHEALTHY]


def test_a_person_reopening_makes_the_ticket_theirs() -> None:
    after, _ = step(state(H.UP, resolved(HOUR)), TicketReopenedByPerson(7), at(30), Windows())
    assert after.ticket == replace(OPEN, owned_by_person=True)


def test_starting_work_marks_the_ticket_in_progress() -> None:
    after, _ = step(state(H.DOWN, OPEN), TicketStartedByPerson(7), at(30), Windows())
    assert after.ticket is not None
    assert after.ticket.in_progress


def test_the_seq_the_store_gave_is_attached_to_the_pending_ticket() -> None:
    opened, decisions = step(state(H.FAILING), Tick(), at(DEBOUNCE), Windows())
    assert isinstance(decisions[0], OpenTicket)
    assert opened.ticket_open
    assert opened.ticket_seq is None
    attached, more = step(opened, TicketOpened(42), at(DEBOUNCE), Windows())
    assert attached.ticket_seq == 42
    assert more == []


def test_a_recovery_waits_for_the_seq_of_a_ticket_still_being_opened() -> None:
    pending = state(H.RECOVERING, replace(OPEN, seq=None))
    held, decisions = step(pending, Tick(), at(RECOVERY), Windows())
    assert held.health is H.RECOVERING
    assert decisions == []
    attached, decisions = step(held, TicketOpened(8), at(RECOVERY + 1), Windows())
    assert attached.health is H.UP
    [resolve] = ticket_decisions(decisions)
    assert isinstance(resolve, ResolveTicket)
    assert resolve.seq == 8


@pytest.mark.parametrize(
    ("hint", "subject_type", "kind"),
    [
        pytest.param("device_offline", "device", "device_offline", id="device-hint"),
        pytest.param(
            "integration_credentials_invalid",
            "integration",
            "integration_credentials_invalid",
            id="credentials-hint",
        ),
        pytest.param(None, "integration", "integration_unreachable", id="no-hint-integration"),
        pytest.param(None, "device", "device_offline", id="no-hint-device"),
        pytest.param("user_report", "device", "device_offline", id="not-a-monitor-kind"),
        pytest.param("door_ajar", "space", "multiple_devices_offline", id="free-form-hint"),
    ],
)
def test_the_kind_it_opens_with(hint: str | None, subject_type: str, kind: str) -> None:
    start = replace(
        state(H.FAILING),
        subject=DEVICE._replace(type=subject_type),
        nature=Nature(hint, "timeout"),
    )
    _, decisions = step(start, Tick(), at(DEBOUNCE), Windows())
    assert isinstance(decisions[0], OpenTicket)
    assert decisions[0].kind == kind
