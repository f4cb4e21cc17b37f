"""A fake pair of clocks, observation makers, and `Sim`: the tracker driven as the wiring would."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.tracker import (
    Decision,
    Event,
    Now,
    Observed,
    OpenTicket,
    Reason,
    SubjectState,
    Tick,
    TicketDecision,
    TicketOpened,
    Windows,
    dump,
    initial,
    load,
    step,
    ticket_decisions,
)

BASE_MONO = 5_000.0
BASE_WALL = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEVICE = SubjectKey("acme", "device", "lobby-cam-1")
INTEGRATION = SubjectKey("acme", "integration", "bms")

MIN = 60.0
HOUR = 3600.0


def at(seconds: float) -> Now:
    """The moment `seconds` after the test's start, both clocks agreeing."""
    return Now(BASE_MONO + seconds, BASE_WALL + timedelta(seconds=seconds))


def ok(detail: str = "HTTP 200 in 40 ms", **data: Any) -> Observation:
    return Observation(Health.HEALTHY, detail, latency_ms=40.0, data={"status": 200, **data})


def bad(
    detail: str = "HTTP 503 in 120 ms",
    *,
    kind: str | None = "device_offline",
    error: str | None = "http_5xx",
    status: int | None = 503,
    latency_ms: float | None = 120.0,
) -> Observation:
    data: dict[str, Any] = {} if status is None else {"status": status}
    return Observation(Health.UNHEALTHY, detail, kind, error, latency_ms, data)


def unknown(detail: str = "broker site unreachable") -> Observation:
    return Observation(Health.UNKNOWN, detail)


def reasons(decisions: list[Decision] | list[TicketDecision]) -> list[Reason]:
    return [d.reason for d in decisions]


@dataclass
class Sim:
    """One subject's tracker, run as the wiring runs it: it reports each opened ticket's seq
    back at once, and keeps every decision in `log`."""

    windows: Windows = field(default_factory=Windows)
    subject: SubjectKey = DEVICE
    mono: float = BASE_MONO
    wall: datetime = BASE_WALL
    next_seq: int = 1
    state: SubjectState = field(init=False)
    log: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = initial(self.subject)

    @property
    def now(self) -> Now:
        return Now(self.mono, self.wall)

    def wait(self, seconds: float, *, wall_jump: float = 0.0) -> Sim:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds + wall_jump)
        return self

    def send(self, event: Event) -> list[TicketDecision]:
        """Apply one event (and the TicketOpened feedback of any open); the ticket decisions."""
        self.state, decisions = step(self.state, event, self.now, self.windows)
        for decision in list(decisions):
            if isinstance(decision, OpenTicket):
                seq, self.next_seq = self.next_seq, self.next_seq + 1
                self.state, more = step(self.state, TicketOpened(seq), self.now, self.windows)
                decisions += more
        self.log += decisions
        return ticket_decisions(decisions)

    def see(self, observation: Observation) -> list[TicketDecision]:
        return self.send(Observed(observation))

    def tick(self) -> list[TicketDecision]:
        return self.send(Tick())

    def hold(self, observation: Observation, seconds: float, every: float = 30.0) -> list[Reason]:
        """Observe the same result every `every` seconds for `seconds`, ticking between; the
        reasons of the ticket decisions made on the way."""
        made = reasons(self.see(observation))
        elapsed = 0.0
        while elapsed < seconds:
            self.wait(every / 2)
            made += reasons(self.tick())
            self.wait(every / 2)
            elapsed += every
            made += reasons(self.see(observation))
        return made

    def send_all(self, observation: Observation, seconds: float) -> list[Decision]:
        """`hold`, returning every decision made on the way (notes included)."""
        start = len(self.log)
        self.hold(observation, seconds)
        return self.log[start:]

    def restart(self, *, stopped_for: float = 30.0, wall_jump: float = 0.0) -> None:
        """Save, stop for `stopped_for` seconds, start a new process (a new monotonic origin)
        whose wall clock is also `wall_jump` seconds off, and load."""
        saved = json.loads(json.dumps(dump(self.state, self.now)))
        self.mono = 17.0  # another process, another monotonic origin
        self.wall += timedelta(seconds=stopped_for + wall_jump)
        self.state = load(saved, self.now)
