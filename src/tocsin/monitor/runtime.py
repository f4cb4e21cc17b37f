"""The health monitor at run time: observations in, tracker steps, ticket changes out.

One loop owns every subject's tracker state, so a subject's events are handled in order and a
decision is applied to the store before the subject's next event. Probes only enqueue
observations; a tick a second lets windows expire, picks up people's actions on monitor
tickets (from the trigger outbox, so the CLI's changes count too) and saves changed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from tocsin.db import schema
from tocsin.monitor import states
from tocsin.probes.observation import Observation, SubjectKey
from tocsin.tickets.errors import IllegalTransition, TicketError
from tocsin.tickets.model import Actor, ActorType, Source, State, Subject, SubjectType
from tocsin.tickets.store import TicketStore
from tocsin.tickets.writes import OpenRequest
from tocsin.tracker import (
    Comment,
    Event,
    Note,
    Now,
    Observed,
    OpenTicket,
    Reason,
    ReopenTicket,
    ResolveTicket,
    SubjectState,
    Tick,
    TicketOpened,
    TicketReopenedByPerson,
    TicketResolvedByPerson,
    TicketStartedByPerson,
    Windows,
    adopt_open_ticket,
    dump,
    initial,
    load,
    step,
)
from tocsin.tracker.state import SubjectHealth

log = structlog.get_logger("tocsin.monitor")

SAVE_EVERY_SECONDS = 2.0
_PENDING = {SubjectHealth.FAILING, SubjectHealth.RECOVERING}
_LOUD = {Reason.OPEN, Reason.REOPEN_IN_WINDOW, Reason.REOPEN_STILL_UNHEALTHY, Reason.FAILED_AGAIN}


@dataclass
class Tracked:
    """A subject as the monitor holds it."""

    key: SubjectKey
    name: str
    windows: Windows
    state: SubjectState
    dirty: bool = True
    last_mono: float = float("-inf")  # the latest moment an event of this subject was handled


class HealthMonitor:
    def __init__(
        self,
        store: TicketStore,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        default_windows: Windows | None = None,
    ) -> None:
        self._store = store
        self._monotonic = monotonic
        self._wall = wall
        self.default_windows = default_windows or Windows()
        self._subjects: dict[SubjectKey, Tracked] = {}
        self._pending: set[SubjectKey] = set()  # subjects with a window running, or flapping
        self._queue: asyncio.Queue[tuple[SubjectKey, Observation, float | None]] = asyncio.Queue()
        self._trigger_cursor = 0
        self._last_save = 0.0

    # -- the subjects ------------------------------------------------------------------------

    def now(self) -> Now:
        return Now(self._monotonic(), self._wall())

    def subjects(self) -> dict[SubjectKey, Tracked]:
        return dict(self._subjects)

    def rows(self, org: str) -> list[states.StateRow]:
        """The org's subjects as the subjects API shows them: live, not the last save."""
        now = self.now()
        tracked = sorted(
            (t for t in self._subjects.values() if t.key.org == org),
            key=lambda t: (t.key.type, t.key.id),
        )
        return [_state_row(t, now) for t in tracked]

    def configure(self, key: SubjectKey, name: str, windows: Windows) -> None:
        """Add a subject, or update the name and windows of one (its tracker state stays)."""
        tracked = self._subjects.get(key)
        if tracked is None:
            self._subjects[key] = Tracked(key, name, windows, initial(key))
        else:
            tracked.name, tracked.windows, tracked.dirty = name, windows, True

    async def remove(self, key: SubjectKey) -> None:
        self._pending.discard(key)
        if self._subjects.pop(key, None) is not None:
            await self._store.writer.run(lambda conn: states.forget(conn, [key]))

    async def restore(self) -> None:
        """Load saved tracker state and square it with the store: the store is the truth about
        tickets. Subjects start unknown; state of subjects no longer configured is dropped."""
        now = self.now()
        saved = {row.key: row for row in await states.load(self._store.database.read)}
        gone = [key for key in saved if key not in self._subjects]
        if gone:
            await self._store.writer.run(lambda conn: states.forget(conn, gone))
        for key, tracked in self._subjects.items():
            row = saved.get(key)
            if row is not None:
                try:
                    tracked.state = load(row.state, now)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning(
                        "saved tracker state unreadable; starting fresh",
                        org=key.org,
                        subject=str(key),
                        error=str(exc),
                    )
            await self._reconcile(tracked, now)
            self._note_pending(tracked)
        self._trigger_cursor = await self._last_trigger_id()

    async def _reconcile(self, tracked: Tracked, now: Now) -> None:
        """Tell the tracker what people did to its ticket while the daemon was down."""
        key = tracked.key
        unresolved = {
            t.seq: t
            for t in await self._store.list_open_for_subject(key.org, key.type, key.id)
            if t.source is Source.HEALTH_MONITOR
        }
        mine = tracked.state.ticket
        if mine is not None and mine.seq is not None:
            in_store = unresolved.get(mine.seq)
            if mine.open and in_store is None:
                try:
                    ticket, _ = await self._store.get(key.org, mine.seq)
                except TicketError:
                    ticket = None
                when = ticket.resolved_at if ticket is not None else None
                await self._handle(tracked, TicketResolvedByPerson(mine.seq, when), now)
            elif not mine.open and in_store is not None:
                await self._handle(tracked, TicketReopenedByPerson(mine.seq), now)
            if in_store is not None and in_store.state is State.IN_PROGRESS:
                ticket_now = tracked.state.ticket
                if ticket_now is not None and not ticket_now.in_progress:
                    await self._handle(tracked, TicketStartedByPerson(mine.seq), now)
        if unresolved and not tracked.state.ticket_open:
            # No saved state (or it lost the seq in a crash): adopt the store's newest ticket.
            newest = unresolved[max(unresolved)]
            tracked.state = adopt_open_ticket(
                tracked.state,
                newest.seq,
                newest.kind,
                in_progress=newest.state is State.IN_PROGRESS,
            )
            tracked.dirty = True

    # -- input -------------------------------------------------------------------------------

    def observe(self, key: SubjectKey, observation: Observation, at: float | None = None) -> None:
        """The probes' sink: enqueue; the loop handles it in order. `at` is when the probe began
        looking (monotonic): a failure counts from there, not from when its timeout ran out."""
        self._queue.put_nowait((key, observation, at))

    def discovered(self, key: SubjectKey, name: str) -> None:
        """A subject found at run time (MQTT discovery, a broker's own subject)."""
        if key not in self._subjects:
            self.configure(key, name, self.default_windows)

    async def run(self, *, windows_every: float = 0.2, housekeeping_every: float = 1.0) -> None:
        """Handle observations as they come, expire windows every `windows_every` seconds (a
        debounce ends within that of its time) and do the housekeeping (people's actions,
        saving) every `housekeeping_every` seconds, until cancelled."""
        next_windows = self._monotonic() + windows_every
        next_housekeeping = self._monotonic() + housekeeping_every
        try:
            while True:
                timeout = max(0.0, min(next_windows, next_housekeeping) - self._monotonic())
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation
                # that arrives as the queue hands over an item, and the daemon would not stop.
                item = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        item = await self._queue.get()
                if item is not None:
                    await self.handle_observation(*item)
                mono = self._monotonic()
                if mono >= next_windows:
                    await self.expire_windows()
                    next_windows = mono + windows_every
                if mono >= next_housekeeping:
                    await self.housekeeping()
                    next_housekeeping = mono + housekeeping_every
        finally:
            await asyncio.shield(self.save(force=True))

    async def handle_observation(
        self, key: SubjectKey, observation: Observation, at: float | None = None
    ) -> None:
        tracked = self._subjects.get(key)
        if tracked is None:
            if key.type == "integration" and key.id.startswith("mqtt-broker:"):
                self.discovered(key, f"MQTT broker {key.id.removeprefix('mqtt-broker:')}")
                tracked = self._subjects[key]
            else:
                log.debug("observation for an unknown subject", subject=str(key))
                return
        now = self.now()
        if at is not None and at < now.mono:
            # Back-date to when the probe began, but never before this subject's last event.
            mono = max(at, tracked.last_mono)
            now = Now(mono, now.wall - timedelta(seconds=now.mono - mono))
        await self._handle(tracked, Observed(observation), now)

    async def tick(self) -> None:
        """Expire windows, pick up people's actions on monitor tickets, save changed state."""
        await self.expire_windows()
        await self.housekeeping()

    async def expire_windows(self) -> None:
        """Tick the subjects whose windows are running (not all 10,000, five times a second)."""
        now = self.now()
        for key in list(self._pending):
            tracked = self._subjects.get(key)
            if tracked is not None:
                await self._handle(tracked, Tick(), now)

    def _note_pending(self, tracked: Tracked) -> None:
        if tracked.state.health in _PENDING or tracked.state.flapping:
            self._pending.add(tracked.key)
        else:
            self._pending.discard(tracked.key)

    async def housekeeping(self) -> None:
        await self._poll_people()
        await self.save()

    # -- the tracker and the store -------------------------------------------------------------

    async def _handle(self, tracked: Tracked, event: Event, now: Now) -> None:
        tracked.last_mono = max(tracked.last_mono, now.mono)
        pending: list[Event] = [event]
        while pending:
            before = tracked.state
            tracked.state, decisions = step(tracked.state, pending.pop(0), now, tracked.windows)
            if tracked.state != before:
                tracked.dirty = True
            for decision in decisions:
                follow_up = await self._apply(tracked, decision)
                if follow_up is not None:
                    pending.append(follow_up)
        self._note_pending(tracked)

    async def _apply(self, tracked: Tracked, decision: object) -> Event | None:
        key = tracked.key
        context = {"org": key.org, "subject": f"{key.type}:{key.id}"}
        actor = Actor.health_monitor()
        try:
            if isinstance(decision, OpenTicket):
                change = await self._store.open(
                    OpenRequest(
                        org=key.org,
                        source=Source.HEALTH_MONITOR,
                        subject=Subject(_subject_type(key), key.id, tracked.name),
                        kind=decision.kind,
                        description=decision.description,
                        actor=actor,
                    )
                )
                log.warning(
                    "subject down: ticket opened",
                    seq=change.ticket.seq,
                    kind=decision.kind,
                    reason=decision.reason.value,
                    **context,
                )
                return TicketOpened(change.ticket.seq)
            if isinstance(decision, ReopenTicket):
                await self._store.reopen(key.org, decision.seq, actor, decision.comment)
                log.warning(
                    "subject down again: ticket reopened",
                    seq=decision.seq,
                    reason=decision.reason.value,
                    **context,
                )
            elif isinstance(decision, ResolveTicket):
                await self._store.resolve(key.org, decision.seq, actor, decision.comment)
                log.info(
                    "subject recovered: ticket resolved",
                    seq=decision.seq,
                    reason=decision.reason.value,
                    **context,
                )
            elif isinstance(decision, Comment):
                await self._store.comment(key.org, decision.seq, actor, decision.body)
                level = log.warning if decision.reason in _LOUD else log.info
                level("ticket comment", seq=decision.seq, reason=decision.reason.value, **context)
            elif isinstance(decision, Note):
                log.info(decision.text, reason=decision.reason.value, **context)
        except IllegalTransition as exc:
            # A person got there first (resolved or reopened it meanwhile): theirs stands.
            log.info("monitor decision overtaken", error=str(exc), **context)
        return None

    async def _poll_people(self) -> None:
        """People's resolves, reopens and starts of monitor tickets, from the outbox."""
        triggers = schema.triggers
        async with self._store.database.read.connect() as conn:
            rows = (
                await conn.execute(
                    select(triggers.c.id, triggers.c.type, triggers.c.data)
                    .where(
                        triggers.c.id > self._trigger_cursor,
                        triggers.c.type.in_(list(_PERSON_EVENTS)),
                    )
                    .order_by(triggers.c.id)
                    .limit(1000)
                )
            ).all()
        if not rows:
            return
        now = self.now()
        for row in rows:
            self._trigger_cursor = max(self._trigger_cursor, row.id)
            data: dict[str, Any] = row.data
            event = data.get("event", {})
            ticket = data.get("ticket", {})
            if event.get("actor", {}).get("type") == ActorType.HEALTH_MONITOR.value:
                continue
            if ticket.get("source") != Source.HEALTH_MONITOR.value:
                continue
            subject = ticket.get("subject", {})
            key = SubjectKey(data.get("org", ""), subject.get("type", ""), subject.get("id", ""))
            tracked = self._subjects.get(key)
            if tracked is None:
                continue
            seq = int(ticket.get("seq", 0))
            await self._handle(tracked, _PERSON_EVENTS[row.type](seq, ticket), now)

    async def _last_trigger_id(self) -> int:
        triggers = schema.triggers
        async with self._store.database.read.connect() as conn:
            value = (
                await conn.execute(select(triggers.c.id).order_by(triggers.c.id.desc()).limit(1))
            ).scalar()
        return int(value or 0)

    async def save(self, *, force: bool = False) -> None:
        """Write the state of subjects that changed (at most every SAVE_EVERY_SECONDS)."""
        mono = self._monotonic()
        if not force and mono - self._last_save < SAVE_EVERY_SECONDS:
            return
        self._last_save = mono
        dirty = [t for t in self._subjects.values() if t.dirty]
        if not dirty:
            return
        now = self.now()
        rows = [_state_row(t, now) for t in dirty]
        await self._store.writer.run(lambda conn: states.save(conn, rows))
        for tracked in dirty:
            tracked.dirty = False


def _resolved(seq: int, ticket: dict[str, Any]) -> Event:
    at = ticket.get("resolved_at")
    when = datetime.fromisoformat(at.replace("Z", "+00:00")) if isinstance(at, str) else None
    return TicketResolvedByPerson(seq, when)


_PERSON_EVENTS: dict[str, Callable[[int, dict[str, Any]], Event]] = {
    "ticket.resolved": _resolved,
    "ticket.reopened": lambda seq, _: TicketReopenedByPerson(seq),
    "ticket.started": lambda seq, _: TicketStartedByPerson(seq),
}


def _subject_type(key: SubjectKey) -> SubjectType:
    try:
        return SubjectType(key.type)
    except ValueError:
        return SubjectType.OTHER


def _state_row(tracked: Tracked, now: Now) -> states.StateRow:
    state = tracked.state
    last = state.recent[-1] if state.recent else None
    last_result = None
    if last is not None:
        obs = last.observation
        moment = now.wall.timestamp() - max(0.0, now.mono - last.at.mono)
        last_result = _json_ready(
            {
                "at": datetime.fromtimestamp(moment, UTC).isoformat(),
                "health": obs.health.value,
                "detail": obs.detail,
                "error_class": obs.error_class,
                "latency_ms": obs.latency_ms,
            }
        )
    since = None
    if state.since is not None:
        since = datetime.fromtimestamp(
            now.wall.timestamp() - max(0.0, now.mono - state.since.mono), UTC
        )
    return states.StateRow(
        key=tracked.key,
        name=tracked.name,
        health=state.health.value,
        flapping=state.flapping,
        since=since,
        ticket_seq=state.ticket_seq if state.ticket_open else None,
        last_result=last_result,
        state=_json_ready(dump(state, now)),
        updated_at=now.wall,
    )


def _json_ready(value: dict[str, Any]) -> dict[str, Any]:
    """Probe data may hold datetimes and the like: store their text."""
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result
