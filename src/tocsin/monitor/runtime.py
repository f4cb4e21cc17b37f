"""The health monitor at run time: observations in, tracker steps, ticket changes out.

One event loop owns every subject's tracker state. An observation is handled the moment a probe
reports it, synchronously: a tracker step, and the ticket decisions handed to the
`DecisionApplier`, which writes them in batches and reports back (an open's seq). So no
subject's store write holds up another subject's observation, and a storm of opens is a few
transactions. Around that, tasks of their own: windows expire every 0.2 s; people's actions on
monitor tickets are read from the trigger outbox (so the CLI's changes count too) and changed
state is saved, every second. None of them stops for a store fault: what could not be written
is kept and written when the store takes it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from math import inf
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tocsin import logs
from tocsin.db import schema
from tocsin.db.writer import StoreClosed, StoreUnavailable
from tocsin.monitor import groups, maintenance_store, states
from tocsin.monitor.applier import DecisionApplier, Outcome, Pending
from tocsin.monitor.maintenance import HOLD_PREFIX, Maintenance, Window
from tocsin.monitor.maintenance import Subject as MaintenanceSubject
from tocsin.monitor.parents import HOLDING, Dependencies, parent_key
from tocsin.monitor.storm import STORM_HOLD, StormCap, storm_key
from tocsin.probes.observation import Health, Observation, SubjectKey, like
from tocsin.tickets.errors import TicketError
from tocsin.tickets.model import Actor, ActorType, Kind, Source, State
from tocsin.tickets.store import TicketStore
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
    next_tick,
    step,
    text,
)
from tocsin.tracker.state import SubjectHealth

log = structlog.get_logger("tocsin.monitor")

SAVE_EVERY_SECONDS = 2.0
SAVE_DEFER_SECONDS = 15.0  # how long ticket changes waiting for the store may hold saves back
STALE_EVERY = 300.0  # a subject whose only news is another healthy result is saved this often
SAVE_BATCH = 2_000  # state rows per write: a storm's saves spread over a few seconds
# A burst - this many subjects changed since the last save, the latest under BURST_QUIET
# seconds ago or as many with a window running - holds saves back (at most SAVE_DEFER_SECONDS):
# saving shares the process with handling the burst, and took a third of it while 5,000
# devices went offline (and the writer, when their debounce ended).
BURST_CHANGES = 500
BURST_QUIET = 1.0
EXPIRE_PASSES = 3  # window expiry passes in a row, at most, while passes take long
EXPIRE_AGAIN_AFTER = 0.05  # s a pass may take before another follows at once
EXPIRE_SLICE = 500  # subjects ticked between two turns of the event loop
_PENDING = {SubjectHealth.FAILING, SubjectHealth.RECOVERING}
_QUIET = {Reason.BECAME_UNKNOWN, Reason.PARENT_DOWN, Reason.SUPPRESSED_BY_PARENT}
_LOUD = {Reason.OPEN, Reason.REOPEN_IN_WINDOW, Reason.REOPEN_STILL_UNHEALTHY, Reason.FAILED_AGAIN}
_IN_CHUNKS = 500  # values per SQL IN list
_STORM_RULES = groups.GroupRules(threshold=1)  # the storm's ticket: from its first subject
_STORMED = ("device", "integration")  # what a storm may hold
_BACK = (SubjectHealth.UP, SubjectHealth.RECOVERING)
_BACK_OR_UNSEEN = (SubjectHealth.RECOVERING, SubjectHealth.UNKNOWN)  # a group relapses from
MAINTENANCE_POLL = 5.0  # s between reads of the store's maintenance windows

HealthHook = Callable[[SubjectKey, SubjectHealth], None]


@dataclass(slots=True)
class Tracked:
    """A subject as the monitor holds it."""

    key: SubjectKey
    name: str
    windows: Windows
    state: SubjectState
    dirty: bool = True  # changed in what a restart needs: saved within SAVE_EVERY_SECONDS
    stale: bool = False  # only its recent probe results changed: saved within STALE_EVERY
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
        # Subjects with a window running, or flapping: when a Tick may next change them.
        self._pending: dict[SubjectKey, float] = {}
        self.applier = DecisionApplier(store, self._applied)
        self.on_health: HealthHook | None = None  # told when a subject's health changes
        self._trigger_cursor = 0
        self._last_save = float("-inf")
        self._last_stale_save = float("-inf")
        self._changed = 0  # subjects that became dirty since the last save
        self._last_change = float("-inf")
        self.dependencies = Dependencies()
        # Parents whose open ticket's list of unreachable children may be out of date.
        self._lists: set[SubjectKey] = set()
        # Spaces (Multiple devices offline): each one's devices, each device's space, the
        # spaces whose group is forming, those to assess on the next pass, what each group
        # ticket last said (members, when) and the devices of each space's current incident.
        self.group_rules = groups.GroupRules()
        self._members: dict[SubjectKey, tuple[SubjectKey, ...]] = {}
        self._space_of: dict[SubjectKey, SubjectKey] = {}
        self._gathering: set[SubjectKey] = set()
        self._review: set[SubjectKey] = set()
        self._said: dict[SubjectKey, tuple[int, float]] = {}
        self._group_due: dict[SubjectKey, float] = {}  # when to assess again, for time alone
        # Maintenance windows: the config's and the store's (the API's and the CLI's, read
        # every MAINTENANCE_POLL seconds), and the next moment one starts or ends.
        self.maintenance = Maintenance()
        self._config_windows: list[Window] = []
        self._stored_windows: list[Window] = []
        self._maintenance_next: datetime | None = None
        self._maintenance_polled = float("-inf")
        self._in_windows: frozenset[SubjectKey] = frozenset()  # subjects some window covers
        # The storm cap: tickets due per org and minute; the subjects each org's storm holds.
        self.storm = StormCap(0)
        self._storm_members: dict[str, set[SubjectKey]] = {}
        self._incident: dict[SubjectKey, dict[SubjectKey, None]] = {}

    # -- the subjects ------------------------------------------------------------------------

    def now(self) -> Now:
        return Now(self._monotonic(), self._wall())

    def subjects(self) -> dict[SubjectKey, Tracked]:
        """Every subject, but an org's storm subject until a storm touches it (it is not
        counted, shown or measured before: nothing of the site's own)."""
        return {k: t for k, t in self._subjects.items() if _listed(t)}

    def changed_at(self) -> float:
        """When (monotonic) a subject last changed more than its latest probe results: what
        the health board shows; -inf before any change."""
        return self._last_change

    def rows(self, org: str) -> list[states.StateRow]:
        """The org's subjects as the subjects API shows them: live, not the last save."""
        now = self.now()
        tracked = sorted(
            (t for t in self._subjects.values() if t.key.org == org and _listed(t)),
            key=lambda t: (t.key.type, t.key.id),
        )
        rows = [_state_row(t.key, t.name, t.state, now, view=True) for t in tracked]
        return [
            replace(row, maintenance_until=until)
            if (until := self.maintenance_until(row.key)) is not None
            else row
            for row in rows
        ]

    def configure(self, key: SubjectKey, name: str, windows: Windows) -> None:
        """Add a subject, or update the name and windows of one (its tracker state stays)."""
        tracked = self._subjects.get(key)
        if tracked is None:
            self._subjects[key] = Tracked(key, name, windows, initial(key))
        else:
            # The saved row holds the name, not the windows: a reload that renames nothing
            # writes nothing (it used to save all 100,000 states again).
            tracked.dirty = tracked.dirty or tracked.name != name
            tracked.name, tracked.windows = name, windows

    def set_spaces(
        self,
        spaces: Mapping[SubjectKey, str],
        members: Mapping[SubjectKey, Sequence[SubjectKey]],
        rules: groups.GroupRules,
    ) -> None:
        """The spaces (key -> name), tracked as subjects, and their devices. The caller then
        gives `set_parents` each device's space among its parents, and `remove`s spaces gone
        from `spaces`."""
        self.group_rules = rules
        for key, name in spaces.items():
            self.configure(key, name, self.default_windows)
        self._members = {space: tuple(members.get(space, ())) for space in spaces}
        self._space_of = {m: space for space, of in self._members.items() for m in of}
        self._gathering &= self._members.keys()
        self._review = set(self._members)

    def set_parents(self, parents: dict[SubjectKey, list[SubjectKey]]) -> None:
        """Who depends on whom (`depends_on` as keys, a device's space among them); children
        whose holder this changes (a parent added, or removed from the config) are told at
        once."""
        self.dependencies.set(parents)
        now = self.now()
        held = [k for k, t in self._subjects.items() if t.state.held_by is not None]
        for key in {*self.dependencies.dependents(), *held}:
            self._tell(key, now)

    def _tell(self, key: SubjectKey, now: Now) -> None:
        """Tell a subject which parent holds it now, if that changed."""
        tracked = self._subjects.get(key)
        if tracked is None:
            return
        current = tracked.state.held_by
        window = self.maintenance.holding(key, now.wall) if key in self._in_windows else None
        if window is not None:
            holder: str | None = window.hold  # the reason shown: maintenance, until it ends
        else:
            holder = self.dependencies.holder(key, current, self._health_of)
            if holder is None and self._storm_holds(key, current):
                holder = STORM_HOLD
        if holder != current:
            was = self._keys_of(key.org, current)
            self._lists.update(self._keys_of(key.org, current, holder))
            # A space or the storm letting a device go (its group never formed, or is over)
            # lets it go on from where it is; a parent's devices start their debounce again.
            grouped = current == STORM_HOLD or bool(was and was[0].type == "space")
            restart = not (holder is None and grouped)
            self._handle(tracked, ParentChanged(holder, restart), self._untimed(tracked, now))

    @staticmethod
    def _untimed(tracked: Tracked, now: Now) -> Now:
        """When to stamp a hold or a release: `now` for a subject it times (failing or
        unreachable: its debounce may start again); otherwise its own last event, so that a
        message it sent before being told, handled after (a storm read over seconds while its
        space began gathering), still counts from when it came (`observe` never steps a
        subject back before its last event)."""
        mono = tracked.last_mono
        timed = tracked.state.health in (SubjectHealth.FAILING, SubjectHealth.UNREACHABLE)
        if timed or not float("-inf") < mono < now.mono:
            return now
        return Now(mono, now.wall - timedelta(seconds=now.mono - mono))

    def _health_of(self, key: SubjectKey) -> SubjectHealth | None:
        tracked = self._subjects.get(key)
        if tracked is None:
            return None
        if key.type == "space":  # its group forming or open holds its devices; else nothing
            held = self._holding(key, tracked.state)
            return SubjectHealth.FAILING if held else SubjectHealth.UP
        return tracked.state.health

    def _holding(self, space: SubjectKey, state: SubjectState) -> bool:
        """Does the space hold its devices: its group forming, failing, down or still open?
        (The storm subject: the storm on, or its ticket failing, down or open.)"""
        if space.type == "other":
            return self.storm.on(space.org) or _group_active(state)
        return space in self._gathering or _group_active(state)

    # -- the storm cap ------------------------------------------------------------------------

    def set_storm(self, limit: int, orgs: Iterable[str]) -> None:
        """At most `limit` tickets a minute per org (0: no cap); each org's storm subject."""
        self.storm.limit = limit
        if limit:
            for org in orgs:
                key = storm_key(org)
                if key not in self._subjects:  # saved, and listed, once a storm touches it
                    self.configure(key, "Many subjects failing at once", self.default_windows)
                    self._subjects[key].dirty = False

    def _storm_holds(self, key: SubjectKey, current: str | None) -> bool:
        """Does the org's storm hold `key` (a device, an integration or a space whose group is
        failing): on, or holding it still with its ticket up?"""
        if key.type == "other" or storm_key(key.org) not in self._subjects:
            return False
        if self.storm.on(key.org):
            return True
        storm = self._subjects[storm_key(key.org)]
        return current == STORM_HOLD and self._holding(storm.key, storm.state)

    def _storm_started(self, org: str, now: Now) -> None:
        """The org's tickets in the last minute reached the limit: hold its failing subjects."""
        log.warning(
            "storm: the ticket limit of the minute is reached; one ticket takes the place of "
            "the rest until it is over",
            org=org,
            storm_limit=self.storm.limit,
        )
        failing = [
            key
            for key in self._pending
            if key.org == org and self._subjects[key].state.health is SubjectHealth.FAILING
        ]
        for key in failing:
            self._tell(key, now)
        self._review.add(storm_key(org))

    def _storm_check(self, now: Now) -> None:
        """Storms over (fewer than the limit due in a minute): new failures open their own
        tickets again; the storm's ticket keeps what it holds until they recover."""
        for org in self.storm.ended(now.mono):
            log.warning("storm over: failures open their own tickets again", org=org)
            key = storm_key(org)
            self._review.add(key)
            tracked = self._subjects.get(key)
            if tracked is not None and not self._holding(key, tracked.state):
                for member in list(self._storm_members.get(org, ())):
                    self._tell(member, now)

    def _keys_of(self, org: str, *ids: str | None) -> list[SubjectKey]:
        """The tracked parents these ids name."""
        keys = (parent_key(org, i, self._subjects) for i in ids if i is not None)
        return [key for key in keys if key is not None]

    # -- maintenance windows -----------------------------------------------------------------

    def set_maintenance(
        self,
        subjects: Iterable[MaintenanceSubject] | Callable[[], Iterable[MaintenanceSubject]],
        windows: Iterable[Window],
    ) -> None:
        """What windows may match (each subject's space and labels, or how to list them while
        some window exists) and the config's windows; the store's are read at `restore` and
        every MAINTENANCE_POLL seconds."""
        self.maintenance.set_subjects(subjects)
        self._config_windows = list(windows)
        self._apply_windows(self.now())

    async def reload_maintenance(self) -> None:
        """Read the store's windows now (the API calls this after adding or removing one)."""
        self._maintenance_polled = self._monotonic()
        stored = await maintenance_store.load(self._store.database.read)
        if stored != self._stored_windows:
            self._stored_windows = stored
            self._apply_windows(self.now())

    def _apply_windows(self, now: Now) -> None:
        """Windows changed: hold and release whom they cover from now."""
        before = self._in_windows
        self.maintenance.set_windows([*self._config_windows, *self._stored_windows])
        self._in_windows = frozenset(self.maintenance.covered())
        self._tell_maintenance(now, before | self._in_windows)

    def _tell_maintenance(self, now: Now, keys: Iterable[SubjectKey]) -> None:
        held = (
            k for k, t in self._subjects.items() if (t.state.held_by or "").startswith(HOLD_PREFIX)
        )
        for key in {*keys, *held}:
            self._tell(key, now)
        self._maintenance_next = self.maintenance.next_change(now.wall)

    async def _maintenance_tick(self) -> None:
        """A window started or ended: tell whom it covers; every MAINTENANCE_POLL seconds,
        windows the CLI added or removed."""
        if self._monotonic() - self._maintenance_polled >= MAINTENANCE_POLL:
            await self.reload_maintenance()
        now = self.now()
        if self._maintenance_next is not None and now.wall >= self._maintenance_next:
            self._tell_maintenance(now, self._in_windows)

    def maintenance_until(self, key: SubjectKey) -> datetime | None:
        """When the maintenance window holding `key` now ends (None: none holds it)."""
        if key not in self._in_windows:
            return None
        return self.maintenance.until(key, self._wall())

    # -- groups (Multiple devices offline) -------------------------------------------------

    def _assess_groups(self, now: Now, *, timed: bool = False, forming: bool = False) -> None:
        """Assess the spaces whose members changed and, when `timed`, those whose verdict
        time alone changes now (a forming group's devices reaching their debounce's end or
        waiting too long; a growth comment its rate held back): form, hold, release and
        resolve groups. `forming`: only the spaces whose group is not up yet (those that may
        form now); the rest stay for the next full assessment."""
        review, self._review = self._review, set()
        if forming:
            up = {space for space in review if self._group_up(space)}
            review -= up
            self._review |= up
        spaces = review
        if timed and self._group_due:
            due = {space for space, at in self._group_due.items() if at <= now.mono}
            spaces = review | due  # spaces and storm subjects (removed ones are skipped)
            for space in due:
                del self._group_due[space]
        for space in sorted(spaces, key=self._depth):
            tracked = self._subjects.get(space)
            if tracked is not None:
                self._assess(tracked, now, changed=space in review)

    def _joins_gathering(
        self, space: SubjectKey, before: SubjectState, after: SubjectState
    ) -> bool:
        """A device of a gathering space, held by it, began failing: nothing its space's
        verdict acts on changes until its debounce ends (a change of health of its own, which
        is assessed). A 20,000-device storm re-assessed every space on every pass for this."""
        return (
            space in self._gathering
            and after.held_by == space.id
            and after.health is SubjectHealth.FAILING
            and before.health in _BACK
        )

    def _group_up(self, space: SubjectKey) -> bool:
        """Is the space's (or the storm's) group up: its ticket open, or failing or down?"""
        tracked = self._subjects.get(space)
        return tracked is not None and _group_active(tracked.state)

    def _depth(self, space: SubjectKey) -> int:
        """How many spaces up its parent chain goes: parents are assessed first."""
        depth, seen = 0, {space}
        while (up := self._parent_space(space)) is not None and up not in seen:
            depth, space = depth + 1, up
            seen.add(up)
        return depth

    def _parent_space(self, space: SubjectKey) -> SubjectKey | None:
        for parent in self.dependencies.parents(space):
            if parent.type == "space":
                return parent
        return None

    def _assess(self, tracked: Tracked, now: Now, *, changed: bool) -> None:
        space, state = tracked.key, tracked.state
        health = state.health
        storm = space.type == "other"  # the org's storm: what it holds, one past its debounce
        keys = self._storm_members.get(space.org, ()) if storm else self._members.get(space, ())
        members = [self._subjects[m] for m in keys if m in self._subjects]
        active = _group_active(state)
        verdict = groups.assess(
            space,
            ((m.state, m.windows) for m in members),
            now.mono,
            _STORM_RULES if storm else self.group_rules,
            active=active,
            hold=STORM_HOLD if storm else None,
        )
        holding = self._holding(space, state)
        self._group_due.pop(space, None)
        if not storm and verdict.gathering:  # (the storm holds by its cap, not by gathering)
            if verdict.due is not None:
                self._group_due[space] = verdict.due
            if space not in self._gathering:
                log.info(
                    "devices of a space failing together: their group is forming",
                    offline=len(verdict.offline) + len(verdict.covers),
                    **_context(space),
                )
            self._gathering.add(space)
        elif not storm:
            self._gathering.discard(space)
        if verdict.forms:
            self._incident[space] = dict.fromkeys([*verdict.offline, *verdict.covers])
            # Failing since the first of its devices began to: its debounce is theirs.
            started = verdict.earliest if verdict.earliest is not None else now.mono
            began = Now(started, now.wall - timedelta(seconds=now.mono - started))
            self._handle(tracked, Observed(_group_observation(space, verdict)), began)
            self._handle(tracked, Tick(), now)
        elif active and verdict.healthy and state.health is not SubjectHealth.RECOVERING:
            if state.health is not SubjectHealth.UP:
                self._handle(tracked, Observed(_group_recovered(space)), now)
        elif active and verdict.offline and state.health in _BACK_OR_UNSEEN:
            self._handle(tracked, Observed(_group_observation(space, verdict)), now)
        if self._holding(space, tracked.state) != holding and (
            storm or tracked.state.health is health
        ):
            for member in members:  # (a space's change of health told them already)
                self._tell(member.key, now)
        state = tracked.state
        seq = state.ticket_seq
        if state.ticket_open and seq is not None:
            if changed:  # a device joined, left or came back: the ticket's list says so
                self._lists.add(space)
            incident = self._incident.setdefault(space, {})
            for covered in verdict.covers:
                self._handle(self._subjects[covered], Covered(seq), now)
            for key in [*verdict.covers, *verdict.offline]:
                if key not in incident:
                    incident[key] = None
                    self._lists.add(space)
            said, when = self._said.setdefault(space, (len(incident), now.mono))
            if groups.grew(len(verdict.offline), said, groups.GROUP_COMMENT_EVERY):
                if not groups.grew(len(verdict.offline), said, now.mono - when):
                    self._group_due[space] = when + groups.GROUP_COMMENT_EVERY  # say it then
                    return
                self._said[space] = (len(verdict.offline), now.mono)
                body = text.group_grew_comment(len(verdict.offline), said)
                comment = Comment(seq, body, Reason.GROUP_GREW)
                self.applier.submit(Pending(space, tracked.name, comment, self._wall()))
        elif not state.ticket_open:
            self._said.pop(space, None)
            self._incident.pop(space, None)

    def _member_states(self, space: SubjectKey) -> list[tuple[str, str]]:
        """The devices of the space's incident, each with its state, for its ticket."""
        listed = []
        for member in self._incident.get(space, {}):
            tracked = self._subjects.get(member)
            if tracked is None:
                continue
            listed.append((member.id, _member_state(tracked.state)))
        return listed

    async def remove(self, *keys: SubjectKey) -> None:
        """Stop tracking these subjects and drop their saved state (one write for all)."""
        gone = []
        for key in keys:
            self._pending.pop(key, None)
            if self._subjects.pop(key, None) is not None:
                gone.append(key)
        if gone:
            await self._forget(gone)

    async def _forget(self, keys: list[SubjectKey]) -> None:
        try:
            await self._store.writer.run(lambda conn: states.forget(conn, keys))
        except (StoreUnavailable, StoreClosed):  # said by the store's health; dropped at start
            log.info("saved state of removed subjects kept for now", subjects=len(keys))

    async def restore(self) -> None:
        """Load saved tracker state and square it with the store (the store is the truth about
        tickets), in a few bulk queries whatever the number of subjects. Subjects start
        unknown; state of subjects no longer configured is dropped."""
        now = self.now()
        read = self._store.database.read
        saved = {row.key: row for row in await states.load(read)}
        unresolved = await _open_monitor_tickets(read)
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
        # Tickets the saved state holds open but the store resolved: when, in one query per org.
        closed: dict[str, list[int]] = defaultdict(list)
        for key, tracked in self._subjects.items():
            mine = tracked.state.ticket
            if mine is not None and mine.seq is not None and mine.open:  # noqa: SIM102
                if mine.seq not in unresolved.get(key, {}):
                    closed[key.org].append(mine.seq)
        resolved_at = await _resolved_times(read, closed)
        for key, tracked in self._subjects.items():
            if key in saved or key in unresolved:  # the rest start unknown, with nothing to do
                self._reconcile(tracked, unresolved.get(key, {}), resolved_at, now)
                self._note_pending(tracked)
        gone = [key for key in saved if key not in self._subjects]
        if gone:
            await self._forget(gone)
        self._trigger_cursor = await self._last_trigger_id()
        for key, tracked in self._subjects.items():  # what a storm's ticket still holds
            if tracked.state.held_by == STORM_HOLD:
                self._storm_members.setdefault(key.org, set()).add(key)
                self._review.add(storm_key(key.org))
        await self._restore_incidents(read)
        await self.reload_maintenance()
        # Held by a window that ended while tocsin was stopped: released now.
        self._tell_maintenance(now, self._in_windows)

    async def _restore_incidents(self, engine: Any) -> None:
        """The devices each open group or storm ticket listed (those back online too): its
        list goes on from there, none dropped by a restart."""
        open_groups = {
            (key.org, tracked.state.ticket_seq): key
            for key, tracked in self._subjects.items()
            if key.type in ("space", "other") and tracked.state.ticket_open
        }
        if not open_groups:
            return
        T = schema.tickets
        found: dict[tuple[str, int | None], str] = {}
        async with engine.connect() as conn:
            for org in {org for org, _ in open_groups}:
                seqs = [seq for o, seq in open_groups if o == org and seq is not None]
                for chunk in _chunks(seqs, _IN_CHUNKS):
                    statement = select(T.c.seq, T.c.description).where(
                        T.c.org == org, T.c.seq.in_(chunk)
                    )
                    for row in (await conn.execute(statement)).all():
                        found[(org, row.seq)] = row.description
        for (org, seq), key in open_groups.items():
            ids = set(text.members_listed(found.get((org, seq), "")))
            candidates = (
                self._members.get(key, ())
                if key.type == "space"
                else [k for k in self._subjects if k.org == org and k.type in _STORMED]
            )
            listed = [member for member in candidates if member.id in ids]
            if listed:
                self._incident[key] = dict.fromkeys(listed)

    def _reconcile(
        self,
        tracked: Tracked,
        unresolved: dict[int, _OpenTicketRow],
        resolved_at: dict[tuple[str, int], datetime | None],
        now: Now,
    ) -> None:
        """Tell the tracker what people did to its ticket while the daemon was down."""
        key = tracked.key
        mine = tracked.state.ticket
        if mine is not None and mine.seq is not None:
            in_store = unresolved.get(mine.seq)
            if mine.open and in_store is None:
                when = resolved_at.get((key.org, mine.seq))
                self._handle(tracked, TicketResolvedByPerson(mine.seq, when), now)
            elif not mine.open and in_store is not None:
                self._handle(tracked, TicketReopenedByPerson(mine.seq), now)
            if in_store is not None and in_store.in_progress:
                ticket_now = tracked.state.ticket
                if ticket_now is not None and not ticket_now.in_progress:
                    self._handle(tracked, TicketStartedByPerson(mine.seq), now)
        if unresolved and not tracked.state.ticket_open:
            # No saved state (or it lost the seq in a crash): adopt the store's newest ticket.
            newest = unresolved[max(unresolved)]
            tracked.state = adopt_open_ticket(
                tracked.state, newest.seq, newest.kind, in_progress=newest.in_progress
            )
            tracked.dirty = True

    # -- input -------------------------------------------------------------------------------

    def observe(self, key: SubjectKey, observation: Observation, at: float | None = None) -> None:
        """The probes' sink: handled at once (a tracker step; store writes go to the applier).
        `at` is when the probe began looking (monotonic): a failure counts from there, not from
        when its timeout ran out."""
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
        recent = tracked.state.recent
        if recent:
            observation = like(observation, recent[-1].observation)
        self._handle(tracked, Observed(observation), now)

    async def handle_observation(
        self, key: SubjectKey, observation: Observation, at: float | None = None
    ) -> None:
        """`observe`, then wait until its ticket changes are written (for tests and tools)."""
        self.observe(key, observation, at)
        await self.applier.drain()

    def discovered(self, key: SubjectKey, name: str) -> None:
        """A subject found at run time (MQTT discovery, a broker's own subject)."""
        if key not in self._subjects:
            self.configure(key, name, self.default_windows)

    async def run(self, *, windows_every: float = 0.2, housekeeping_every: float = 1.0) -> None:
        """Apply decisions, expire windows every `windows_every` seconds (a debounce ends within
        that of its time) and do the housekeeping (people's actions, saving) every
        `housekeeping_every` seconds, until cancelled; then save what changed."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.applier.run(), name="tocsin-monitor-applier")
                group.create_task(
                    _every(windows_every, self._expire_windows_yielding, "window expiry"),
                    name="tocsin-monitor-windows",
                )
                group.create_task(
                    _every(housekeeping_every, self.housekeeping, "monitor housekeeping"),
                    name="tocsin-monitor-housekeeping",
                )
        finally:
            await asyncio.shield(self._final_save())

    async def _final_save(self) -> None:
        try:
            await self.save(force=True)
        except (StoreUnavailable, StoreClosed):
            log.warning("tracker state not saved at stop: the store is unavailable")

    async def tick(self) -> None:
        """Expire windows, pick up people's actions on monitor tickets, save changed state, and
        wait for the resulting ticket changes to be written."""
        self.expire_windows()
        await self.applier.drain()
        await self.housekeeping()
        await self.applier.drain()

    def expire_windows(self) -> None:
        """Tick the subjects whose windows are running (not all 100,000, five times a second).
        A pass that took a while (thousands of debounces ending together) is followed at once
        by one for the windows that ended meanwhile, not a pass later."""
        for _ in self._expiring():
            pass

    async def _expire_windows_yielding(self) -> None:
        """`expire_windows`, letting the rest of the loop run every EXPIRE_SLICE subjects: the
        first of 5,000 decisions go to the store while the rest are still being taken."""
        for _ in self._expiring():
            await asyncio.sleep(0)

    def _expiring(self) -> Iterator[None]:
        ticked: set[SubjectKey] = set()
        for _ in range(EXPIRE_PASSES):
            now = self.now()
            self._assess_groups(now, timed=True)
            due = [k for k, at in self._pending.items() if at <= now.mono and k not in ticked]
            for n, key in enumerate(due, 1):
                tracked = self._subjects.get(key)
                # Still due (between slices an observation may have moved it on)?
                if tracked is not None and self._pending.get(key, inf) <= now.mono:
                    self._handle(tracked, Tick(), now)
                if n % EXPIRE_SLICE == 0:
                    # Devices just past their debounce: groups form now. Groups already up
                    # hear of their new members at the end of the pass: assessing all 200
                    # spaces of a 20,000-device storm after every slice was most of the pass.
                    if self._review:
                        self._assess_groups(self.now(), forming=True)
                    yield
            ticked.update(due)
            if self._review:  # devices whose debounce just ended: their groups form now
                self._assess_groups(self.now())
            if self._monotonic() - now.mono < EXPIRE_AGAIN_AFTER:
                return

    def _note_pending(self, tracked: Tracked) -> None:
        state = tracked.state
        if state.health in _PENDING or state.flapping:
            due = next_tick(state, tracked.windows)
            # A window with nothing left to wait for (a debounce awaiting its confirming
            # check, a reopen held while flapping) is looked at on every expiry pass.
            self._pending[tracked.key] = float("-inf") if due is None else due
        else:
            self._pending.pop(tracked.key, None)

    async def housekeeping(self) -> None:
        self._storm_check(self.now())
        await self._maintenance_tick()
        await self._poll_people()
        await self._list_unreachable()
        await self.save()

    async def _list_unreachable(self) -> None:
        """Keep each down parent's open ticket listing the children it holds unreachable (a
        description edit: on the timeline, no webhook), at most one edit a parent a pass."""
        lists, self._lists = self._lists, set()
        for parent in lists:
            tracked = self._subjects.get(parent)
            if tracked is None:
                continue
            state = tracked.state
            seq = state.ticket_seq
            if seq is None or not state.ticket_open or state.health not in HOLDING:
                continue
            children = sorted(
                child.id
                for child in self.dependencies.children(parent)
                if (held := self._subjects.get(child)) is not None
                and held.state.held_by == parent.id
                and held.state.health is SubjectHealth.UNREACHABLE
                and self._space_of.get(child) != parent  # its own devices: listed as members
            )
            revise = functools.partial(text.with_unreachable, children=children)
            if parent in self._members:
                members = self._member_states(parent)
                revise = functools.partial(_with_lists, members=members, children=children)
            try:
                await self._store.revise_description(
                    parent.org, seq, Actor.health_monitor(), revise
                )
            except TicketError as exc:  # e.g. a description grown past the limit: not again
                log.warning("unreachable children not listed", seq=seq, error=str(exc))
            except (StoreUnavailable, StoreClosed, SQLAlchemyError, OSError):
                self._lists.add(parent)  # the next pass tries again

    # -- the tracker and the store -------------------------------------------------------------

    def _handle(self, tracked: Tracked, event: Event, now: Now) -> None:
        tracked.last_mono = max(tracked.last_mono, now.mono)
        before = tracked.state
        is_parent = self.dependencies.has_children(tracked.key)
        held_as = _hold_class(self._health_of(tracked.key)) if is_parent else None
        storm = tracked.key.type == "other"
        storm_held = storm and self._holding(tracked.key, before)
        tracked.state, decisions = step(before, event, now, tracked.windows)
        after = tracked.state
        if after is not before:
            if _only_results_changed(before, after):
                tracked.stale = True
            else:
                self._changed += not tracked.dirty
                self._last_change = now.mono
                tracked.dirty = True
            if is_parent and after.ticket_seq != before.ticket_seq:
                self._lists.add(tracked.key)  # its ticket opened: list who it holds
            key = tracked.key
            if key.type == "space" or key.type == "other":
                self._review.add(key)
            if storm and self._holding(key, after) != storm_held:  # its ticket up, or over
                for member in list(self._storm_members.get(key.org, ())):
                    self._tell(member, now)
            if after.held_by != before.held_by and STORM_HOLD in (after.held_by, before.held_by):
                held = self._storm_members.setdefault(key.org, set())
                if after.held_by == STORM_HOLD:
                    held.add(key)
                else:
                    held.discard(key)
                self._review.add(storm_key(key.org))
            if after.health is not before.health:
                if self.on_health is not None:
                    self.on_health(tracked.key, after.health)
                space = self._space_of.get(tracked.key)
                if space is not None and not self._joins_gathering(space, before, after):
                    self._review.add(space)
                if after.held_by == STORM_HOLD:
                    self._review.add(storm_key(key.org))
                    if after.health is SubjectHealth.UNREACHABLE:  # held in place of a ticket
                        self.storm.due(key.org, now.mono)
                elif (
                    after.health is SubjectHealth.FAILING
                    and after.held_by is None
                    and self.storm.on(key.org)
                ):
                    self._tell(key, now)  # failing in a storm: the storm holds it
                if is_parent and _hold_class(self._health_of(tracked.key)) != held_as:
                    for child in self.dependencies.children(tracked.key):
                        self._tell(child, now)
                if after.held_by is not None:  # it went unreachable, or left it
                    self._lists.update(self._keys_of(tracked.key.org, after.held_by))
        for decision in decisions:
            if isinstance(decision, Note):
                # "Unknown" comes to every device of a broker at once (80,000 lines when it
                # goes), a hold to every device of a space or parent: the broker's, the
                # parent's or the group's own ticket and log line say it once.
                quiet = decision.reason in _QUIET or (
                    decision.reason is Reason.FAILING and tracked.state.held_by is not None
                )
                if quiet and not logs.debug_enabled():
                    continue
                level = log.debug if quiet else log.info
                level(decision.text, reason=decision.reason.value, **_context(tracked.key))
            else:
                opens = isinstance(decision, OpenTicket | ReopenTicket)
                if isinstance(decision, OpenTicket) and tracked.key.type in ("space", "other"):
                    members = self._member_states(tracked.key)
                    decision = replace(
                        decision, description=text.with_members(decision.description, members)
                    )
                self.applier.submit(Pending(tracked.key, tracked.name, decision, self._wall()))
                counted = opens and tracked.key.type != "other"  # the storm's own is not
                if counted and self.storm.due(tracked.key.org, now.mono):
                    self._storm_started(tracked.key.org, now)
        self._note_pending(tracked)

    def _applied(self, pending: Pending, outcome: Outcome, seq: int | None) -> None:
        """The applier wrote (or could not write) a decision: log it, report an open's seq."""
        decision, context = pending.decision, _context(pending.key)
        if outcome is Outcome.OVERTAKEN:
            log.info("monitor decision overtaken by a person", **context)
            return
        if outcome is not Outcome.APPLIED:
            return
        reason = decision.reason.value
        if isinstance(decision, OpenTicket):
            log.warning(
                "subject down: ticket opened", seq=seq, kind=decision.kind, reason=reason, **context
            )
            tracked = self._subjects.get(pending.key)
            if tracked is not None and seq is not None:
                self._handle(tracked, TicketOpened(seq), self.now())
        elif isinstance(decision, ReopenTicket):
            log.warning(
                "subject down again: ticket reopened", seq=decision.seq, reason=reason, **context
            )
        elif isinstance(decision, ResolveTicket):
            log.info(
                "subject recovered: ticket resolved", seq=decision.seq, reason=reason, **context
            )
        elif isinstance(decision, Comment):
            level = log.warning if decision.reason in _LOUD else log.info
            level("ticket comment", seq=decision.seq, reason=reason, **context)

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
            self._handle(tracked, _PERSON_EVENTS[row.type](seq, ticket), now)

    async def _last_trigger_id(self) -> int:
        triggers = schema.triggers
        async with self._store.database.read.connect() as conn:
            value = (
                await conn.execute(select(triggers.c.id).order_by(triggers.c.id.desc()).limit(1))
            ).scalar()
        return int(value or 0)

    async def save(self, *, force: bool = False) -> None:
        """Write the state of subjects that changed (at most every SAVE_EVERY_SECONDS, at most
        SAVE_BATCH rows a time unless forced). A save the store refuses is tried again later:
        the subjects stay marked changed."""
        mono = self._monotonic()
        if not force and mono - self._last_save < SAVE_EVERY_SECONDS:
            return
        if not force and len(self.applier) and mono - self._last_save < SAVE_DEFER_SECONDS:
            # Ticket changes are waiting for the store (a storm): they go first. The state is
            # saved once they are written, each subject once however often it changed; a
            # restart meanwhile takes the tickets from the store.
            return
        if (
            not force
            and self._changed >= BURST_CHANGES
            and (mono - self._last_change < BURST_QUIET or len(self._pending) >= BURST_CHANGES)
            and mono - self._last_save < SAVE_DEFER_SECONDS
        ):
            return  # a burst is still arriving, or its windows running: handling it first
        self._last_save = mono
        self._changed = 0
        # Not at stop either: a restart starts every subject unknown, so the latest healthy
        # results of 100,000 subjects would cost seconds of stopping for nothing.
        with_stale = mono - self._last_stale_save >= STALE_EVERY
        if with_stale:
            self._last_stale_save = mono
        dirty = [t for t in self._subjects.values() if t.dirty or (with_stale and t.stale)]
        if not force:
            dirty = dirty[:SAVE_BATCH]
        # Forced (at stop): every change, but SAVE_BATCH rows a write. All 100,000 rows built
        # at once took 370 MiB more memory for a moment, the daemon's peak.
        for at in range(0, len(dirty), SAVE_BATCH):
            await self._save_rows(dirty[at : at + SAVE_BATCH])

    async def _save_rows(self, dirty: list[Tracked]) -> None:
        now = self.now()
        # The rows are built in the writer's thread from the (immutable) states taken here:
        # the event loop goes on handling observations meanwhile.
        taken = [(t.key, t.name, t.state) for t in dirty]

        def write(conn: Connection) -> None:
            rows = [_state_row(k, n, s, now, view=False) for k, n, s in taken]
            states.save(conn, rows)

        for tracked in dirty:
            tracked.dirty = tracked.stale = False
        try:
            await self._store.writer.run(write)
        except BaseException:
            for tracked in dirty:
                tracked.dirty = True
            raise
        for tracked, (_, _, state) in zip(dirty, taken, strict=True):
            if tracked.state is not state:  # changed while the save was under way
                tracked.dirty = True


def _group_active(state: SubjectState) -> bool:
    """A space's (or the storm's) group is up: its ticket open, or failing or down."""
    return state.ticket_open or state.health in HOLDING


def _listed(tracked: Tracked) -> bool:
    """Shown and counted: any subject but a storm subject no storm has touched yet."""
    return tracked.key.type != "other" or tracked.state != initial(tracked.key)


def _hold_class(health: SubjectHealth | None) -> str:
    """What a parent's health means to its children: holding them, unknown (whoever holds
    them still does), or not holding. Children are told when this changes, not on every
    change of health (failing -> down changes nothing for them)."""
    if health in HOLDING:
        return "holding"
    return "unknown" if health is SubjectHealth.UNKNOWN or health is None else "free"


def _with_lists(description: str, members: list[tuple[str, str]], children: list[str]) -> str:
    """A group ticket's description: its devices with their state, then unreachable spaces."""
    return text.with_unreachable(text.with_members(description, members), children)


def _member_state(state: SubjectState) -> str:
    health = state.health
    if health is SubjectHealth.UP or health is SubjectHealth.RECOVERING:
        return text.BACK_ONLINE
    if health is SubjectHealth.UNKNOWN:
        return "not seen since tocsin started"
    if health is SubjectHealth.DOWN and state.ticket_open:
        return f"offline, on its own ticket #{state.ticket_seq}"
    return "offline"


def _group_observation(space: SubjectKey, verdict: groups.Assessment) -> Observation:
    count = len(verdict.offline) + len(verdict.covers)
    if space.type == "other":
        detail = f"{count} subjects failed in a storm"
    else:
        detail = f"{count} devices offline in space {space.id}"
    return Observation(
        Health.UNHEALTHY,
        detail,
        kind_hint=Kind.MULTIPLE_DEVICES_OFFLINE.value,
        error_class="devices_offline",
    )


def _group_recovered(space: SubjectKey) -> Observation:
    if space.type == "other":
        return Observation(Health.HEALTHY, "every subject of the storm is back")
    return Observation(Health.HEALTHY, f"every device of space {space.id} is back online")


def _only_results_changed(before: SubjectState, after: SubjectState) -> bool:
    """Is another probe result (and the failure count) all that changed? Then a restart
    loses nothing worth a write now."""
    return (
        before.health is after.health
        and before.since is after.since
        and before.ticket is after.ticket
        and before.flapping is after.flapping
        and before.nature == after.nature
        and before.first_failure is after.first_failure
        and before.first_success is after.first_success
        and before.changes == after.changes
        and before.held_by == after.held_by
    )


@dataclass(frozen=True)
class _OpenTicketRow:
    seq: int
    kind: str
    in_progress: bool


async def _open_monitor_tickets(
    engine: Any,
) -> dict[SubjectKey, dict[int, _OpenTicketRow]]:
    """Every unresolved health-monitor ticket, by subject, in one query."""
    T = schema.tickets
    statement = select(
        T.c.org, T.c.subject_type, T.c.subject_id, T.c.seq, T.c.kind, T.c.state
    ).where(T.c.source == Source.HEALTH_MONITOR.value, T.c.state != State.RESOLVED.value)
    async with engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    found: dict[SubjectKey, dict[int, _OpenTicketRow]] = defaultdict(dict)
    for row in rows:
        key = SubjectKey(row.org, row.subject_type, row.subject_id)
        in_progress = row.state == State.IN_PROGRESS.value
        found[key][row.seq] = _OpenTicketRow(row.seq, row.kind, in_progress)
    return found


async def _resolved_times(
    engine: Any, seqs: dict[str, list[int]]
) -> dict[tuple[str, int], datetime | None]:
    """When each of these tickets was resolved (a ticket gone from the store: not listed)."""
    T = schema.tickets
    found: dict[tuple[str, int], datetime | None] = {}
    async with engine.connect() as conn:
        for org, numbers in seqs.items():
            for chunk in _chunks(numbers, _IN_CHUNKS):
                statement = select(T.c.seq, T.c.resolved_at).where(
                    T.c.org == org, T.c.seq.in_(chunk)
                )
                for row in (await conn.execute(statement)).all():
                    found[(org, row.seq)] = row.resolved_at
    return found


def _chunks(values: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


async def _every(seconds: float, work: Callable[[], Any], what: str) -> None:
    """Run `work` (sync or async) every `seconds` until cancelled; a failure is logged and the
    next round comes anyway: no store fault or bug in one round stops the monitor."""
    said = ""
    while True:
        await asyncio.sleep(seconds)
        try:
            result = work()
            if asyncio.iscoroutine(result):
                await result
            said = ""
        except (StoreUnavailable, StoreClosed):
            pass  # the store's health says so, once; the next round retries
        except (SQLAlchemyError, OSError) as exc:  # a read the database refused
            if str(exc) != said:
                said = str(exc)
                log.warning(f"{what}: cannot read the store; trying again", error=repr(exc))
        except Exception:
            log.exception(f"{what} failed; trying again")


def _context(key: SubjectKey) -> dict[str, str]:
    return {"org": key.org, "subject": f"{key.type}:{key.id}"}


def _resolved(seq: int, ticket: dict[str, Any]) -> Event:
    at = ticket.get("resolved_at")
    when = datetime.fromisoformat(at.replace("Z", "+00:00")) if isinstance(at, str) else None
    return TicketResolvedByPerson(seq, when)


_PERSON_EVENTS: dict[str, Callable[[int, dict[str, Any]], Event]] = {
    "ticket.resolved": _resolved,
    "ticket.reopened": lambda seq, _: TicketReopenedByPerson(seq),
    "ticket.started": lambda seq, _: TicketStartedByPerson(seq),
}


def _state_row(
    key: SubjectKey, name: str, state: SubjectState, now: Now, *, view: bool
) -> states.StateRow:
    """A subject's row: `view`, for readers (the API, the pages), whose `state` holds only
    what they read (`held_by`: dumping the whole tracker state took 5.9 of the 7.3 s that
    100,000 rows cost); else for the store, the whole state with probe data as it is (its
    JSON columns write what json cannot, a datetime, as text)."""
    last = state.recent[-1] if state.recent else None
    last_result = None
    if last is not None:
        obs = last.observation
        moment = now.wall.timestamp() - max(0.0, now.mono - last.at.mono)
        last_result = {
            "at": datetime.fromtimestamp(moment, UTC).isoformat(),
            "health": obs.health.value,
            "detail": obs.detail,
            "error_class": obs.error_class,
            "latency_ms": obs.latency_ms,
        }
    since = None
    if state.since is not None:
        since = datetime.fromtimestamp(
            now.wall.timestamp() - max(0.0, now.mono - state.since.mono), UTC
        )
    saved = ({"held_by": state.held_by} if state.held_by else {}) if view else dump(state, now)
    return states.StateRow(
        key=key,
        name=name,
        health=state.health.value,
        flapping=state.flapping,
        since=since,
        ticket_seq=state.ticket_seq if state.ticket_open else None,
        last_result=last_result,
        state=saved,
        updated_at=now.wall,
    )
