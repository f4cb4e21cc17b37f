"""The write operations, as functions of a synchronous connection run in the writer thread.

Each one reads and checks first (raising a TicketError before writing anything), then writes
the ticket, its timeline event and its trigger row. Statements are built once, with bind
parameters: building a statement per call cost more than executing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Insert, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tocsin.db import schema
from tocsin.db.bulk import Bulk
from tocsin.db.writer import triggers_in_id_order
from tocsin.tickets.errors import DedupConflict, TicketNotFound
from tocsin.tickets.model import (
    Actor,
    ActorType,
    EventType,
    Source,
    State,
    Subject,
    SubjectType,
    Ticket,
    TimelineEvent,
)
from tocsin.tickets.transitions import TRIGGERS, Action, apply

T = schema.tickets
E = schema.timeline_events
UNRESOLVED = T.c.state != State.RESOLVED.value


class OpenOutcome(StrEnum):
    CREATED = "created"  # a new ticket
    DEDUPLICATED = "deduplicated"  # a workflow's dedup_key matched an unresolved ticket
    COMMENTED = "commented"  # a user report landed on the subject's unresolved ticket


@dataclass(frozen=True)
class OpenRequest:
    org: str
    source: Source
    subject: Subject
    kind: str
    description: str
    actor: Actor
    dedup_key: str | None = None


@dataclass(frozen=True)
class Change:
    """A ticket after a write, and the timeline event the write added (if any)."""

    ticket: Ticket
    event: TimelineEvent | None
    outcome: OpenOutcome | None = None


_INSERT_TICKET = insert(T).returning(T.c.id)
_INSERT_EVENT = insert(E).returning(E.c.id)
_INSERT_TRIGGER = insert(schema.triggers)
_TOUCH = update(T).where(T.c.id == bindparam("ticket_id")).values(updated_at=bindparam("at"))
_SET_STATE = (
    update(T)
    .where(T.c.id == bindparam("ticket_id"))
    .values(state=bindparam("new_state"), resolved_at=bindparam("new_resolved_at"))
)
_SET_DESCRIPTION = (
    update(T).where(T.c.id == bindparam("ticket_id")).values(description=bindparam("text"))
)
_BY_SEQ = select(T).where(T.c.org == bindparam("org"), T.c.seq == bindparam("seq"))
_BY_DEDUP_KEY = select(T).where(
    T.c.org == bindparam("org"), T.c.dedup_key == bindparam("key"), UNRESOLVED
)
_BY_SUBJECT = (
    select(T)
    .where(
        T.c.org == bindparam("org"),
        T.c.subject_type == bindparam("type"),
        T.c.subject_id == bindparam("id"),
        UNRESOLVED,
    )
    .order_by(T.c.seq.desc())
    .limit(1)
)


def _next_seq_statement(dialect: str) -> Insert:
    seqs = schema.org_sequences
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(seqs)
    return (
        upsert.values(org=bindparam("org"), last_seq=1)
        .on_conflict_do_update(index_elements=[seqs.c.org], set_={"last_seq": seqs.c.last_seq + 1})
        .returning(seqs.c.last_seq)
    )


_NEXT_SEQ = {name: _next_seq_statement(name) for name in ("sqlite", "postgresql")}


def _take_seqs_statement(dialect: str) -> Insert:
    """Take `n` sequence numbers of an org at once; returns the last of them."""
    seqs = schema.org_sequences
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(seqs)
    statement = upsert.values(org=bindparam("org"), last_seq=bindparam("n"))
    added = seqs.c.last_seq + statement.excluded.last_seq
    return statement.on_conflict_do_update(
        index_elements=[seqs.c.org], set_={"last_seq": added}
    ).returning(seqs.c.last_seq)


_TAKE_SEQS = {name: _take_seqs_statement(name) for name in ("sqlite", "postgresql")}
_TICKET_COLUMNS = [c.name for c in T.columns if c.name != "id"]
_EVENT_COLUMNS = [c.name for c in E.columns if c.name != "id"]
_TRIGGER_COLUMNS = [c.name for c in schema.triggers.columns if c.name != "id"]
_ADD_TICKETS = Bulk(insert(T), _TICKET_COLUMNS)
_ADD_EVENTS = Bulk(insert(E), _EVENT_COLUMNS)
_ADD_TRIGGERS = Bulk(insert(schema.triggers), _TRIGGER_COLUMNS)
_IDS_BY_SEQ = select(T.c.seq, T.c.id).where(
    T.c.org == bindparam("org"), T.c.seq.between(bindparam("lo"), bindparam("hi"))
)
_OPENED_EVENT_IDS = select(E.c.ticket_id, E.c.id).where(
    E.c.ticket_id.between(bindparam("lo"), bindparam("hi")), E.c.type == EventType.OPENED.value
)


def open_plain(conn: Connection, batch: list[tuple[OpenRequest, datetime]]) -> list[Change]:
    """Open a ticket for each request, in a handful of statements whatever their number: the
    health monitor's opens in a storm. Only for requests that look nothing up first (no
    dedup_key, not a user's report); each gets the same rows `open_ticket` writes.

    The rows go in as plain executemany (see db.bulk); the new ids are read back by (org,
    seq) and by ticket, which this transaction alone has written."""
    if any(r.dedup_key is not None or r.source is Source.USER for r, _ in batch):
        raise ValueError("open_plain takes no dedup_key and no user report")
    if not batch:
        return []
    counts: dict[str, int] = {}
    for request, _ in batch:
        counts[request.org] = counts.get(request.org, 0) + 1
    first_seq = {}
    for org, n in counts.items():
        last = int(conn.execute(_TAKE_SEQS[conn.dialect.name], {"org": org, "n": n}).scalar_one())
        first_seq[org] = last - n + 1
    next_seq = dict(first_seq)
    tickets: list[dict[str, Any]] = []
    for request, now in batch:
        seq, next_seq[request.org] = next_seq[request.org], next_seq[request.org] + 1
        tickets.append(
            {
                "org": request.org,
                "seq": seq,
                "state": State.OPEN.value,
                "source": request.source.value,
                "kind": request.kind,
                "subject_type": request.subject.type.value,
                "subject_id": request.subject.id,
                "subject_name": request.subject.name,
                "description": request.description,
                "dedup_key": None,
                "opened_at": now,
                "updated_at": now,
                "resolved_at": None,
            }
        )
    _ADD_TICKETS.run(conn, tickets)
    ids: dict[tuple[str, int], int] = {}
    for org, lo in first_seq.items():
        found = conn.execute(_IDS_BY_SEQ, {"org": org, "lo": lo, "hi": next_seq[org] - 1})
        ids.update(((org, seq), ticket_id) for seq, ticket_id in found)
    events = []
    for values, (request, now) in zip(tickets, batch, strict=True):
        values["id"] = ids[(values["org"], values["seq"])]
        events.append(
            {
                "ticket_id": values["id"],
                "type": EventType.OPENED.value,
                "at": now,
                "actor_type": request.actor.type.value,
                "actor_name": request.actor.name,
                "payload": {},
            }
        )
    _ADD_EVENTS.run(conn, events)
    ours: set[int] = {values["id"] for values in tickets}
    found = conn.execute(_OPENED_EVENT_IDS, {"lo": min(ours), "hi": max(ours)})
    event_ids = {ticket_id: event_id for ticket_id, event_id in found if ticket_id in ours}
    changes, triggers = [], []
    trigger = TRIGGERS[EventType.OPENED]
    for values, (request, now) in zip(tickets, batch, strict=True):
        ticket = ticket_from_row(values)
        event = TimelineEvent(event_ids[ticket.id], EventType.OPENED, now, request.actor, {})
        changes.append(Change(ticket, event, OpenOutcome.CREATED))
        if trigger is not None:
            triggers.append(_trigger_row(ticket, event, trigger.value))
    if triggers:
        triggers_in_id_order(conn)
    _ADD_TRIGGERS.run(conn, triggers)
    return changes


def open_ticket(conn: Connection, request: OpenRequest, now: datetime) -> Change:
    """Open a ticket; or, by the product's rules, answer with the one that already exists."""
    org = request.org
    if request.dedup_key is not None:  # a workflow's, or the monitor's own (never a user's)
        existing = _first(conn, _BY_DEDUP_KEY, org=org, key=request.dedup_key)
        if existing is not None:
            return Change(existing, None, OpenOutcome.DEDUPLICATED)
    if request.source is Source.USER:
        subject = request.subject
        existing = _first(conn, _BY_SUBJECT, org=org, type=subject.type.value, id=subject.id)
        if existing is not None:
            body = request.description.strip() or f"Reported again by {request.actor.name}."
            change = record(conn, existing, EventType.COMMENT, request.actor, {"body": body}, now)
            return replace(change, outcome=OpenOutcome.COMMENTED)
    seq = int(conn.execute(_NEXT_SEQ[conn.dialect.name], {"org": org}).scalar_one())
    values: dict[str, Any] = {
        "org": org,
        "seq": seq,
        "state": State.OPEN.value,
        "source": request.source.value,
        "kind": request.kind,
        "subject_type": request.subject.type.value,
        "subject_id": request.subject.id,
        "subject_name": request.subject.name,
        "description": request.description,
        "dedup_key": request.dedup_key,
        "opened_at": now,
        "updated_at": now,
        "resolved_at": None,
    }
    values["id"] = conn.execute(_INSERT_TICKET, values).scalar_one()
    change = record(conn, ticket_from_row(values), EventType.OPENED, request.actor, {}, now)
    return replace(change, outcome=OpenOutcome.CREATED)


def transition(
    conn: Connection,
    org: str,
    seq: int,
    action: Action,
    actor: Actor,
    comment: str | None,
    now: datetime,
) -> Change:
    ticket = locked_ticket(conn, org, seq)
    step = apply(action, ticket.state)
    if action is Action.REOPEN and ticket.dedup_key is not None:
        other = _first(conn, _BY_DEDUP_KEY, org=org, key=ticket.dedup_key)
        if other is not None:
            raise DedupConflict(ticket.dedup_key, other.seq)
    resolved_at = now if step.target is State.RESOLVED else None
    conn.execute(
        _SET_STATE,
        {"ticket_id": ticket.id, "new_state": step.target.value, "new_resolved_at": resolved_at},
    )
    changed = replace(ticket, state=step.target, resolved_at=resolved_at)
    payload = {"comment": comment} if comment else {}
    return record(conn, changed, step.event, actor, payload, now)


def comment(conn: Connection, org: str, seq: int, actor: Actor, body: str, now: datetime) -> Change:
    return record(
        conn, locked_ticket(conn, org, seq), EventType.COMMENT, actor, {"body": body}, now
    )


def edit_description(
    conn: Connection, org: str, seq: int, actor: Actor, description: str, now: datetime
) -> Change:
    return revise_description(conn, org, seq, actor, lambda _: description, now)


def revise_description(
    conn: Connection,
    org: str,
    seq: int,
    actor: Actor,
    revise: Callable[[str], str],
    now: datetime,
) -> Change:
    """Set the description to `revise(current)`; nothing is recorded when it is the same."""
    ticket = locked_ticket(conn, org, seq)
    description = revise(ticket.description)
    if ticket.description == description:
        return Change(ticket, None)
    conn.execute(_SET_DESCRIPTION, {"ticket_id": ticket.id, "text": description})
    payload = {"old_description": ticket.description, "new_description": description}
    changed = replace(ticket, description=description)
    return record(conn, changed, EventType.DESCRIPTION_EDITED, actor, payload, now)


def record(
    conn: Connection,
    ticket: Ticket,
    event_type: EventType,
    actor: Actor,
    payload: dict[str, Any],
    now: datetime,
) -> Change:
    """Append a timeline event, and the trigger row if the event fires one."""
    if ticket.updated_at != now:
        conn.execute(_TOUCH, {"ticket_id": ticket.id, "at": now})
        ticket = replace(ticket, updated_at=now)
    event_row = {
        "ticket_id": ticket.id,
        "type": event_type.value,
        "at": now,
        "actor_type": actor.type.value,
        "actor_name": actor.name,
        "payload": payload,
    }
    event_id = conn.execute(_INSERT_EVENT, event_row).scalar_one()
    event = TimelineEvent(event_id, event_type, now, actor, payload)
    trigger = TRIGGERS[event_type]
    if trigger is not None:
        triggers_in_id_order(conn)
        conn.execute(_INSERT_TRIGGER, _trigger_row(ticket, event, trigger.value))
    return Change(ticket, event)


def _trigger_row(ticket: Ticket, event: TimelineEvent, trigger: str) -> dict[str, Any]:
    return {
        "org": ticket.org,
        "ticket_id": ticket.id,
        "event_id": event.id,
        "type": trigger,
        "created_at": event.at,
        "data": {"org": ticket.org, "ticket": ticket.to_json(), "event": event.to_json()},
    }


def locked_ticket(conn: Connection, org: str, seq: int) -> Ticket:
    """The ticket, locked for this transaction (FOR UPDATE on PostgreSQL; SQLite's writer
    already holds the database's write lock)."""
    ticket = _first(conn, _BY_SEQ.with_for_update(), org=org, seq=seq)
    if ticket is None:
        raise TicketNotFound(org, seq)
    return ticket


def _first(conn: Connection, statement: Any, **params: Any) -> Ticket | None:
    row = conn.execute(statement, params).first()
    return ticket_from_row(row._mapping) if row is not None else None


def ticket_from_row(row: Any) -> Ticket:
    return Ticket(
        id=row["id"],
        org=row["org"],
        seq=row["seq"],
        state=State(row["state"]),
        source=Source(row["source"]),
        kind=row["kind"],
        subject=Subject(SubjectType(row["subject_type"]), row["subject_id"], row["subject_name"]),
        description=row["description"],
        dedup_key=row["dedup_key"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        resolved_at=row["resolved_at"],
    )


def event_from_row(row: Any) -> TimelineEvent:
    return TimelineEvent(
        id=row["id"],
        type=EventType(row["type"]),
        at=row["at"],
        actor=Actor(ActorType(row["actor_type"]), row["actor_name"]),
        payload=dict(row["payload"]),
    )
