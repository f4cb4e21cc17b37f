"""Saving the tracker beside the tickets and starting again: nothing opened twice, nothing
resolved falsely, no pending reopen lost, and wall-clock steps across the restart clamped."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from tests.tracker.helpers import DEVICE, HOUR, MIN, Sim, at, bad, ok, reasons, unknown
from tocsin.tracker import (
    MonitorTicket,
    Nature,
    ProbeResult,
    Reason,
    SubjectHealth,
    SubjectState,
    TicketResolvedByPerson,
    Windows,
    adopt_open_ticket,
    dump,
    load,
)
from tocsin.tracker.persist import VERSION

R = Reason
DAY = 24 * HOUR


def a_busy_state() -> SubjectState:
    return SubjectState(
        DEVICE,
        health=SubjectHealth.DOWN,
        since=at(-60),
        first_failure=at(-300),
        nature=Nature("device_offline", "timeout"),
        recent=(ProbeResult(at(-30), bad()), ProbeResult(at(-1), bad("timeout", status=None))),
        ticket=MonitorTicket(seq=4, kind="device_offline", in_progress=True, flap_noted=True),
        flapping=True,
        changes=(at(-200).mono, at(-100).mono),
    )


def test_a_dump_is_versioned_json_in_utc() -> None:
    data = dump(a_busy_state(), at(0))
    text = json.dumps(data)
    assert data["version"] == VERSION
    assert data["saved_at"] == "2026-03-01T12:00:00+00:00"
    assert data["first_failure"] == "2026-03-01T11:55:00+00:00"
    assert data["changes"] == ["2026-03-01T11:56:40+00:00", "2026-03-01T11:58:20+00:00"]
    assert json.loads(text) == data


def test_a_round_trip_keeps_all_but_health_which_is_unknown_until_the_first_probe() -> None:
    saved = a_busy_state()
    restored = load(json.loads(json.dumps(dump(saved, at(0)))), at(0))
    assert restored == replace(saved, health=SubjectHealth.UNKNOWN, since=at(0))


def test_restoring_measures_ages_on_the_new_processes_monotonic_clock() -> None:
    resolved = MonitorTicket(seq=4, kind="device_offline", open=False, resolved_at=at(-HOUR))
    data = dump(SubjectState(DEVICE, ticket=resolved), at(0))
    later = replace(at(10 * MIN), mono=42.0)  # a new process: another monotonic origin
    restored = load(data, later)
    assert restored.ticket is not None
    assert restored.ticket.resolved_at is not None
    assert restored.ticket.resolved_at.mono == 42.0 - HOUR - 10 * MIN
    assert restored.ticket.resolved_at.wall == at(-HOUR).wall


def test_a_wall_step_during_the_run_does_not_distort_the_saved_ages() -> None:
    sim = Sim()
    sim.hold(bad(), 2 * MIN)
    sim.hold(ok(), 2 * MIN)  # resolved after 1 min of it
    sim.wait(HOUR, wall_jump=-5 * HOUR)  # the wall clock is stepped back during the run
    sim.restart(stopped_for=60)
    ticket = sim.state.ticket
    assert ticket is not None
    assert ticket.resolved_at is not None
    assert sim.now.mono - ticket.resolved_at.mono == pytest.approx(60 + HOUR + 60)


def open_and_failing(sim: Sim) -> None:
    assert sim.hold(bad(), 5 * MIN) == [R.OPEN]


def open_and_recovering(sim: Sim) -> None:
    open_and_failing(sim)
    assert sim.hold(ok(), 30) == []  # 30 s of the 60 s recovery window


def resolved_an_hour_ago(sim: Sim) -> None:
    open_and_failing(sim)
    assert sim.hold(ok(), 2 * MIN) == [R.AUTO_RESOLVE]
    sim.wait(HOUR)


def resolved_by_a_person_while_failing(sim: Sim) -> None:
    open_and_failing(sim)
    sim.send(TicketResolvedByPerson(1))
    sim.wait(30)


def resolved_long_ago(hours: float) -> Any:
    def setup(sim: Sim) -> None:
        resolved_an_hour_ago(sim)
        sim.wait((hours - 1) * HOUR)

    return setup


# Each case: what happened before the restart, how the restart went, then what the probes see
# after it (observation, for how long, the ticket decisions expected). Every case also runs an
# hour of ticks before the first probe, which counts towards the reopen window.
RESTARTS = [
    pytest.param(
        open_and_failing,
        {},
        [(bad(), 10 * MIN, [])],
        id="open-ticket-still-failing-is-not-opened-again",
    ),
    pytest.param(
        open_and_recovering,
        {},
        [(unknown(), HOUR, []), (ok(), 30, []), (ok(), 30, [R.AUTO_RESOLVE])],
        id="open-ticket-resolves-only-after-a-full-recovery-window-seen-after-start",
    ),
    pytest.param(
        resolved_an_hour_ago,
        {"stopped_for": 10 * MIN},
        [(bad(), 2 * MIN, [R.REOPEN_IN_WINDOW])],
        id="pending-reopen-is-kept",
    ),
    pytest.param(
        resolved_by_a_person_while_failing,
        {},
        [(bad(), 2 * MIN, [R.REOPEN_STILL_UNHEALTHY])],
        id="pending-still-unhealthy-reopen-is-kept",
    ),
    pytest.param(
        resolved_long_ago(22.5),
        {"stopped_for": 2 * HOUR},
        [(bad(), 2 * MIN, [R.OPEN])],
        id="reopen-window-runs-on-while-stopped",
    ),
    pytest.param(
        resolved_long_ago(22.5),
        {"stopped_for": 2 * HOUR, "wall_jump": -2 * DAY},
        [(bad(), 2 * MIN, [R.REOPEN_IN_WINDOW])],
        id="wall-clock-back-across-restart-counts-as-no-time-stopped",
    ),
    pytest.param(
        resolved_an_hour_ago,
        {"stopped_for": 60, "wall_jump": 2 * DAY},
        [(unknown(), HOUR, []), (bad(), 2 * MIN, [R.OPEN])],
        id="wall-clock-forward-across-restart-opens-nothing-by-itself",
    ),
]


@pytest.mark.parametrize(("before", "restart", "after"), RESTARTS)
def test_a_restart(
    before: Any, restart: dict[str, float], after: list[tuple[Any, float, list[Reason]]]
) -> None:
    sim = Sim()
    before(sim)
    sim.restart(**restart)
    assert sim.state.health is SubjectHealth.UNKNOWN
    for _ in range(60):  # an hour of ticks before any probe: nothing
        sim.wait(60)
        assert reasons(sim.tick()) == []
    for observation, seconds, expected in after:
        assert sim.hold(observation, seconds) == expected
    assert sim.next_seq <= 3


def test_flapping_survives_a_restart_and_clears_after_a_quiet_window() -> None:
    sim = Sim(Windows(flap_threshold=2, flap_window=timedelta(minutes=10)))
    for _ in range(2):
        sim.hold(bad(), 30)
        sim.wait(30)
        sim.hold(ok(), 30)
        sim.wait(30)
    assert sim.state.flapping
    sim.restart(stopped_for=60)
    assert sim.state.flapping
    sim.wait(9 * MIN)
    sim.tick()
    assert not sim.state.flapping


def test_an_open_whose_seq_never_came_back_is_dropped_and_the_store_is_asked() -> None:
    pending = SubjectState(DEVICE, ticket=MonitorTicket(seq=None, kind="device_offline"))
    restored = load(dump(pending, at(0)), at(60))
    assert restored.ticket is None
    adopted = adopt_open_ticket(restored, 9, "device_offline")
    sim = Sim()
    sim.state = adopted
    assert sim.hold(bad(), 10 * MIN) == []
    assert sim.state.ticket_seq == 9
    assert sim.state.health is SubjectHealth.DOWN


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d.update(version=VERSION + 1), id="newer-version"),
        pytest.param(lambda d: d.pop("version"), id="no-version"),
        pytest.param(lambda d: d.pop("ticket"), id="missing-key"),
        pytest.param(lambda d: d.update(saved_at="2026-03-01T12:00:00"), id="naive-time"),
        pytest.param(lambda d: d.update(saved_at="yesterday"), id="not-a-time"),
        pytest.param(lambda d: d["recent"][0].update(health="sideways"), id="bad-health"),
    ],
)
def test_load_refuses_what_is_not_a_dump(damage: Any) -> None:
    data = dump(a_busy_state(), at(0))
    damage(data)
    with pytest.raises(ValueError, match="tracker state"):
        load(data, at(0))
