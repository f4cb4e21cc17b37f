"""Delivery state in SQL: fan-out and claim. Each function is a write operation of a
synchronous Connection, run in the store's group-commit writer (tocsin.db.writer), so it is one
transaction (a savepoint of one) and never sees another write half done.

- fan_out: triggers past the cursor become one pending delivery per subscribed endpoint; the
  cursor moves in the same transaction (and only from where it was read: a conditional UPDATE),
  and (trigger_id, endpoint) is unique, so a crash or a second instance fans out nothing twice.
- claim: due deliveries become `delivering`, leased until `claimed_until`, by a conditional
  UPDATE that re-checks every condition on each row it changes and stamps the rows it wins
  with this claim's token; its row count says how many, and only rows carrying the token are
  sent, so two workers never both win one delivery. A delivery waits while an earlier one of
  the same ticket to the same endpoint is unfinished, so an endpoint sees a ticket's events in
  order. A lease that expires (its sender died) makes the delivery claimable again: it is
  re-sent with the same webhook-id.

Recording the outcomes is record.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Insert, and_, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tocsin.db import schema
from tocsin.db.bulk import Bulk
from tocsin.delivery.endpoints import Endpoint
from tocsin.delivery.payload import TriggerRow

D = schema.deliveries
W = schema.webhook_endpoints
TR = schema.triggers
CURSORS = schema.outbox_cursors
CURSOR = "webhooks"
FAN_OUT_BATCH = 1000


class Status(StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


UNFINISHED = (Status.PENDING.value, Status.DELIVERING.value)


class CursorMoved(RuntimeError):
    """Another writer fanned out these triggers first; this batch was rolled back."""


def new_msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _insert_ignoring_duplicates(dialect: str, table: Any) -> Insert:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(
        table
    ).on_conflict_do_nothing()


_ADD_DELIVERIES = Bulk(
    {name: _insert_ignoring_duplicates(name, D) for name in ("sqlite", "postgresql")},
    [
        "trigger_id",
        "endpoint",
        "org",
        "ticket_id",
        "type",
        "msg_id",
        "status",
        "attempts",
        "created_at",
        "next_attempt_at",
    ],
)

# -- endpoints -------------------------------------------------------------------------------


def ensure_endpoints(conn: Connection, names: Sequence[str], now: datetime) -> None:
    """A health row per configured endpoint (existing rows keep their state)."""
    if names:
        conn.execute(
            _insert_ignoring_duplicates(conn.dialect.name, W),
            [{"name": n, "created_at": now, "consecutive_failures": 0} for n in names],
        )


# -- fan-out ---------------------------------------------------------------------------------

_CURSOR = select(CURSORS.c.position).where(CURSORS.c.name == CURSOR)
_NEW_TRIGGERS = (
    select(TR.c.id, TR.c.org, TR.c.type, TR.c.ticket_id)
    .where(TR.c.id > bindparam("after"))
    .order_by(TR.c.id)
    .limit(bindparam("batch"))
)
_MOVE_CURSOR = (
    update(CURSORS)
    .where(CURSORS.c.name == CURSOR, CURSORS.c.position == bindparam("old"))
    .values(position=bindparam("new"))
)


@dataclass(frozen=True)
class FanOut:
    triggers: int
    deliveries: int


def fan_out(
    conn: Connection,
    endpoints: Sequence[Endpoint],
    now: datetime,
    *,
    batch: int = FAN_OUT_BATCH,
    msg_id: Callable[[], str] = new_msg_id,
) -> FanOut:
    """Turn up to `batch` triggers past the cursor into deliveries; move the cursor past them."""
    position = conn.execute(_CURSOR).scalar()
    if position is None:  # migration 0002 creates the row; this only guards a hand-made DB
        conn.execute(
            _insert_ignoring_duplicates(conn.dialect.name, CURSORS),
            {"name": CURSOR, "position": 0},
        )
        position = 0
    rows = conn.execute(_NEW_TRIGGERS, {"after": position, "batch": batch}).all()
    if not rows:
        return FanOut(0, 0)
    values = [
        {
            "trigger_id": row.id,
            "endpoint": endpoint.name,
            "org": row.org,
            "ticket_id": row.ticket_id,
            "type": row.type,
            "msg_id": msg_id(),
            "status": Status.PENDING.value,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for row in rows
        for endpoint in endpoints
        if endpoint.wants(row.org, row.type)
    ]
    _ADD_DELIVERIES.run(conn, values)
    moved = conn.execute(_MOVE_CURSOR, {"old": position, "new": rows[-1].id}).rowcount
    if moved != 1:
        raise CursorMoved("the webhooks cursor moved under this fan-out")
    return FanOut(len(rows), len(values))


# -- claim -----------------------------------------------------------------------------------


def _blocked(table: Any) -> Any:
    """An earlier delivery of the same ticket to the same endpoint is not finished yet."""
    earlier = D.alias("earlier")
    return exists().where(
        earlier.c.endpoint == table.c.endpoint,
        earlier.c.ticket_id == table.c.ticket_id,
        earlier.c.id < table.c.id,
        earlier.c.status.in_(UNFINISHED),
    )


def _due(table: Any) -> Any:
    return and_(table.c.status == Status.PENDING.value, table.c.next_attempt_at <= bindparam("now"))


def _lease_expired(table: Any) -> Any:
    return and_(table.c.status == Status.DELIVERING.value, table.c.claimed_until < bindparam("now"))


def _claim_statement(claimable: Callable[[Any], Any]) -> Any:
    """Claim up to :n of an endpoint's claimable deliveries, lowest ids first, stamping them
    with this claim's token. The UPDATE re-checks every condition on each row it changes, so a
    row another worker claimed in the meantime is not taken twice (PostgreSQL re-evaluates
    them on the locked row; SQLite's writer holds the database's write lock)."""
    candidate = D.alias("candidate")
    first = (
        select(candidate.c.id)
        .where(
            candidate.c.endpoint == bindparam("name"),
            claimable(candidate),
            ~_blocked(candidate),
        )
        .order_by(candidate.c.id)
        .limit(bindparam("n"))
    )
    return (
        update(D)
        .where(D.c.id.in_(first), claimable(D), ~_blocked(D))
        .values(
            status=Status.DELIVERING.value,
            attempts=D.c.attempts + 1,
            claimed_until=bindparam("until"),
            last_attempt_at=bindparam("now"),
            claim_token=bindparam("token"),
        )
    )


# Crashed senders' claims first (their leases expired), then what is due.
_CLAIM_EXPIRED = _claim_statement(_lease_expired)
_CLAIM_DUE = _claim_statement(_due)
_CLAIMED = (
    select(
        D.c.id,
        D.c.endpoint,
        D.c.org,
        D.c.trigger_id,
        D.c.msg_id,
        D.c.attempts,
        TR.c.type,
        TR.c.created_at,
        TR.c.data,
    )
    .join(TR, TR.c.id == D.c.trigger_id)
    .where(
        # endpoint and status first: the (endpoint, status, id) index finds the few rows in flight
        D.c.endpoint.in_(bindparam("names", expanding=True)),
        D.c.status == Status.DELIVERING.value,
        D.c.claim_token == bindparam("token"),
    )
    .order_by(D.c.id)
)
_ENDPOINT_STATES = select(W.c.name, W.c.disabled_at, W.c.failing_since, W.c.paused_until)


@dataclass(frozen=True)
class Slots:
    """An endpoint's deliveries in flight in this worker, its limit, and its lease length."""

    in_flight: int
    limit: int
    lease: timedelta


@dataclass(frozen=True)
class Claimed:
    id: int
    endpoint: str
    org: str
    trigger_id: int
    msg_id: str
    attempt: int  # this attempt's number, 1 for the first: the fence for recording it
    trigger: TriggerRow

    @property
    def ticket_seq(self) -> int | None:
        seq = self.trigger.data.get("ticket", {}).get("seq")
        return seq if isinstance(seq, int) else None


def claim(conn: Connection, slots: Mapping[str, Slots], free: int, now: datetime) -> list[Claimed]:
    """Claim due deliveries, at most `free` in all and each endpoint's free slots.

    A disabled endpoint gets none; a paused one (backing off) none until its pause ends; a
    failing one at most one at a time (a probe), so a dead endpoint's backlog is not thrown at
    it. The lowest ids go first.
    """
    states = {row.name: row for row in conn.execute(_ENDPOINT_STATES)}
    token = uuid.uuid4().hex
    won = 0
    names = []
    for name, slot in slots.items():
        state = states.get(name)
        if free <= 0:
            break
        if state is None or state.disabled_at is not None:
            continue
        if state.paused_until is not None and state.paused_until > now:
            continue
        limit = 1 if state.failing_since is not None else slot.limit
        wanted = min(limit - slot.in_flight, free)
        if wanted <= 0:
            continue
        params = {"name": name, "now": now, "until": now + slot.lease, "token": token}
        for statement in (_CLAIM_EXPIRED, _CLAIM_DUE):
            if wanted > 0:
                claimed = conn.execute(statement, {**params, "n": wanted}).rowcount
                wanted -= claimed
                free -= claimed
                won += claimed
                if claimed:
                    names.append(name)
    if not won:
        return []
    return [
        Claimed(
            id=row.id,
            endpoint=row.endpoint,
            org=row.org,
            trigger_id=row.trigger_id,
            msg_id=row.msg_id,
            attempt=row.attempts,
            trigger=TriggerRow(row.type, row.created_at, row.data),
        )
        for row in conn.execute(_CLAIMED, {"token": token, "names": sorted(set(names))})
    ]
