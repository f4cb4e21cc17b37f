"""The confirmation rule: for subjects whose probe looks (HTTP, SNMP, credential checks), a
ticket opens only after failing checks that span the debounce, two at least. Heartbeat and
status-topic subjects keep the time-based rule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.tracker.helpers import MIN, Sim, bad, ok, reasons
from tocsin.tracker import Reason, SubjectHealth, TicketResolvedByPerson, Windows

LOOKS = Windows(
    debounce=timedelta(seconds=10), recovery=timedelta(seconds=30), confirm_by_checks=True
)
TIMED = Windows(debounce=timedelta(seconds=10), recovery=timedelta(seconds=30))


def test_one_failed_check_at_an_interval_longer_than_the_debounce_opens_nothing() -> None:
    sim = Sim(LOOKS)
    sim.see(ok())
    assert sim.see(bad()) == []
    for _ in range(59):  # the next check is a minute away; windows tick every second
        sim.wait(1)
        assert sim.tick() == []
    assert sim.state.health is SubjectHealth.FAILING


def test_two_failing_checks_spanning_the_debounce_open_one_ticket() -> None:
    sim = Sim(LOOKS)
    sim.see(ok())
    sim.see(bad())
    sim.wait(10)
    assert reasons(sim.see(bad())) == [Reason.OPEN]
    sim.wait(1)
    assert sim.see(bad()) == []
    assert sim.state.health is SubjectHealth.DOWN


def test_checks_that_do_not_yet_span_the_debounce_wait_for_one_that_does() -> None:
    sim = Sim(LOOKS)
    sim.see(bad())
    for _ in range(3):  # the retry interval: a third of the debounce
        sim.wait(3)
        assert sim.see(bad()) == []
        assert sim.tick() == []
    sim.wait(1)  # 10 s after the first failure: the debounce is over, but no check says so
    assert sim.tick() == []
    assert reasons(sim.see(bad())) == [Reason.OPEN]


def test_a_healthy_check_inside_the_debounce_starts_the_count_again() -> None:
    sim = Sim(LOOKS)
    sim.see(bad())
    sim.wait(5)
    sim.see(ok())
    sim.wait(1)
    sim.see(bad())
    sim.wait(9)
    assert sim.see(bad()) == []  # 9 s since this outage began
    sim.wait(1)
    assert reasons(sim.see(bad())) == [Reason.OPEN]


def test_time_based_subjects_keep_the_tick_rule() -> None:
    sim = Sim(TIMED)
    sim.see(bad())
    sim.wait(10)
    assert reasons(sim.tick()) == [Reason.OPEN]


def test_a_reopen_inside_the_window_also_needs_confirming_checks() -> None:
    sim = Sim(LOOKS)
    sim.see(bad())
    sim.wait(10)
    sim.see(bad())
    sim.see(ok())
    sim.wait(30)
    assert reasons(sim.tick()) == [Reason.AUTO_RESOLVE]
    sim.wait(MIN)
    sim.see(bad())
    sim.wait(30)
    assert sim.tick() == []
    assert reasons(sim.see(bad())) == [Reason.REOPEN_IN_WINDOW]


def test_a_person_resolving_a_failing_subject_needs_a_failing_check_a_debounce_later() -> None:
    sim = Sim(LOOKS)
    sim.see(bad())
    sim.wait(10)
    sim.see(bad())
    sim.send(TicketResolvedByPerson(1))
    sim.wait(10)
    assert sim.tick() == []
    assert reasons(sim.see(bad())) == [Reason.REOPEN_STILL_UNHEALTHY]


@pytest.mark.parametrize("debounce", [0.0, 1.0, 10.0, 120.0])
def test_never_more_than_one_ticket_however_the_checks_fall(debounce: float) -> None:
    windows = Windows(debounce=timedelta(seconds=debounce), confirm_by_checks=True)
    sim = Sim(windows)
    opened = 0
    for step_seconds in (0.3, 1.7, 4.0, 13.0, 0.1, 60.0):
        sim.wait(step_seconds)
        opened += reasons(sim.see(bad())).count(Reason.OPEN)
        opened += reasons(sim.tick()).count(Reason.OPEN)
    sim.wait(debounce)
    opened += reasons(sim.see(bad())).count(Reason.OPEN)
    assert opened == 1
