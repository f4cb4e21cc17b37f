"""Multiple devices offline: when the devices of one space fail together, one ticket for the space.

The space is a subject of its own (type `space`), tracked by the same rules as a device: its
"observations" are this module's verdict on its members, so its ticket opens, reopens,
auto-resolves and answers people like any other. Its members are held by it (`ParentChanged`,
as by a parent) while a group is forming or its ticket is open: past their debounce they are
`unreachable` and open nothing of their own.

`assess` is pure: the members' tracker states and the time in, what the group should do out.
A group forms when at least `GroupRules.needed` members would open device_offline tickets
within the group window of each other: members past their debounce and held by the space (the
window running from their debounce's end), members whose own ticket opened within the window
(handed to the group: "covered by #N"), and, while it is gathering, members still failing whose
debounce ends within the window. A member does not wait for a group longer than the window:
then the space stops gathering and it opens its own ticket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tocsin.probes.observation import SubjectKey
from tocsin.tickets.model import Kind
from tocsin.tracker import SubjectHealth, SubjectState, Windows
from tocsin.tracker.rules import debounce_over

GROUP_COMMENT_EVERY = 60.0  # s: at most one "the group grew" comment a minute
GROWTH_FACTOR = 2  # a comment when the group grew past this times its size at the last one


@dataclass(frozen=True, slots=True)
class GroupRules:
    """[monitor]'s group keys: `threshold` devices, or `percent` of the space's devices (at
    least 2, when set; the smaller applies); `window` in seconds, None for each member's
    debounce."""

    threshold: int = 3
    percent: float | None = None
    window: float | None = None

    def needed(self, size: int) -> int:
        """How many members about to open tickets make a group, in a space of `size` devices."""
        needed = self.threshold
        if self.percent is not None:
            needed = min(needed, max(2, math.ceil(size * self.percent / 100)))
        return needed

    def window_for(self, windows: Windows) -> float:
        return self.window if self.window is not None else windows.debounce.total_seconds()


@dataclass(frozen=True, slots=True)
class Assessment:
    """What a space's members say about its group at one moment."""

    gathering: bool  # enough members about to open tickets: hold them all while it forms
    forms: bool  # enough past their debounce (or just ticketed): the group's ticket is due
    offline: tuple[SubjectKey, ...]  # members past their debounce, held by the group
    covers: tuple[SubjectKey, ...]  # members whose own ticket opened within the window
    healthy: bool  # no member held by the group is failing, unreachable or not yet seen
    earliest: float | None  # monotonic: when the first of the forming members began failing
    due: float | None = None  # monotonic: when time alone may change this verdict next


def assess(
    space: SubjectKey,
    members: Iterable[tuple[SubjectState, Windows]],
    now: float,
    rules: GroupRules,
    *,
    active: bool,
    hold: str | None = None,
) -> Assessment:
    """The verdict on `space`'s members (each with its windows) at monotonic `now`; `active`:
    the space's group is up (its ticket open, or it is failing or down); `hold`: the `held_by`
    of the members it holds (default: the space's id)."""
    hold = space.id if hold is None else hold
    confirmed = soon = size = 0
    offline: list[SubjectKey] = []
    covers: list[SubjectKey] = []
    healthy = True
    earliest: float | None = None
    due: float | None = None

    def at(moment: float) -> None:
        nonlocal due
        if moment > now and (due is None or moment < due):
            due = moment

    for state, windows in members:
        size += 1
        health = state.health
        held = state.held_by == hold
        if health is SubjectHealth.UP or health is SubjectHealth.RECOVERING:
            continue
        if state.held_by is not None and not held:
            continue  # a parent or a maintenance window holds it: not this group's
        window = rules.window_for(windows)
        debounce = windows.debounce.total_seconds()
        since = state.since.mono if state.since is not None else now
        started = state.first_failure.mono if state.first_failure is not None else since
        if (health is SubjectHealth.UNREACHABLE or debounce_over(state, now, windows)) and held:
            # Past its debounce (ticked or not yet): held, waiting for its group.
            offline.append(state.subject)
            healthy = False
            waited = since if health is SubjectHealth.UNREACHABLE else since + debounce
            if active or now - waited < window:
                confirmed += 1
                earliest = started if earliest is None else min(earliest, started)
                at(waited + window)
        elif health is SubjectHealth.DOWN and _coverable(state) and now - since < window:
            covers.append(state.subject)
            confirmed += 1
            earliest = started if earliest is None else min(earliest, started)
            at(since + window)
        elif health is SubjectHealth.FAILING:
            healthy = healthy and not held
            ends = since + debounce
            if ends - window <= now <= ends + window:
                soon += 1
            at(ends)  # past its debounce from then (if confirmed by then)
            at(ends + window)
        elif health is SubjectHealth.UNKNOWN and held:
            healthy = False  # not seen since a restart: its outage may go on
    needed = rules.needed(size)
    forms = not active and confirmed >= needed
    gathering = not active and confirmed + soon >= needed
    return Assessment(
        gathering=gathering,
        forms=forms,
        offline=tuple(offline),
        covers=tuple(covers),
        healthy=healthy,
        earliest=earliest,
        due=due,
    )


def _coverable(state: SubjectState) -> bool:
    """Its own ticket is the monitor's device_offline ticket of this outage, untouched by people."""
    ticket = state.ticket
    return (
        ticket is not None
        and ticket.open
        and ticket.seq is not None
        and ticket.kind == Kind.DEVICE_OFFLINE.value
        and not ticket.in_progress
        and not ticket.owned_by_person
    )


def grew(members: int, said: int, since_said: float) -> bool:
    """Is a comment on the group ticket due: grown past GROWTH_FACTOR times what it last said,
    and not within GROUP_COMMENT_EVERY seconds of the last one?"""
    return members > GROWTH_FACTOR * said and since_said >= GROUP_COMMENT_EVERY
