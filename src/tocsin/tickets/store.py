"""The ticket store: the only code that changes tickets.

Each change writes the ticket, its timeline event and its trigger row (the outbox) in one
transaction, through the process's group-commit writer (tocsin.db.writer). Reads go through the
async read engine. Values are checked here, before anything is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, and_, false, func, or_, select

from tocsin import cursors
from tocsin.db import schema
from tocsin.db.engine import Database
from tocsin.db.health import StoreHealth
from tocsin.db.writer import GroupWriter
from tocsin.tickets import writes
from tocsin.tickets.errors import InvalidTicket, TicketNotFound
from tocsin.tickets.model import (
    MAX_DEDUP_KEY_LENGTH,
    MAX_TEXT_LENGTH,
    Actor,
    Source,
    State,
    Ticket,
    TimelineEvent,
    validate_kind,
)
from tocsin.tickets.transitions import Action
from tocsin.tickets.writes import Change, OpenOutcome, OpenRequest

__all__ = ["Change", "OpenOutcome", "OpenRequest", "Page", "TicketFilter", "TicketStore"]

Clock = Callable[[], datetime]
T = schema.tickets
R = TypeVar("R")
E = schema.timeline_events

log = structlog.get_logger("tocsin.store")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TicketFilter:
    states: tuple[State, ...] = ()
    source: Source | None = None
    kind: str | None = None
    subject_type: str | None = None
    subject_id: str | None = None
    q: str | None = None
    # Any of these (type, id) subjects: the web page's space filter (a space and its devices).
    subjects: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class Page:
    tickets: list[Ticket]
    next_cursor: str | None


class TicketStore:
    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = utcnow,
        max_batch: int = 256,
        announce: bool = True,
    ) -> None:
        self._db = db
        self._clock = clock
        # announce=False: a helper process's store; the daemon's own says when writes fail.
        self.health = StoreHealth(db.sqlite_path, announce=announce)
        self._writer = GroupWriter(db.write, max_batch=max_batch, health=self.health)
        self._fired: list[Callable[[], None]] = []
        self._changed: list[Callable[[frozenset[str]], None]] = []

    @property
    def database(self) -> Database:
        return self._db

    @property
    def writer(self) -> GroupWriter:
        """The process's one writer: other stages batch their writes with the tickets'."""
        return self._writer

    def start(self) -> None:
        self._writer.start()

    async def close(self) -> None:
        """Commit what is queued, then stop taking writes."""
        await self._writer.close()

    def on_triggers(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` each time a write that fires triggers (an open, a transition, a
        comment) has committed: webhook delivery starts then, not at its next poll. Returns
        what stops the calls."""
        self._fired.append(callback)
        return lambda: self._fired.remove(callback)

    def on_change(self, callback: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call `callback(orgs)` after every committed ticket write, description edits (which
        fire no trigger) included, with the orgs whose tickets it changed: what open pages
        show changed. Returns what stops the calls."""
        self._changed.append(callback)
        return lambda: self._changed.remove(callback)

    async def _firing(self, op: Callable[[Connection], R]) -> R:
        result = await self._writer.run(op)
        _tell(self._fired, "trigger")
        self._tell_changed(result)
        return result

    async def _editing(self, op: Callable[[Connection], R]) -> R:
        result = await self._writer.run(op)
        self._tell_changed(result)
        return result

    def _tell_changed(self, result: object) -> None:
        changes = result if isinstance(result, list) else [result]
        orgs = frozenset(c.ticket.org for c in changes if isinstance(c, Change))
        for callback in list(self._changed):
            try:
                callback(orgs)
            except Exception:  # the write is committed: a listener's bug must not undo its answer
                log.exception("change listener failed")

    # -- writes ------------------------------------------------------------------------------

    async def open(self, request: OpenRequest, *, at: datetime | None = None) -> Change:
        """Open a ticket; or, by the product's rules, answer with the one that already exists.

        `at` stamps the change with an earlier moment than now: a decision the health monitor
        took while the store could not take it says when it was decided (so with the others).
        """
        validate_open(request)
        return await self._firing(
            lambda conn: writes.open_ticket(conn, request, at or self._clock())
        )

    async def open_plain(self, batch: list[tuple[OpenRequest, datetime]]) -> list[Change]:
        """Open many tickets in one operation (see writes.open_plain): the health monitor's
        opens in a storm, each with the moment it was decided. All or none."""
        for request, _ in batch:
            validate_open(request)
        return await self._firing(lambda conn: writes.open_plain(conn, batch))

    async def start_work(
        self, org: str, seq: int, actor: Actor, comment: str | None = None
    ) -> Change:
        return await self.transition(org, seq, Action.START, actor, comment)

    async def resolve(
        self,
        org: str,
        seq: int,
        actor: Actor,
        comment: str | None = None,
        *,
        at: datetime | None = None,
    ) -> Change:
        return await self.transition(org, seq, Action.RESOLVE, actor, comment, at=at)

    async def reopen(
        self,
        org: str,
        seq: int,
        actor: Actor,
        comment: str | None = None,
        *,
        at: datetime | None = None,
    ) -> Change:
        return await self.transition(org, seq, Action.REOPEN, actor, comment, at=at)

    async def transition(
        self,
        org: str,
        seq: int,
        action: Action,
        actor: Actor,
        comment: str | None = None,
        *,
        at: datetime | None = None,
    ) -> Change:
        if comment is not None:
            check_text("comment", comment)
        return await self._firing(
            lambda conn: writes.transition(
                conn, org, seq, action, actor, comment, at or self._clock()
            )
        )

    async def comment(
        self, org: str, seq: int, actor: Actor, body: str, *, at: datetime | None = None
    ) -> Change:
        check_text("body", body)
        return await self._firing(
            lambda conn: writes.comment(conn, org, seq, actor, body, at or self._clock())
        )

    async def edit_description(self, org: str, seq: int, actor: Actor, description: str) -> Change:
        check_text("description", description, allow_empty=True)
        return await self._editing(
            lambda conn: writes.edit_description(conn, org, seq, actor, description, self._clock())
        )

    async def revise_description(
        self, org: str, seq: int, actor: Actor, revise: Callable[[str], str]
    ) -> Change:
        """Edit the description to `revise(current)` in one transaction, so an edit a person
        makes meanwhile is never lost (nothing is recorded when it comes out the same)."""

        def checked(current: str) -> str:
            description = revise(current)
            check_text("description", description, allow_empty=True)
            return description

        return await self._editing(
            lambda conn: writes.revise_description(conn, org, seq, actor, checked, self._clock())
        )

    # -- reads -------------------------------------------------------------------------------

    async def get(self, org: str, seq: int) -> tuple[Ticket, list[TimelineEvent]]:
        """A ticket and its timeline, oldest event first."""
        async with self._db.read.connect() as conn:
            row = (await conn.execute(select(T).where(T.c.org == org, T.c.seq == seq))).first()
            if row is None:
                raise TicketNotFound(org, seq)
            ticket = writes.ticket_from_row(row._mapping)
            rows = await conn.execute(select(E).where(E.c.ticket_id == ticket.id).order_by(E.c.id))
            return ticket, [writes.event_from_row(r._mapping) for r in rows]

    async def list_tickets(
        self,
        org: str,
        filters: TicketFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Tickets newest first, `limit` at a time; `next_cursor` continues the listing."""
        filters = filters or TicketFilter()
        conditions = _conditions(org, filters)
        if cursor is not None:
            conditions.append(T.c.seq < decode_cursor(cursor))
        statement = select(T).where(and_(*conditions)).order_by(T.c.seq.desc()).limit(limit + 1)
        async with self._db.read.connect() as conn:
            rows = (await conn.execute(statement)).all()
        tickets = [writes.ticket_from_row(row._mapping) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(tickets, encode_cursor(tickets[-1].seq) if more and tickets else None)

    async def count_by_state(
        self, org: str, filters: TicketFilter | None = None
    ) -> dict[State, int]:
        """How many tickets match `filters` (but their states) in each state."""
        conditions = _conditions(org, filters or TicketFilter(), states=False)
        statement = select(T.c.state, func.count()).where(and_(*conditions)).group_by(T.c.state)
        async with self._db.read.connect() as conn:
            rows = (await conn.execute(statement)).all()
        counts = dict.fromkeys(State, 0)
        for state, count in rows:
            counts[State(state)] = int(count)
        return counts

    async def last_events(self, ticket_ids: list[int]) -> dict[int, TimelineEvent]:
        """Each ticket's latest timeline event (a list page's "last event" column)."""
        if not ticket_ids:
            return {}
        latest = (
            select(func.max(E.c.id)).where(E.c.ticket_id.in_(ticket_ids)).group_by(E.c.ticket_id)
        )
        async with self._db.read.connect() as conn:
            rows = (await conn.execute(select(E).where(E.c.id.in_(latest)))).all()
        return {row.ticket_id: writes.event_from_row(row._mapping) for row in rows}

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self._db.read.connect() as conn:
            await conn.execute(select(1))

    async def count(self, org: str | None = None) -> int:
        statement = select(func.count()).select_from(T)
        if org is not None:
            statement = statement.where(T.c.org == org)
        async with self._db.read.connect() as conn:
            return int((await conn.execute(statement)).scalar_one())


def _conditions(org: str, filters: TicketFilter, *, states: bool = True) -> list[Any]:
    conditions: list[Any] = [T.c.org == org]
    if states and filters.states:
        conditions.append(T.c.state.in_([s.value for s in filters.states]))
    if filters.source is not None:
        conditions.append(T.c.source == filters.source.value)
    if filters.kind is not None:
        conditions.append(T.c.kind == filters.kind)
    if filters.subject_type is not None:
        conditions.append(T.c.subject_type == filters.subject_type)
    if filters.subject_id is not None:
        conditions.append(T.c.subject_id == filters.subject_id)
    if filters.q:
        pattern = "%" + _escape_like(filters.q) + "%"
        columns = (T.c.subject_name, T.c.subject_id, T.c.description, T.c.kind)
        conditions.append(or_(*(c.ilike(pattern, escape="\\") for c in columns)))
    if filters.subjects is not None:
        by_type: dict[str, list[str]] = {}
        for subject_type, subject_id in filters.subjects:
            by_type.setdefault(subject_type, []).append(subject_id)
        conditions.append(
            or_(
                false(),
                *(
                    and_(T.c.subject_type == kind, T.c.subject_id.in_(ids))
                    for kind, ids in by_type.items()
                ),
            )
        )
    return conditions


def _tell(listeners: list[Callable[[], None]], what: str) -> None:
    for callback in list(listeners):
        try:
            callback()
        except Exception:  # the write is committed: a listener's bug must not undo its answer
            log.exception(f"{what} listener failed")


def validate_open(request: OpenRequest) -> None:
    """Check an open request's values; raise InvalidTicket naming the field."""
    try:
        validate_kind(request.kind, request.source)
    except ValueError as exc:
        raise InvalidTicket("kind", str(exc)) from None
    check_text("description", request.description, allow_empty=True)
    if request.dedup_key is not None:
        if request.source is Source.USER:
            raise InvalidTicket("dedup_key", "a user report has no dedup_key")
        if not 0 < len(request.dedup_key) <= MAX_DEDUP_KEY_LENGTH:
            raise InvalidTicket("dedup_key", f"1-{MAX_DEDUP_KEY_LENGTH} characters")


def check_text(field: str, value: str, *, allow_empty: bool = False) -> None:
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidTicket(field, f"at most {MAX_TEXT_LENGTH} characters")
    if not allow_empty and not value.strip():
        raise InvalidTicket(field, "must not be empty")


def encode_cursor(seq: int) -> str:
    return cursors.encode("seq", seq)


def decode_cursor(cursor: str) -> int:
    """The seq a cursor points below; raise InvalidTicket('cursor') for anything else."""
    seq = cursors.decode("seq", cursor)
    if seq is None:
        raise InvalidTicket("cursor", "not a cursor this API gave out")
    return seq


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
