"""A parent that is down holds its children's tickets back (`depends_on`): past its debounce a
held child is `unreachable` and opens nothing; released, its debounce starts again; what it
has open stays open and still resolves. With `holder`, the wiring's choice of the parent."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.tracker.helpers import MIN, Sim, bad, ok, reasons
from tocsin.monitor.parents import holder, resolve
from tocsin.probes.observation import SubjectKey
from tocsin.tracker import ParentChanged, Reason, SubjectHealth, Windows, ticket_decisions

H = SubjectHealth
WINDOWS = Windows(debounce=timedelta(minutes=2), recovery=timedelta(minutes=1))


def held_sim(windows: Windows = WINDOWS) -> Sim:
    sim = Sim(windows)
    sim.see(ok())
    sim.send(ParentChanged("sw-1"))
    return sim


def test_a_held_subject_past_its_debounce_is_unreachable_and_opens_nothing() -> None:
    sim = held_sim()
    assert reasons(sim.see(bad())) == []
    assert sim.state.health is H.FAILING
    sim.wait(3 * MIN)
    assert reasons(sim.tick()) == []
    assert sim.state.health is H.UNREACHABLE
    assert sim.state.ticket is None
    assert Reason.SUPPRESSED_BY_PARENT in reasons(sim.log)
    assert sim.hold(bad(), 30 * MIN) == []  # however long the parent stays down


def test_released_a_subject_still_down_opens_after_a_new_debounce() -> None:
    sim = held_sim()
    sim.see(bad())
    sim.wait(10 * MIN).tick()
    assert sim.state.health is H.UNREACHABLE
    assert reasons(sim.send(ParentChanged(None))) == []
    assert sim.state.health is H.FAILING  # the debounce runs from the parent's recovery
    sim.wait(MIN)
    assert reasons(sim.tick()) == []
    sim.wait(MIN + 1)
    assert reasons(sim.tick()) == [Reason.OPEN]
    assert sim.state.health is H.DOWN


def test_released_a_looking_probe_needs_new_confirming_checks() -> None:
    windows = Windows(debounce=timedelta(minutes=2), confirm_by_checks=True)
    sim = held_sim(windows)
    sim.hold(bad(), 5 * MIN)
    assert sim.state.health is H.UNREACHABLE
    sim.send(ParentChanged(None))
    sim.wait(3 * MIN)
    assert reasons(sim.tick()) == []  # no failing check since the release: nothing confirmed
    assert sim.hold(bad(), 2 * MIN) == [Reason.OPEN]


def test_a_held_subject_that_comes_back_is_up_and_never_opened_anything() -> None:
    sim = held_sim()
    sim.see(bad())
    sim.wait(5 * MIN).tick()
    assert reasons(sim.see(ok())) == []
    assert sim.state.health is H.UP
    sim.send(ParentChanged(None))
    assert sim.state.health is H.UP
    assert ticket_decisions(sim.log) == []


def test_a_ticket_open_before_the_parent_failed_stays_open_and_still_resolves() -> None:
    sim = Sim(WINDOWS)
    sim.see(ok())
    assert sim.hold(bad(), 3 * MIN) == [Reason.OPEN]
    sim.send(ParentChanged("sw-1"))
    assert sim.state.health is H.DOWN  # suppression stops openings, not what is open
    sim.see(ok())
    sim.wait(MIN + 1)
    assert reasons(sim.tick()) == [Reason.AUTO_RESOLVE]  # not delayed by the parent


def test_a_reopen_in_the_window_is_held_too() -> None:
    sim = Sim(WINDOWS)
    sim.see(ok())
    sim.hold(bad(), 3 * MIN)
    sim.see(ok())
    sim.wait(2 * MIN).tick()
    assert sim.state.ticket is not None
    assert not sim.state.ticket.open
    sim.send(ParentChanged("sw-1"))
    assert sim.hold(bad(), 10 * MIN) == []
    assert sim.state.health is H.UNREACHABLE
    sim.send(ParentChanged(None))
    assert sim.hold(bad(), 3 * MIN) == [Reason.REOPEN_IN_WINDOW]


def test_the_hold_survives_a_restart_until_the_parent_is_seen() -> None:
    sim = held_sim()
    sim.see(bad())
    sim.wait(5 * MIN).tick()
    sim.restart()
    assert sim.state.held_by == "sw-1"
    assert sim.hold(bad(), 10 * MIN) == []
    assert sim.state.health is H.UNREACHABLE


def test_another_parent_taking_over_changes_nothing_else() -> None:
    sim = held_sim()
    sim.see(bad())
    sim.wait(5 * MIN).tick()
    before = sim.state
    sim.send(ParentChanged("ups-2"))
    assert sim.state.held_by == "ups-2"
    assert sim.state.health is before.health is H.UNREACHABLE


@pytest.mark.parametrize(
    ("parents", "current", "expected"),
    [
        pytest.param([("sw", H.UP)], None, None, id="up-parent-holds-nothing"),
        pytest.param([("sw", H.FAILING)], None, "sw", id="failing-parent-holds"),
        pytest.param([("sw", H.DOWN)], None, "sw", id="down-parent-holds"),
        pytest.param([("sw", H.UNREACHABLE)], None, "sw", id="held-parent-passes-it-on"),
        pytest.param([("sw", H.RECOVERING)], "sw", None, id="recovering-parent-releases"),
        pytest.param([("sw", H.UNKNOWN)], "sw", "sw", id="unknown-holder-keeps-holding"),
        pytest.param([("sw", H.UNKNOWN)], None, None, id="unknown-parent-holds-nothing"),
        pytest.param([("sw", None)], "sw", None, id="untracked-parent-releases"),
        pytest.param([("a", H.DOWN), ("b", H.DOWN)], "b", "b", id="current-holder-first"),
        pytest.param([("a", H.DOWN), ("b", H.UP)], "b", "a", id="the-other-takes-over"),
        pytest.param([("a", H.UNKNOWN), ("b", H.DOWN)], "a", "a", id="unknown-current-stays"),
    ],
)
def test_which_parent_holds_a_subject(
    parents: list[tuple[str, SubjectHealth | None]], current: str | None, expected: str | None
) -> None:
    assert holder(parents, current) == expected


def test_depends_on_ids_resolve_to_the_orgs_device_first() -> None:
    known = [
        SubjectKey("acme", "integration", "ups"),
        SubjectKey("acme", "device", "ups"),  # the device of that id wins, whatever the order
        SubjectKey("acme", "integration", "bms"),
        SubjectKey("beta", "device", "sw-1"),
        SubjectKey("acme", "device", "cam"),
    ]
    cam = SubjectKey("acme", "device", "cam")
    assert resolve({cam: ["ups", "bms", "sw-1"]}, known) == {
        cam: [SubjectKey("acme", "device", "ups"), SubjectKey("acme", "integration", "bms")]
    }  # sw-1 is another org's: not this camera's parent
    assert resolve({cam: []}, known) == {}
