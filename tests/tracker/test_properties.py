"""Random observation, tick, person and restart sequences against a fake ticket store: the
product's promises hold whatever the order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tracker.helpers import BASE_MONO, BASE_WALL, DEVICE
from tocsin.probes.observation import Health, Observation
from tocsin.tracker import (
    Comment,
    Covered,
    Event,
    Note,
    Now,
    Observed,
    OpenTicket,
    ParentChanged,
    Reason,
    ReopenTicket,
    ResolveTicket,
    SubjectHealth,
    Tick,
    TicketOpened,
    TicketReopenedByPerson,
    TicketResolvedByPerson,
    TicketStartedByPerson,
    Windows,
    dump,
    initial,
    load,
    next_tick,
    step,
)

windows = st.builds(
    Windows,
    debounce=st.sampled_from([0, 30, 120]).map(lambda s: timedelta(seconds=s)),
    recovery=st.sampled_from([0, 60, 300]).map(lambda s: timedelta(seconds=s)),
    reopen_window=st.sampled_from([0, 600, 86_400]).map(lambda s: timedelta(seconds=s)),
    flap_window=st.sampled_from([60, 600]).map(lambda s: timedelta(seconds=s)),
    flap_threshold=st.sampled_from([1, 3, 5]),
    auto_resolve=st.booleans(),
    auto_resolve_in_progress=st.booleans(),
)
observation = st.one_of(
    st.just(Observation(Health.HEALTHY, "ok")),
    st.just(Observation(Health.UNKNOWN, "broker down")),
    st.builds(
        Observation,
        health=st.just(Health.UNHEALTHY),
        detail=st.sampled_from(["timeout", "HTTP 503", "offline | Last Will\nbye"]),
        kind_hint=st.sampled_from([None, "device_offline", "integration_unreachable", "x"]),
        error_class=st.sampled_from([None, "timeout", "http_5xx"]),
    ),
)
GROUP_SEQ = 10_000  # the group ticket that covers the subject's own (never one of its own seqs)

action = st.one_of(
    observation,
    st.tuples(st.just("run"), observation, st.integers(1, 12), st.sampled_from([10, 30, 60])),
    st.tuples(st.just("run"), observation, st.integers(1, 12), st.sampled_from([10, 30, 60])),
    st.tuples(st.just("wait"), st.sampled_from([1, 10, 30, 60, 120, 600, 3600, 86_400])),
    st.tuples(st.just("wall_jump"), st.sampled_from([-86_400, -3600, 3600, 86_400 * 30])),
    st.sampled_from(["tick", "resolve", "reopen", "start"]),
    st.tuples(st.just("restart"), st.sampled_from([1, 600, 90_000])),
    st.tuples(st.just("parent"), st.sampled_from([None, "sw-1", "sw-2"])),
    st.tuples(st.just("group"), st.sampled_from([None, "floor-2"])),  # released: goes on
    st.just("covered"),
)


@dataclass
class World:
    """The tracker, a fake store that refuses what the real one would, and a model of time."""

    windows: Windows
    t: float = 0.0  # true seconds since the start
    mono_origin: float = BASE_MONO
    wall_offset: float = 0.0  # how far the wall clock is off, by in-process steps
    state: Any = field(default_factory=lambda: initial(DEVICE))
    seq: int | None = None
    store_open: bool = False
    resolved_t: float | None = None
    next_seq: int = 1
    healthy_since: float | None = None  # true start of the current healthy streak
    unhealthy_since: float | None = None
    held: str | None = None  # the parent holding the subject's ticket back

    def now(self) -> Now:
        return Now(
            self.mono_origin + self.t,
            BASE_WALL + timedelta(seconds=self.t + self.wall_offset),
        )

    def send(self, event: Event) -> None:
        held = self.held
        before = self.state
        self.state, decisions = step(before, event, self.now(), self.windows)
        was_unknown = before.health is SubjectHealth.UNKNOWN
        seen = event.observation.health if isinstance(event, Observed) else None
        for decision in decisions:
            if isinstance(decision, Note):
                continue
            assert seen is not Health.UNKNOWN, "an unknown observation decides nothing"
            assert not (was_unknown and seen is None), "nothing is decided while unknown"
            self.apply(decision, flapping=self.state.flapping, held=held)
        assert self.state.held_by == held
        if self.state.health is SubjectHealth.UNREACHABLE:
            assert held is not None or self.state.ticket_open
        if self.state.health in (SubjectHealth.DOWN, SubjectHealth.RECOVERING):
            assert self.state.ticket_open
        assert self.state.ticket_open == self.store_open
        assert len(self.state.changes) <= self.windows.flap_threshold + 1

    def apply(self, decision: Any, *, flapping: bool, held: str | None) -> None:
        w = self.windows
        match decision:
            case OpenTicket():
                assert held is None, "nothing opens while a parent is down"
                assert not self.store_open, "never two open tickets for a subject"
                assert self.unhealthy_since is not None
                assert self.t - self.unhealthy_since >= w.debounce.total_seconds()
                self.seq, self.next_seq, self.store_open = self.next_seq, self.next_seq + 1, True
                self.send(TicketOpened(self.seq))
            case ReopenTicket(seq=seq):
                assert held is None, "nothing reopens while a parent is down"
                assert not flapping, "no reopen while flapping"
                assert not self.store_open, "reopen only a resolved ticket"
                assert seq == self.seq
                assert self.resolved_t is not None
                assert self.t - self.resolved_t < w.reopen_window.total_seconds()
                assert self.unhealthy_since is not None
                assert self.t - self.unhealthy_since >= w.debounce.total_seconds()
                self.store_open = True
            case ResolveTicket(seq=seq, reason=Reason.COVERED):
                assert held is not None, "only a group holding the subject covers its ticket"
                assert self.store_open
                assert seq == self.seq
                assert seq != GROUP_SEQ, "never covered by itself"
                self.store_open, self.resolved_t = False, self.t
            case ResolveTicket(seq=seq):
                assert not flapping, "no resolve while flapping"
                assert self.store_open, "resolve only an open ticket"
                assert seq == self.seq
                assert self.healthy_since is not None
                assert self.t - self.healthy_since >= w.recovery.total_seconds()
                self.store_open, self.resolved_t = False, self.t
            case Comment(seq=seq):
                assert self.store_open, "comment only on the open ticket"
                assert seq == self.seq
            case _:
                raise AssertionError(decision)

    def observe(self, obs: Observation) -> None:
        if obs.health is Health.HEALTHY:
            self.healthy_since = self.t if self.healthy_since is None else self.healthy_since
            self.unhealthy_since = None
        elif obs.health is Health.UNHEALTHY:
            self.unhealthy_since = self.t if self.unhealthy_since is None else self.unhealthy_since
            self.healthy_since = None
        else:
            self.healthy_since = self.unhealthy_since = None
        self.send(Observed(obs))

    def run(self, act: Any) -> None:
        match act:
            case Observation():
                self.observe(act)
            case ("run", obs, times, every):  # a probe reporting the same every few seconds
                for _ in range(times):
                    self.observe(obs)
                    self.t += every
                    self.send(Tick())
            case ("wait", seconds):
                self.t += seconds
                self.send(Tick())
            case ("wall_jump", seconds):
                self.wall_offset += seconds
            case "tick":
                self.send(Tick())
            case ("parent", parent):
                self.held = parent
                self.send(ParentChanged(parent))
            case ("group", group):
                self.held = group
                self.send(ParentChanged(group, restart=False))
            case "covered":
                self.send(Covered(GROUP_SEQ))
            case "resolve" if self.store_open and self.seq is not None:
                self.store_open, self.resolved_t = False, self.t
                self.send(TicketResolvedByPerson(self.seq))
            case "reopen" if not self.store_open and self.seq is not None:
                self.store_open, self.resolved_t = True, None
                self.send(TicketReopenedByPerson(self.seq))
            case "start" if self.store_open and self.seq is not None:
                self.send(TicketStartedByPerson(self.seq))
            case ("restart", stopped_for):
                saved = json.loads(json.dumps(dump(self.state, self.now())))
                self.t += stopped_for  # both clocks move on by it (steps: test_persist)
                self.mono_origin = -self.t + 17.0  # a new process's monotonic origin
                self.healthy_since = self.unhealthy_since = None
                self.state = load(saved, self.now())
                assert self.state.health is SubjectHealth.UNKNOWN
                assert self.state.held_by == self.held  # held until the parent is seen
                assert self.state.ticket_open == self.store_open
            case _:
                pass  # a person action that does not apply to the ticket as it is


@settings(max_examples=400, deadline=None)
@given(windows, st.lists(action, min_size=5, max_size=60))
def test_the_rules_keep_their_promises_in_any_order(w: Windows, actions: list[Any]) -> None:
    world = World(w)
    for act in actions:
        world.run(act)


def assert_tick_is_idle_until_due(world: World) -> None:
    """Before `next_tick` a Tick changes nothing: the wiring may skip it."""
    now = world.now()
    due = next_tick(world.state, world.windows)
    until = now.mono + 86_400 * 30 if due is None else due
    for at in {now.mono, (now.mono + until) / 2, until - 1e-3}:
        if not now.mono <= at < until:
            continue  # due already: a tick now may change it
        later = Now(at, now.wall + timedelta(seconds=at - now.mono))
        state, decisions = step(world.state, Tick(), later, world.windows)
        assert decisions == [], (due, at)
        assert state == world.state, (due, at)


@settings(max_examples=300, deadline=None)
@given(windows, st.lists(action, min_size=5, max_size=40))
def test_a_tick_before_next_tick_changes_nothing(w: Windows, actions: list[Any]) -> None:
    world = World(w)
    for act in actions:
        world.run(act)
        assert_tick_is_idle_until_due(world)
