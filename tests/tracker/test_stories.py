"""The tracker over time, driven as the wiring drives it: observations every 30 s, ticks between."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.tracker.helpers import HOUR, MIN, Sim, bad, ok, reasons, unknown
from tocsin.tracker import (
    Comment,
    Note,
    OpenTicket,
    Reason,
    ReopenTicket,
    ResolveTicket,
    SubjectHealth,
    TicketReopenedByPerson,
    TicketResolvedByPerson,
    TicketStartedByPerson,
    Windows,
)

R = Reason


def opened(sim: Sim) -> Sim:
    """`sim` with ticket #1 open for a failure that began 2 min ago."""
    assert sim.hold(bad(), 2 * MIN) == [R.OPEN]
    return sim


def test_it_opens_one_ticket_after_two_minutes_of_continuous_failure() -> None:
    sim = Sim()
    sim.see(ok())
    assert sim.hold(bad(), 2 * MIN - 30) == []
    assert sim.state.health is SubjectHealth.FAILING
    sim.wait(15)
    assert reasons(sim.tick()) == []
    sim.wait(15)
    assert reasons(sim.see(bad())) == [R.OPEN]
    assert sim.hold(bad(), 10 * MIN) == []  # down: nothing more to say
    assert sim.state.ticket_seq == 1


def test_one_healthy_observation_inside_the_debounce_window_cancels_it() -> None:
    sim = Sim()
    sim.hold(bad(), 90)
    sim.wait(30)
    assert sim.see(ok()) == []
    assert sim.state.health is SubjectHealth.UP
    sim.wait(30)
    assert sim.hold(bad(), 2 * MIN - 30) == []  # the debounce starts over
    sim.wait(30)
    assert reasons(sim.see(bad())) == [R.OPEN]


def test_it_resolves_after_a_minute_of_health_saying_what_recovered_and_when() -> None:
    sim = opened(Sim())
    sim.wait(30)
    assert sim.hold(ok(), 30) == []
    sim.wait(30)
    [resolve] = sim.see(ok())
    assert isinstance(resolve, ResolveTicket)
    assert resolve.seq == 1
    assert resolve.reason is R.AUTO_RESOLVE
    assert "**Recovered** at 2026-03-01 12:02:30 UTC" in resolve.comment
    assert "- **Outage:** 2026-03-01 12:00:00 UTC to 2026-03-01 12:02:30 UTC (2m30s)" in (
        resolve.comment
    )
    assert sim.state.health is SubjectHealth.UP
    assert not sim.state.ticket_open


@pytest.mark.parametrize(
    ("windows", "before_recovery", "left_open"),
    [
        pytest.param(Windows(auto_resolve=False), [], "auto-resolve is off", id="auto-resolve-off"),
        pytest.param(
            Windows(auto_resolve_in_progress=False),
            [TicketStartedByPerson(1)],
            "the ticket is In Progress",
            id="in-progress",
        ),
        pytest.param(
            Windows(),
            [TicketResolvedByPerson(1), TicketReopenedByPerson(1)],
            "a person reopened",
            id="person-reopened",
        ),
    ],
)
def test_it_only_comments_on_recovery_when_it_may_not_resolve(
    windows: Windows, before_recovery: list[object], left_open: str
) -> None:
    sim = opened(Sim(windows))
    for event in before_recovery:
        sim.send(event)  # type: ignore[arg-type]
    made = sim.hold(ok(), 5 * MIN)
    assert made == [R.RECOVERED_NOTE]
    note = next(d for d in sim.log if isinstance(d, Comment) and d.reason is R.RECOVERED_NOTE)
    assert f"Left open: {left_open}" in note.body
    assert sim.state.ticket_open
    assert sim.state.health is SubjectHealth.UP
    # It fails again: the same ticket hears of it; recovery is noted again, once.
    assert sim.hold(bad(), 3 * MIN) == [R.FAILED_AGAIN]
    assert sim.hold(ok(), 3 * MIN) == [R.RECOVERED_NOTE]
    assert sim.state.ticket_seq == 1
    # A person resolves it; the next failure inside the window reopens it.
    sim.send(TicketResolvedByPerson(1))
    sim.wait(HOUR)
    assert sim.hold(bad(), 3 * MIN) == [R.REOPEN_IN_WINDOW]


def test_a_failure_inside_the_reopen_window_reopens_the_same_ticket() -> None:
    sim = opened(Sim())
    assert sim.hold(ok(), 2 * MIN) == [R.AUTO_RESOLVE]
    sim.wait(23 * HOUR)
    [reopen] = [d for d in sim.send_all(bad(), 2 * MIN) if not isinstance(d, Note)]
    assert isinstance(reopen, ReopenTicket)
    assert (reopen.seq, reopen.reason) == (1, R.REOPEN_IN_WINDOW)
    assert "within the reopen window of the resolution at 2026-03-01 12:03:00 UTC" in (
        reopen.comment
    )
    assert sim.state.ticket_open


def test_after_the_reopen_window_a_failure_opens_a_new_ticket() -> None:
    sim = opened(Sim())
    assert sim.hold(ok(), 2 * MIN) == [R.AUTO_RESOLVE]
    sim.wait(24 * HOUR)
    assert sim.hold(bad(), 2 * MIN) == [R.OPEN]
    assert sim.state.ticket_seq == 2


def test_the_reopen_window_runs_from_a_persons_resolution_too() -> None:
    sim = opened(Sim())
    sim.hold(ok(), 30)
    sim.send(TicketResolvedByPerson(1))
    assert sim.hold(ok(), 10 * MIN) == []
    sim.wait(20 * HOUR)
    assert sim.hold(bad(), 2 * MIN) == [R.REOPEN_IN_WINDOW]


def test_a_ticket_a_person_resolves_while_the_subject_still_fails_is_reopened_after_debounce() -> (
    None
):
    sim = opened(Sim())
    sim.wait(10 * MIN)
    sim.send(TicketResolvedByPerson(1))
    assert sim.state.health is SubjectHealth.FAILING
    assert sim.hold(bad(), 2 * MIN - 30) == []
    sim.wait(30)
    [reopen] = sim.see(bad())
    assert isinstance(reopen, ReopenTicket)
    assert (reopen.seq, reopen.reason) == (1, R.REOPEN_STILL_UNHEALTHY)
    assert "stayed unhealthy since" in reopen.comment


def test_a_person_resolving_a_subject_that_then_recovers_is_not_reopened() -> None:
    sim = opened(Sim())
    sim.send(TicketResolvedByPerson(1))
    sim.wait(30)
    assert sim.hold(ok(), 30 * MIN) == []
    assert sim.hold(bad(), 3 * MIN) == [R.REOPEN_IN_WINDOW]  # a new failure, same window


def test_a_change_of_failure_is_a_comment_and_the_ticket_keeps_its_kind() -> None:
    sim = opened(Sim(subject=Sim().subject))
    assert sim.hold(bad(), 5 * MIN) == []
    [comment] = sim.see(
        bad("401 Unauthorized", kind="integration_credentials_invalid", error="auth")
    )
    assert isinstance(comment, Comment)
    assert comment.reason is R.DETAIL_CHANGED
    assert "kind `device_offline` -> `integration_credentials_invalid`" in comment.body
    assert "error `http_5xx` -> `auth`" in comment.body
    assert "The ticket keeps its kind, Device offline." in comment.body
    changed = bad("401 Unauthorized", kind="integration_credentials_invalid", error="auth")
    assert sim.hold(changed, 5 * MIN) == []
    assert sim.state.ticket is not None
    assert sim.state.ticket.kind == "device_offline"
    assert sum(isinstance(d, OpenTicket) for d in sim.log) == 1


def test_a_subject_whose_broker_is_unreachable_is_unknown_and_opens_nothing() -> None:
    sim = Sim()
    sim.hold(bad(), 90)
    assert sim.hold(unknown(), 2 * HOUR) == []
    assert sim.state.health is SubjectHealth.UNKNOWN
    assert [d.reason for d in sim.log if isinstance(d, Note)] == [
        R.FAILING,
        R.DEBOUNCE_CANCELLED,
    ]
    # Back, and failing: the debounce starts from the first unhealthy observation.
    assert sim.hold(bad(), 2 * MIN - 30) == []
    assert sim.hold(bad(), 30) == [R.OPEN]


def test_an_open_ticket_stays_open_while_the_subject_is_unknown() -> None:
    sim = opened(Sim())
    assert sim.hold(unknown(), 3 * HOUR) == []
    assert sim.state.ticket_open
    # Healthy again: resolved only after a full recovery window seen healthy.
    assert sim.hold(ok(), 30) == []
    assert sim.hold(ok(), 30) == [R.AUTO_RESOLVE]


FLAPPY = Windows(flap_threshold=3, flap_window=timedelta(minutes=10))


def bounce(sim: Sim, cycles: int) -> list[Reason]:
    """Down for 2.5 min (past debounce), up for 1.5 min (past recovery), `cycles` times."""
    made: list[Reason] = []
    for _ in range(cycles):
        made += sim.hold(bad(), 150)
        sim.wait(30)
        made += sim.hold(ok(), 90)
        sim.wait(30)
    return made


def test_a_flapping_subject_keeps_its_ticket_open_with_one_note_until_a_stable_recovery() -> None:
    sim = Sim(FLAPPY)
    sim.see(ok())
    made = bounce(sim, 8)
    # Without flapping every cycle would resolve and reopen; the fourth change flags it.
    assert made == [R.OPEN, R.AUTO_RESOLVE, R.REOPEN_IN_WINDOW, R.FLAPPING]
    assert sim.state.flapping
    assert sim.state.health is SubjectHealth.RECOVERING
    assert sim.state.ticket_open
    # Stable: nothing until the flap window is quiet, then the normal rules resolve it.
    assert sim.hold(ok(), 10 * MIN - 2 * MIN - 30) == []
    assert sim.hold(ok(), 60) == [R.AUTO_RESOLVE]
    assert not sim.state.flapping
    assert [d.reason for d in sim.log].count(R.FLAPPING_STOPPED) == 1
    # Then a plain failure is treated normally again.
    sim.wait(HOUR)
    assert sim.hold(bad(), 2 * MIN) == [R.REOPEN_IN_WINDOW]


def test_flapping_without_an_open_ticket_is_logged_and_holds_the_reopen_until_quiet() -> None:
    sim = Sim(FLAPPY)
    opened(sim)
    assert sim.hold(ok(), 2 * MIN) == [R.AUTO_RESOLVE]
    for _ in range(3):  # short bounces inside the debounce: no ticket decision
        assert sim.hold(bad(), 30) == []
        sim.wait(30)
        assert sim.hold(ok(), 30) == []
        sim.wait(30)
    assert sim.state.flapping
    assert [d.reason for d in sim.log if isinstance(d, Note)].count(R.FLAPPING) == 1
    # Failing for good: the reopen waits for a quiet flap window, then happens.
    assert sim.hold(bad(), 9 * MIN) == []
    assert sim.state.health is SubjectHealth.FAILING
    assert sim.hold(bad(), 60) == [R.REOPEN_IN_WINDOW]
    assert not sim.state.flapping


def test_a_ticket_opened_while_flapping_says_so_in_its_description() -> None:
    sim = Sim(FLAPPY)
    for _ in range(3):
        sim.hold(ok(), 30)
        sim.wait(30)
        sim.hold(bad(), 30)
        sim.wait(30)
    assert sim.state.flapping
    assert sim.hold(bad(), 2 * MIN) == [R.OPEN]
    [open_ticket] = [d for d in sim.log if isinstance(d, OpenTicket)]
    assert "The subject is flapping" in open_ticket.description
    assert sim.hold(ok(), 30) + sim.hold(bad(), 60) == []  # no second FLAPPING note


def test_a_wall_clock_jump_in_a_running_process_opens_and_resolves_nothing() -> None:
    def story(jumps: list[float]) -> list[Reason]:
        sim = Sim()
        made = sim.hold(bad(), 60)
        for jump in jumps:
            sim.wait(10, wall_jump=jump)
            made += reasons(sim.tick())
        made += sim.hold(bad(), 60)
        for jump in jumps:
            sim.wait(10, wall_jump=-jump)
            made += reasons(sim.tick())
        made += sim.hold(ok(), 60)
        return made

    steady = story([0.0, 0.0, 0.0])
    assert steady == [R.OPEN, R.AUTO_RESOLVE]
    assert story([6 * HOUR, -2 * 24 * HOUR, 30 * 24 * HOUR]) == steady


def test_notes_log_each_edge_once() -> None:
    sim = opened(Sim())
    sim.hold(bad(), 5 * MIN)
    sim.hold(ok(), 2 * MIN)
    notes = [d.reason for d in sim.log if isinstance(d, Note)]
    assert notes == [R.FAILING, R.RECOVERING]
