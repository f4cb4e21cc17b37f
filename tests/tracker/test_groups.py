"""Multiple devices offline in the pure rules: a group that did not form lets its devices go
on where they were (`ParentChanged(None, restart=False)`); a group ticket covering a device's
own ticket resolves it with a comment (`Covered`); and `assess`, the verdict on a space's
devices, as a table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.tracker.helpers import MIN, Sim, bad, ok, reasons
from tocsin.monitor.groups import Assessment, GroupRules, assess, grew
from tocsin.probes.observation import SubjectKey
from tocsin.tracker import (
    Covered,
    ParentChanged,
    Reason,
    ResolveTicket,
    SubjectHealth,
    TicketStartedByPerson,
    Windows,
    ticket_decisions,
)

H = SubjectHealth
WINDOWS = Windows(debounce=timedelta(minutes=2), recovery=timedelta(minutes=1))
SPACE = SubjectKey("acme", "space", "floor-2")


def test_released_by_a_group_that_did_not_form_it_opens_at_once() -> None:
    sim = Sim(WINDOWS)
    sim.see(ok())
    sim.send(ParentChanged(SPACE.id))
    sim.see(bad())
    sim.wait(2 * MIN + 5).tick()
    assert sim.state.health is H.UNREACHABLE
    assert reasons(sim.send(ParentChanged(None, restart=False))) == [Reason.OPEN]
    assert sim.state.health is H.DOWN


def test_released_inside_its_debounce_it_goes_on_counting() -> None:
    sim = Sim(WINDOWS)
    sim.see(ok())
    sim.send(ParentChanged(SPACE.id))
    sim.see(bad())
    sim.wait(MIN)
    assert reasons(sim.send(ParentChanged(None, restart=False))) == []
    assert sim.state.health is H.FAILING
    sim.wait(MIN)
    assert reasons(sim.tick()) == [Reason.OPEN]  # two minutes after it began, not three


def down_with_ticket() -> Sim:
    """Down on its own ticket #7."""
    sim = Sim(WINDOWS, next_seq=7)
    sim.see(ok())
    sim.see(bad())
    sim.wait(2 * MIN).tick()
    assert (sim.state.health, sim.state.ticket_seq) == (H.DOWN, 7)
    return sim


def test_covered_its_own_ticket_is_resolved_saying_by_which() -> None:
    sim = down_with_ticket()
    sim.send(ParentChanged(SPACE.id))
    decisions = ticket_decisions(sim.send(Covered(12)))
    assert len(decisions) == 1
    resolve = decisions[0]
    assert isinstance(resolve, ResolveTicket)
    assert (resolve.seq, resolve.reason) == (7, Reason.COVERED)
    assert "Covered by #12" in resolve.comment
    assert sim.state.health is H.UNREACHABLE
    assert not sim.state.ticket_open
    assert sim.hold(bad(), 30 * MIN) == []  # the group holds it: nothing of its own
    # Back online: nothing to resolve; the group's ticket says so.
    assert ticket_decisions(sim.hold(ok(), 5 * MIN)) == []
    assert sim.state.health is H.UP


@pytest.mark.parametrize("how", ["not held", "in progress", "its own seq", "healthy"])
def test_a_ticket_is_covered_only_while_held_and_untouched(how: str) -> None:
    sim = down_with_ticket()
    if how != "not held":
        sim.send(ParentChanged(SPACE.id))
    if how == "in progress":
        sim.send(TicketStartedByPerson(7))
    if how == "healthy":
        sim.see(ok())
    assert ticket_decisions(sim.send(Covered(7 if how == "its own seq" else 12))) == []
    assert sim.state.ticket_open


# -- assess ---------------------------------------------------------------------------------


def failing(seconds: float) -> Sim:
    """A device held by the space, failing for `seconds`, checked every 10 s."""
    sim = Sim(WINDOWS)
    sim.see(ok())
    sim.send(ParentChanged(SPACE.id))
    sim.hold(bad(), seconds, every=10)
    return sim


def at(sims: list[Sim]) -> float:
    """The latest moment of these simulations (each has its own clock)."""
    return max(sim.now.mono for sim in sims)


def verdict(
    sims: list[Sim], rules: GroupRules | None = None, *, active: bool = False
) -> Assessment:
    # One clock for all: each Sim starts at the same moment, so the latest reading is "now".
    rules = rules or GroupRules()
    return assess(SPACE, [(s.state, WINDOWS) for s in sims], at(sims), rules, active=active)


def test_three_failing_together_gather_and_form_past_their_debounce() -> None:
    early = [failing(30), failing(30), failing(30)]
    v = verdict(early)
    assert (v.gathering, v.forms) == (True, False)
    past = [failing(125), failing(125), failing(125)]
    v = verdict(past)
    assert (v.gathering, v.forms) == (True, True)
    assert len(v.offline) == 3
    assert v.earliest is not None


def test_two_failing_do_not_gather_and_a_long_wait_stops_it() -> None:
    assert not verdict([failing(30), failing(30)]).gathering
    # Held past the debounce for longer than the window (2 min) without a third: let go.
    stale = [failing(260), failing(260)]
    v = verdict([*stale, Sim(WINDOWS)])
    assert (v.gathering, v.forms) == (False, False)


def test_a_percentage_lowers_the_threshold_for_small_spaces() -> None:
    rules = GroupRules(threshold=3, percent=50.0)
    assert rules.needed(4) == 2
    assert rules.needed(100) == 3
    assert GroupRules(threshold=3, percent=1.0).needed(10) == 2  # never a group of one
    assert verdict([failing(125), failing(125), Sim(WINDOWS), Sim(WINDOWS)], rules).forms


def test_an_active_group_is_healthy_only_when_no_held_device_is_down_or_unseen() -> None:
    assert not verdict([failing(125), Sim(WINDOWS)], active=True).healthy
    back = failing(125)
    back.see(ok())
    assert verdict([back, Sim(WINDOWS)], active=True).healthy
    unseen = Sim(WINDOWS)
    unseen.send(ParentChanged(SPACE.id))  # held, never observed (a restart)
    assert not verdict([back, unseen], active=True).healthy


def test_growth_is_said_past_twice_and_at_most_once_a_minute() -> None:
    assert not grew(6, 3, 600)
    assert grew(7, 3, 60)
    assert not grew(7, 3, 59)
