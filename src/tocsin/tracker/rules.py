"""The tracker rules (TRACKER.md's table) as one pure function: `step(state, event, now, windows)`.

Synchronous, no I/O, no clock reads: the moment comes in as `now`, and every window is measured
on its monotonic reading. The wiring applies the ticket decisions to the store (and logs the
notes); after applying an `OpenTicket` it reports the seq back with `TicketOpened(seq)`.

Invariants the tests hold the rules to: at most one open monitor ticket per subject; `down` and
`recovering` always have an open ticket; no ticket decision comes from an unknown observation;
no resolve or reopen while flapping.
"""

from __future__ import annotations

from tocsin.probes.observation import Health, Observation
from tocsin.tickets.model import Kind
from tocsin.tracker import text
from tocsin.tracker.events import (
    Comment,
    Covered,
    Decision,
    Event,
    Note,
    Observed,
    OpenTicket,
    ParentChanged,
    Reason,
    ReopenTicket,
    ResolveTicket,
    Tick,
    TicketOpened,
    TicketReopenedByPerson,
    TicketResolvedByPerson,
    TicketStartedByPerson,
)
from tocsin.tracker.state import (
    MAX_CHANGES,
    RECENT_RESULTS,
    MonitorTicket,
    Nature,
    Now,
    ProbeResult,
    SubjectHealth,
    SubjectState,
    Windows,
    evolve,
)

UNKNOWN = SubjectHealth.UNKNOWN
UP = SubjectHealth.UP
FAILING = SubjectHealth.FAILING
DOWN = SubjectHealth.DOWN
RECOVERING = SubjectHealth.RECOVERING
UNREACHABLE = SubjectHealth.UNREACHABLE

# The kinds a health-monitor ticket may have; a probe's other hints fall back by subject type.
MONITOR_KINDS = frozenset(
    {
        Kind.DEVICE_OFFLINE,
        Kind.INTEGRATION_CREDENTIALS_INVALID,
        Kind.INTEGRATION_CREDENTIALS_EXPIRING,
        Kind.INTEGRATION_UNREACHABLE,
        Kind.MULTIPLE_DEVICES_OFFLINE,
    }
)
DEFAULT_KIND = {"integration": Kind.INTEGRATION_UNREACHABLE, "space": Kind.MULTIPLE_DEVICES_OFFLINE}


def step(
    state: SubjectState, event: Event, now: Now, windows: Windows
) -> tuple[SubjectState, list[Decision]]:
    """Apply one event at `now`; return the new state and what to do, in order."""
    out: list[Decision] = []
    match event:
        case Observed(observation=observation):
            state = _observe(state, observation, now, windows, out)
        case Tick():
            pass
        case TicketOpened(seq=seq):
            state = _opened(state, seq, windows, out)
        case TicketStartedByPerson(seq=seq):
            if _is_current(state, seq, out, want_open=True):
                state = evolve(state, ticket=evolve(_ticket(state), in_progress=True))
        case TicketResolvedByPerson(seq=seq, at=at):
            if _is_current(state, seq, out, want_open=True):
                state = _resolved_by_person(state, now if at is None else now.at_wall(at))
        case TicketReopenedByPerson(seq=seq):
            if _is_current(state, seq, out, want_open=False):
                state = _reopened_by_person(state)
        case ParentChanged(parent=parent, restart=restart):
            state = _parent_changed(state, parent, now, out, restart=restart)
        case Covered(seq=seq):
            state = _covered(state, seq, now, out)
    return _advance(state, now, windows, out), out


# -- observations --------------------------------------------------------------------------------


def _observe(
    s: SubjectState, obs: Observation, now: Now, w: Windows, out: list[Decision]
) -> SubjectState:
    s = evolve(s, recent=(*s.recent, ProbeResult(now, obs))[-RECENT_RESULTS:])
    if obs.health is Health.UNKNOWN:
        return _unknown(s, now, out)
    if obs.health is Health.HEALTHY:
        return _healthy(s, now, w, out)
    return _unhealthy(s, obs, now, w, out)


def _unknown(s: SubjectState, now: Now, out: list[Decision]) -> SubjectState:
    """The probe cannot tell (e.g. the broker is down): not failing; an open ticket stays open."""
    if s.health is UNKNOWN:
        return s
    if s.health is FAILING:
        out.append(Note(Reason.DEBOUNCE_CANCELLED, "state unknown inside the debounce window"))
    else:
        out.append(Note(Reason.BECAME_UNKNOWN, f"state unknown (was {s.health})"))
    outage_goes_on = s.ticket_open and s.health is not FAILING
    return evolve(
        s,
        health=UNKNOWN,
        since=now,
        first_failure=s.first_failure if outage_goes_on else None,
        first_success=None,
    )


def _healthy(s: SubjectState, now: Now, w: Windows, out: list[Decision]) -> SubjectState:
    if s.ticket is not None and s.ticket.unhealthy_at_resolution:
        s = evolve(s, ticket=evolve(s.ticket, unhealthy_at_resolution=False))
    match s.health:
        case SubjectHealth.UNKNOWN if s.ticket_open:
            out.append(Note(Reason.RECOVERING, "healthy: the recovery window started"))
            return evolve(s, health=RECOVERING, since=now, first_success=now)
        case SubjectHealth.UNKNOWN:
            return evolve(s, health=UP, since=now, first_failure=None, first_success=now)
        case SubjectHealth.FAILING | SubjectHealth.UNREACHABLE if s.ticket_open:
            # Failing on a ticket left open (or reopened by a person): its recovery is news.
            out.append(Note(Reason.RECOVERING, "healthy: the recovery window started"))
            s = _changed(s, now, w, out)
            return evolve(s, health=RECOVERING, since=now, first_success=now)
        case SubjectHealth.FAILING:
            out.append(Note(Reason.DEBOUNCE_CANCELLED, "healthy inside the debounce window"))
            s = _changed(s, now, w, out)
            return evolve(s, health=UP, since=now, first_failure=None, first_success=now)
        case SubjectHealth.UNREACHABLE:
            out.append(Note(Reason.DEBOUNCE_CANCELLED, "healthy again while a parent is down"))
            s = _changed(s, now, w, out)
            return evolve(s, health=UP, since=now, first_failure=None, first_success=now)
        case SubjectHealth.DOWN:
            out.append(Note(Reason.RECOVERING, "healthy: the recovery window started"))
            s = _changed(s, now, w, out)
            return evolve(s, health=RECOVERING, since=now, first_success=now)
        case _:  # up, recovering: the streak goes on
            return s


def _unhealthy(
    s: SubjectState, obs: Observation, now: Now, w: Windows, out: list[Decision]
) -> SubjectState:
    nature = Nature(obs.kind_hint, obs.error_class)
    previous, s = s.nature, evolve(s, nature=nature)
    match s.health:
        case SubjectHealth.UNKNOWN if s.ticket_open:
            s = evolve(s, health=DOWN, since=now, first_failure=s.first_failure or now)
            s = evolve(s, first_success=None)
            ticket = _ticket(s)
            if ticket.recovery_noted:  # it said "recovered": say it is down again, once
                s = evolve(s, ticket=evolve(ticket, recovery_noted=False))
                if ticket.seq is not None:
                    body = text.failed_again_comment(now, s.recent[-1])
                    out.append(Comment(ticket.seq, body, Reason.FAILED_AGAIN))
                    return s
        case SubjectHealth.UNKNOWN | SubjectHealth.UP:
            out.append(Note(Reason.FAILING, f"unhealthy: {obs.detail}"))
            if s.health is UP:
                s = _changed(s, now, w, out)
            return evolve(
                s,
                health=FAILING,
                since=now,
                first_failure=now,
                first_success=None,
                failures=1,
                last_failure=now,
            )
        case SubjectHealth.FAILING | SubjectHealth.UNREACHABLE:
            return evolve(s, failures=s.failures + 1, last_failure=now)
        case SubjectHealth.RECOVERING:
            out.append(Note(Reason.RELAPSED, f"unhealthy again while recovering: {obs.detail}"))
            s = _changed(s, now, w, out)
            s = evolve(s, health=DOWN, since=now, first_success=None)
        case SubjectHealth.DOWN:
            pass
    # Down on an open ticket: say so when the failure changed nature, and only then.
    seq = s.ticket_seq
    if s.ticket_open and seq is not None and previous is not None and previous != nature:
        body = text.detail_changed_comment(previous, nature, _ticket(s).kind, s.recent[-1])
        out.append(Comment(seq, body, Reason.DETAIL_CHANGED))
    return s


def _changed(s: SubjectState, now: Now, w: Windows, out: list[Decision]) -> SubjectState:
    """Count a state change; past the threshold the subject is flapping (noted once)."""
    changes = _recent(s.changes, now, w)
    changes = (*changes, now.mono)[-min(MAX_CHANGES, w.flap_threshold + 1) :]
    s = evolve(s, changes=changes)
    if s.flapping or len(changes) <= w.flap_threshold:
        return s
    s = evolve(s, flapping=True)
    body = text.flapping_note(len(changes), w.flap_window)
    if s.ticket is not None and s.ticket.open and s.ticket.seq is not None:
        out.append(Comment(s.ticket.seq, body, Reason.FLAPPING))
        return evolve(s, ticket=evolve(s.ticket, flap_noted=True))
    out.append(Note(Reason.FLAPPING, body))
    return s


def _recent(changes: tuple[float, ...], now: Now, w: Windows) -> tuple[float, ...]:
    window = w.flap_window.total_seconds()
    return tuple(t for t in changes if now.mono - t < window)


# -- time passing --------------------------------------------------------------------------------


def next_tick(s: SubjectState, w: Windows) -> float | None:
    """The monotonic moment from which a Tick may change `s` (a window running out, a state
    change leaving the flap window); None when only an event can. Ticking earlier changes
    nothing, so the wiring ticks a subject then, not 5,000 subjects in debounce 5 times a
    second."""
    due: list[float] = []
    if s.since is not None:
        if s.health is FAILING:
            due.append(s.since.mono + w.debounce.total_seconds())
        elif s.health is RECOVERING:
            due.append(s.since.mono + w.recovery.total_seconds())
    if s.changes:
        due.append(s.changes[0] + w.flap_window.total_seconds())
    return min(due) if due else None


def _advance(s: SubjectState, now: Now, w: Windows, out: list[Decision]) -> SubjectState:
    """Apply what the passing of time decides: flapping clearing, debounce, recovery."""
    changes = _recent(s.changes, now, w)
    if changes != s.changes:
        s = evolve(s, changes=changes)
    if s.flapping and not s.changes:
        out.append(Note(Reason.FLAPPING_STOPPED, "no state change for a flap window"))
        ticket = evolve(s.ticket, flap_noted=False) if s.ticket is not None else None
        s = evolve(s, flapping=False, ticket=ticket)
    if s.since is None:
        return s
    elapsed = now.seconds_since(s.since)
    if s.health is FAILING and elapsed >= w.debounce.total_seconds() and _confirmed(s, w):
        if s.held_by is not None and not s.ticket_open:  # suppression stops openings only
            body = f"no ticket of its own: its parent {s.held_by} is down"
            out.append(Note(Reason.SUPPRESSED_BY_PARENT, body))
            return evolve(s, health=UNREACHABLE, since=now)
        return _debounce_elapsed(s, now, w, out)
    if s.health is RECOVERING and elapsed >= w.recovery.total_seconds():
        return _recovery_elapsed(s, now, w, out)
    return s


def debounce_over(s: SubjectState, now: float, w: Windows) -> bool:
    """Is a failing subject past its debounce, confirmed (what the next Tick acts on)?"""
    if s.health is not FAILING or s.since is None:
        return False
    return now - s.since.mono >= w.debounce.total_seconds() and _confirmed(s, w)


def _confirmed(s: SubjectState, w: Windows) -> bool:
    """Failing checks span the debounce, two at least (when the subject's probe looks)."""
    if not w.confirm_by_checks:
        return True
    if s.failures < 2 or s.last_failure is None or s.since is None:
        return False
    return s.last_failure.mono - s.since.mono >= w.debounce.total_seconds()


def _debounce_elapsed(s: SubjectState, now: Now, w: Windows, out: list[Decision]) -> SubjectState:
    ticket = s.ticket
    since = s.first_failure or now
    down = evolve(s, health=DOWN, since=now, first_failure=since)
    if ticket is not None and ticket.open:
        # One ticket per subject. If it said "recovered" (and was left open), say it failed again.
        if ticket.seq is not None and ticket.recovery_noted:
            body = text.failed_again_comment(since, text.last_failure(s.recent))
            out.append(Comment(ticket.seq, body, Reason.FAILED_AGAIN))
        return evolve(down, ticket=evolve(ticket, recovery_noted=False))
    kind = _kind(s)
    resolved = ticket.resolved_at if ticket is not None else None
    if (
        ticket is not None
        and ticket.seq is not None
        and resolved is not None
        and now.seconds_since(resolved) < w.reopen_window.total_seconds()
    ):
        if s.flapping:
            return s  # held: the flag clears after a quiet flap window, then this reopens
        reason = (
            Reason.REOPEN_STILL_UNHEALTHY
            if ticket.unhealthy_at_resolution
            else Reason.REOPEN_IN_WINDOW
        )
        body = text.reopen_comment(reason, resolved, since, s.recent, ticket.kind, kind)
        out.append(ReopenTicket(ticket.seq, body, reason))
        return evolve(down, ticket=MonitorTicket(seq=ticket.seq, kind=ticket.kind))
    description = text.open_description(s.subject, kind, since, s.recent, flapping=s.flapping)
    out.append(OpenTicket(kind, description, Reason.OPEN))
    return evolve(down, ticket=MonitorTicket(seq=None, kind=kind, flap_noted=s.flapping))


def _recovery_elapsed(s: SubjectState, now: Now, w: Windows, out: list[Decision]) -> SubjectState:
    ticket = _ticket(s)
    if s.flapping or ticket.seq is None:
        return s  # held: resolve after a stable recovery / once the store told the seq
    recovered_at = s.first_success or now
    up = evolve(s, health=UP, since=now, first_failure=None)
    left_open = _left_open(ticket, w)
    body = text.recovery_comment(
        s.first_failure, recovered_at, now, s.recent[-1] if s.recent else None, left_open=left_open
    )
    if left_open is None:
        out.append(ResolveTicket(ticket.seq, body, Reason.AUTO_RESOLVE))
        closed = evolve(ticket, open=False, in_progress=False, resolved_at=now)
        return evolve(up, ticket=evolve(closed, resolved_by_person=False, recovery_noted=False))
    if not ticket.recovery_noted:
        out.append(Comment(ticket.seq, body, Reason.RECOVERED_NOTE))
    return evolve(up, ticket=evolve(ticket, recovery_noted=True))


def _left_open(ticket: MonitorTicket, w: Windows) -> str | None:
    """Why the monitor must not resolve this ticket, or None when it may."""
    if ticket.owned_by_person:
        return "a person reopened this ticket, so a person resolves it"
    if not w.auto_resolve:
        return "auto-resolve is off for this subject"
    if ticket.in_progress and not w.auto_resolve_in_progress:
        return "the ticket is In Progress and auto-resolve of In Progress tickets is off"
    return None


# -- what people did to the ticket ---------------------------------------------------------------


def _opened(s: SubjectState, seq: int, w: Windows, out: list[Decision]) -> SubjectState:
    ticket = s.ticket
    if ticket is None or not ticket.open or ticket.seq is not None:
        out.append(Note(Reason.IGNORED, f"#{seq} opened, but no open was pending"))
        return s
    ticket = evolve(ticket, seq=seq)
    if s.flapping and not ticket.flap_noted:
        out.append(Comment(seq, text.flapping_note(len(s.changes), w.flap_window), Reason.FLAPPING))
        ticket = evolve(ticket, flap_noted=True)
    return evolve(s, ticket=ticket)


def _resolved_by_person(s: SubjectState, when: Now) -> SubjectState:
    unhealthy = s.health in (FAILING, DOWN, UNREACHABLE)
    ticket = evolve(
        _ticket(s),
        open=False,
        in_progress=False,
        resolved_at=when,
        resolved_by_person=True,
        owned_by_person=False,
        unhealthy_at_resolution=unhealthy,
        recovery_noted=False,
    )
    s = evolve(s, ticket=ticket)
    if unhealthy:  # the debounce runs from the resolution, which counts as one failed look
        return evolve(s, health=FAILING, since=when, failures=1, last_failure=when)
    if s.health is RECOVERING:
        return evolve(s, health=UP, since=when, first_failure=None)
    return s


def _parent_changed(
    s: SubjectState, parent: str | None, now: Now, out: list[Decision], *, restart: bool = True
) -> SubjectState:
    """A parent went down (`parent`), or none is down any more (None).

    While held, a subject past its debounce is `unreachable` and opens nothing; what it has
    open stays open and still resolves. Released, a subject still unhealthy is failing from
    now: its debounce (and its confirming checks) start again, so devices coming back after
    their switch do not open tickets on the way. Released with `restart` off (a group that did
    not form), it is failing as it was: past its debounce, it opens its ticket now.
    """
    if parent == s.held_by:
        return s
    if parent is not None:
        if s.held_by is None and s.health in (FAILING, UNREACHABLE):
            body = f"its parent {parent} is down: no ticket meanwhile"
            out.append(Note(Reason.PARENT_DOWN, body))
        return evolve(s, held_by=parent)
    s = evolve(s, held_by=None)
    if s.health in (FAILING, UNREACHABLE) and not s.ticket_open:
        if not restart:
            if s.health is UNREACHABLE:  # back to failing since its outage began
                return evolve(s, health=FAILING, since=s.first_failure or now)
            return s
        out.append(Note(Reason.PARENT_UP, "no parent is down: the debounce starts again"))
        return evolve(
            s, health=FAILING, since=now, first_failure=now, failures=0, last_failure=None
        )
    return s


def _covered(s: SubjectState, seq: int, now: Now, out: list[Decision]) -> SubjectState:
    """Group ticket `seq` covers this outage: resolve the subject's own open ticket, saying so.

    Only an outage's ticket the monitor still owns (down or failing again, nobody working on it
    or having reopened it) is handed over; the subject is unreachable from now, held by the
    group, and a later release starts its debounce as a person's resolution would.
    """
    ticket = s.ticket
    if (
        ticket is None
        or not ticket.open
        or ticket.seq is None
        or ticket.seq == seq
        or ticket.in_progress
        or ticket.owned_by_person
        or s.held_by is None
        or s.health not in (DOWN, FAILING)
    ):
        return s
    out.append(ResolveTicket(ticket.seq, text.covered_comment(seq), Reason.COVERED))
    closed = evolve(ticket, open=False, resolved_at=now, recovery_noted=False, flap_noted=False)
    return evolve(s, health=UNREACHABLE, since=now, ticket=closed)


def _reopened_by_person(s: SubjectState) -> SubjectState:
    ticket = evolve(
        _ticket(s),
        open=True,
        in_progress=False,
        resolved_at=None,
        resolved_by_person=False,
        owned_by_person=True,
        unhealthy_at_resolution=False,
        recovery_noted=False,
    )
    return evolve(s, ticket=ticket)


def _is_current(s: SubjectState, seq: int, out: list[Decision], *, want_open: bool) -> bool:
    """Is `seq` the subject's monitor ticket, in the state the event needs it in?"""
    ticket = s.ticket
    if ticket is not None and ticket.seq == seq and ticket.open is want_open:
        return True
    current = f"#{ticket.seq}" if ticket is not None and ticket.seq is not None else "none"
    out.append(Note(Reason.IGNORED, f"event about #{seq}; the subject's monitor ticket: {current}"))
    return False


# -- small helpers -------------------------------------------------------------------------------


def _ticket(s: SubjectState) -> MonitorTicket:
    if s.ticket is None:
        raise AssertionError(f"{s.subject} is {s.health} without a ticket")
    return s.ticket


def _kind(s: SubjectState) -> str:
    """The probe's kind hint when the monitor may open that kind, else the subject type's."""
    hint = s.nature.kind_hint if s.nature is not None else None
    if hint in MONITOR_KINDS:
        return str(hint)
    return DEFAULT_KIND.get(s.subject.type, Kind.DEVICE_OFFLINE).value
