"""The tracker's values: a moment on both clocks, the windows, and what it remembers of a subject.

Windows are measured on the monotonic clock only (`Now.mono`); the wall clock (`Now.wall`) is
read for display and for persistence. All values are frozen: `step` returns a new state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from tocsin.probes.observation import Observation, SubjectKey

RECENT_RESULTS = 5
"""How many probe results a subject keeps for its ticket description."""

MAX_CHANGES = 64
"""A hard bound on remembered state changes, whatever the flap threshold."""


@dataclass(frozen=True, slots=True)
class Now:
    """A moment read from both clocks at once.

    `mono` is monotonic seconds (`time.monotonic()`), the only clock windows are measured on;
    `wall` is aware UTC (`datetime.now(UTC)`), for what people read and for persistence. `step`
    gets the current moment; the state keeps past ones (since, first failure, resolution).
    """

    mono: float
    wall: datetime

    def __post_init__(self) -> None:
        if self.wall.utcoffset() != timedelta(0):
            raise ValueError(f"wall must be an aware UTC datetime, got {self.wall!r}")

    def seconds_since(self, then: Now) -> float:
        return self.mono - then.mono

    def at_wall(self, wall: datetime) -> Now:
        """The earlier moment a wall-clock reading `wall` stands for, on this process's clocks.

        The time elapsed since `wall` is clamped at zero: a reading in the future (a wall clock
        that went backwards since) counts as now, never as a negative age.
        """
        elapsed = max(0.0, (self.wall - wall).total_seconds())
        return Now(self.mono - elapsed, wall)


@dataclass(frozen=True, slots=True)
class Windows:
    """The rules' windows and switches for one subject (the global ones, or its overrides).

    Durations are timedeltas, as the config parses them. A subject is flapping when it changed
    state more than `flap_threshold` times within `flap_window`; a state change is a flip of
    its observed health between healthy and unhealthy (up -> failing, failing -> up,
    down -> recovering, recovering -> down).
    """

    debounce: timedelta = timedelta(minutes=2)
    recovery: timedelta = timedelta(minutes=1)
    reopen_window: timedelta = timedelta(hours=24)
    flap_window: timedelta = timedelta(minutes=10)
    flap_threshold: int = 5
    auto_resolve: bool = True
    auto_resolve_in_progress: bool = True
    confirm_by_checks: bool = False
    """For probes that look (HTTP, SNMP, credential checks): the debounce must be spanned by
    failing checks, at least two, before a ticket opens; one failed look is not an outage.
    Time-based subjects (heartbeats, status topics) leave it off: their silence is the proof."""

    def __post_init__(self) -> None:
        for name in ("debounce", "recovery", "reopen_window", "flap_window"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative")
        if self.flap_threshold < 1:
            raise ValueError("flap_threshold must be at least 1")


class SubjectHealth(StrEnum):
    UNKNOWN = "unknown"  # not observed since start, or the probe could not tell
    UP = "up"
    FAILING = "failing"  # unhealthy, inside the debounce window
    UNREACHABLE = "unreachable"  # unhealthy past the debounce while a parent is down: no ticket
    DOWN = "down"  # unhealthy, its ticket is open
    RECOVERING = "recovering"  # healthy, inside the recovery window, its ticket still open


@dataclass(frozen=True, slots=True)
class Nature:
    """What kind of failure it is; a change of either word while down is worth a comment."""

    kind_hint: str | None
    error_class: str | None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    at: Now
    observation: Observation


@dataclass(frozen=True, slots=True)
class MonitorTicket:
    """The subject's current or last health-monitor ticket.

    `seq` is None between the tracker deciding to open it and the wiring reporting the seq
    the store gave it (`TicketOpened`).
    """

    seq: int | None
    kind: str
    open: bool = True
    in_progress: bool = False
    resolved_at: Now | None = None
    resolved_by_person: bool = False
    owned_by_person: bool = False  # a person reopened it: comment on recovery, never resolve
    unhealthy_at_resolution: bool = False  # resolved by a person while the subject failed
    recovery_noted: bool = False  # a RECOVERED_NOTE is on it since the subject last went down
    flap_noted: bool = False  # the FLAPPING note of the current flapping episode is on it


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Everything the tracker remembers about one subject."""

    subject: SubjectKey
    health: SubjectHealth = SubjectHealth.UNKNOWN
    since: Now | None = None  # when `health` began
    first_failure: Now | None = None  # start of the current outage
    first_success: Now | None = None  # start of the current healthy streak
    failures: int = 0  # unhealthy observations since `since`, while failing (for confirmation)
    last_failure: Now | None = None  # the latest of them
    nature: Nature | None = None  # of the last unhealthy observation
    recent: tuple[ProbeResult, ...] = ()  # oldest first, at most RECENT_RESULTS
    ticket: MonitorTicket | None = None
    flapping: bool = False
    changes: tuple[float, ...] = ()  # monotonic times of recent state changes, oldest first
    held_by: str | None = None  # a parent (depends_on) that is down: opens no ticket meanwhile

    @property
    def ticket_open(self) -> bool:
        return self.ticket is not None and self.ticket.open

    @property
    def ticket_seq(self) -> int | None:
        return self.ticket.seq if self.ticket is not None else None

    @property
    def last_observation(self) -> Observation | None:
        return self.recent[-1].observation if self.recent else None


def initial(subject: SubjectKey) -> SubjectState:
    """A subject the tracker has never seen: unknown, no ticket."""
    return SubjectState(subject)


def adopt_open_ticket(
    state: SubjectState, seq: int, kind: str, *, in_progress: bool = False
) -> SubjectState:
    """The store holds open health-monitor ticket `seq` for this subject: make it the current one.

    For start-up, when the saved tracker state is missing or does not know the ticket the
    store has (the store is the truth about tickets). Health is left as it is (unknown at start),
    so nothing is opened twice and nothing is resolved before a probe sees the subject healthy.
    """
    return replace(state, ticket=MonitorTicket(seq=seq, kind=kind, in_progress=in_progress))


_Slotted = TypeVar("_Slotted", SubjectState, MonitorTicket)


def evolve(obj: _Slotted, /, **changes: Any) -> _Slotted:
    """`dataclasses.replace` for the states above (frozen, slotted, nothing to check after
    init), without its walk over `fields()` and call of the generated `__init__`: the rules
    make a few per observation, and replace() was a quarter of handling one."""
    cls = type(obj)
    new = object.__new__(cls)
    for name in cls.__slots__:
        value = changes.pop(name) if name in changes else getattr(obj, name)
        object.__setattr__(new, name, value)
    if changes:
        raise TypeError(f"{cls.__name__} has no field {next(iter(changes))!r}")
    return new
