"""Delivery state in SQL: fan-out, claim, record. Each function is a write operation of a
synchronous Connection, run in the store's group-commit writer (tocsin.db.writer), so it is one
transaction (a savepoint of one) and never sees another write half done.

- fan_out: triggers past the cursor become one pending delivery per subscribed endpoint; the
  cursor moves in the same transaction (and only from where it was read: a conditional UPDATE),
  and (trigger_id, endpoint) is unique, so a crash or a second instance fans out nothing twice.
- claim: a due delivery becomes `delivering`, leased until `claimed_until`, by a conditional
  UPDATE checked by its row count: two workers never both win one delivery. A delivery waits
  while an earlier one of the same ticket to the same endpoint is unfinished, so an endpoint
  sees a ticket's events in order. A lease that expires (its sender died) makes the delivery
  claimable again: it is re-sent with the same webhook-id.
- record: the outcome of an attempt, fenced by the attempt number the claim gave, and the
  endpoint's health (failing since, backoff, disabled).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Insert, and_, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tocsin.db import schema
from tocsin.delivery.endpoints import Endpoint
from tocsin.delivery.payload import TriggerRow
from tocsin.delivery.schedule import RetryPolicy
from tocsin.tickets.model import rfc3339

D = schema.deliveries
W = schema.webhook_endpoints
TR = schema.triggers
CURSORS = schema.outbox_cursors
CURSOR = "webhooks"
FAN_OUT_BATCH = 1000
MAX_ERROR = 500


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
    if values:
        conn.execute(_insert_ignoring_duplicates(conn.dialect.name, D), values)
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


# -- record ----------------------------------------------------------------------------------

_FENCE = and_(
    D.c.id == bindparam("delivery_id"),
    D.c.status == Status.DELIVERING.value,
    D.c.attempts == bindparam("attempt"),
)
_DELIVERED = (
    update(D)
    .where(_FENCE)
    .values(
        status=Status.DELIVERED.value,
        delivered_at=bindparam("at"),
        claimed_until=None,
        claim_token=None,
        last_status=bindparam("code"),
        last_error=None,
    )
)
_FAILED_ATTEMPT = (
    update(D)
    .where(_FENCE)
    .values(
        status=bindparam("new_status"),
        next_attempt_at=bindparam("retry_at"),
        claimed_until=None,
        claim_token=None,
        last_status=bindparam("code"),
        last_error=bindparam("error"),
    )
)
_RELEASE = (
    update(D)
    .where(_FENCE)
    .values(
        status=Status.PENDING.value,
        claimed_until=None,
        claim_token=None,
        attempts=D.c.attempts - 1,
    )
)
_ENDPOINT_OK = (
    update(W)
    .where(W.c.name == bindparam("endpoint_name"))
    .values(
        last_success_at=bindparam("at"),
        failing_since=None,
        consecutive_failures=0,
        paused_until=None,
        last_error=None,
    )
)
_ENDPOINT_FAILED = (
    update(W)
    .where(W.c.name == bindparam("endpoint_name"))
    .values(
        failing_since=bindparam("since"),
        consecutive_failures=bindparam("failures"),
        paused_until=bindparam("pause_end"),
        last_failure_at=bindparam("at"),
        last_error=bindparam("error"),
        disabled_at=bindparam("off_at"),
        disabled_reason=bindparam("off_reason"),
    )
)
# Successes in a burst touch the endpoint's row at most this often.
SUCCESS_STAMP_EVERY = timedelta(seconds=1)


@dataclass(frozen=True)
class Attempted:
    """What one attempt came to, as the worker saw it."""

    claimed: Claimed
    at: datetime
    status: int | None
    error: str | None = None  # None: delivered
    retry_at: datetime | None = None  # a failure's next attempt; None: failed for good
    gone: bool = False  # 410: the endpoint is disabled
    retry_after: timedelta | None = None
    unit: float = 0.5  # the random draw for the endpoint's pause

    @property
    def delivered(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Recorded:
    applied: bool  # False: the claim had been lost (lease expired and the delivery re-claimed)
    final: bool  # the delivery is finished: delivered or failed for good
    became_failing: bool  # the endpoint was healthy before this failure
    recovered: bool  # the endpoint was failing before this success
    disabled: str | None  # why this failure disabled the endpoint


@dataclass
class _Health:
    """An endpoint's row, kept current in memory while one transaction records a batch."""

    failing_since: datetime | None
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None
    last_success_at: datetime | None


_ENDPOINTS_NAMED = select(
    W.c.name,
    W.c.failing_since,
    W.c.consecutive_failures,
    W.c.disabled_at,
    W.c.disabled_reason,
    W.c.last_success_at,
).where(W.c.name.in_(bindparam("names", expanding=True)))


def record(
    conn: Connection,
    attempts: Sequence[Attempted],
    policy: RetryPolicy,
    disable_after: timedelta,
) -> list[Recorded]:
    """Record each attempt's outcome (fenced by its attempt number) and its endpoint's health,
    in order. The endpoints' rows are read once for the whole batch, and the successes (the
    bulk of a busy batch) are written by one executemany."""
    if not attempts:
        return []
    names = sorted({a.claimed.endpoint for a in attempts})
    health = {
        row.name: _Health(
            row.failing_since,
            row.consecutive_failures,
            row.disabled_at,
            row.disabled_reason,
            row.last_success_at,
        )
        for row in conn.execute(_ENDPOINTS_NAMED, {"names": names})
    }
    delivered: list[dict[str, Any]] = []
    recorded = [
        _record_one(conn, a, health.get(a.claimed.endpoint), policy, disable_after, delivered)
        for a in attempts
    ]
    if not delivered:
        return recorded
    changed = conn.execute(_DELIVERED, delivered).rowcount
    if changed != len(delivered) or not conn.dialect.supports_sane_multi_rowcount:
        # Some claims had been lost (a lease expired and another attempt took over): say which.
        attempt_of = {d["delivery_id"]: d["attempt"] for d in delivered}
        rows = conn.execute(
            select(D.c.id, D.c.status, D.c.attempts).where(D.c.id.in_(list(attempt_of)))
        )
        ours = {
            row.id
            for row in rows
            if row.status == Status.DELIVERED.value and row.attempts == attempt_of[row.id]
        }
        recorded = [
            replace(r, applied=a.claimed.id in ours) if a.delivered else r
            for a, r in zip(attempts, recorded, strict=True)
        ]
    return recorded


def _record_one(
    conn: Connection,
    attempted: Attempted,
    endpoint: _Health | None,
    policy: RetryPolicy,
    disable_after: timedelta,
    delivered: list[dict[str, Any]],
) -> Recorded:
    claimed, at = attempted.claimed, attempted.at
    fence = {"delivery_id": claimed.id, "attempt": claimed.attempt}
    if attempted.delivered:
        delivered.append({**fence, "at": at, "code": attempted.status})  # written by record()
        if endpoint is None:
            return Recorded(True, True, False, False, None)
        recovered = endpoint.failing_since is not None
        stale = (
            endpoint.last_success_at is None or at - endpoint.last_success_at >= SUCCESS_STAMP_EVERY
        )
        if recovered or stale:
            conn.execute(_ENDPOINT_OK, {"endpoint_name": claimed.endpoint, "at": at})
            endpoint.failing_since, endpoint.consecutive_failures = None, 0
            endpoint.last_success_at = at
        return Recorded(True, True, False, recovered, None)
    final = attempted.retry_at is None
    error = (attempted.error or "")[:MAX_ERROR]
    applied = conn.execute(
        _FAILED_ATTEMPT,
        {
            **fence,
            "new_status": (Status.FAILED if final else Status.PENDING).value,
            "retry_at": attempted.retry_at or at,
            "code": attempted.status,
            "error": error,
        },
    )
    if endpoint is None:
        return Recorded(applied.rowcount == 1, final, False, False, None)
    was_failing = endpoint.failing_since is not None
    since = endpoint.failing_since or at
    failures = endpoint.consecutive_failures + 1
    pause = attempted.retry_after
    if pause is None:
        pause = policy.endpoint_pause(failures, attempted.unit)
    disabled: str | None = None
    if endpoint.disabled_at is None:
        if attempted.gone:
            disabled = "the receiver answered 410 Gone"
        elif at - since > disable_after:
            disabled = f"failing since {rfc3339(since)}"
    if disabled:
        endpoint.disabled_at, endpoint.disabled_reason = at, disabled
    conn.execute(
        _ENDPOINT_FAILED,
        {
            "endpoint_name": claimed.endpoint,
            "since": since,
            "failures": failures,
            "pause_end": at + pause,
            "at": at,
            "error": error,
            "off_at": endpoint.disabled_at,
            "off_reason": endpoint.disabled_reason,
        },
    )
    endpoint.failing_since, endpoint.consecutive_failures = since, failures
    return Recorded(applied.rowcount == 1, final, not was_failing, False, disabled)


def release(conn: Connection, claims: Sequence[Claimed]) -> int:
    """Give back claims whose attempt was abandoned (an orderly stop): pending again, now."""
    released = 0
    for claimed in claims:
        params = {"delivery_id": claimed.id, "attempt": claimed.attempt}
        released += conn.execute(_RELEASE, params).rowcount
    return released


def disable_overdue(
    conn: Connection, names: Sequence[str], now: datetime, disable_after: timedelta
) -> list[str]:
    """Disable the endpoints failing for longer than `disable_after` (checked between
    attempts too: a resting endpoint may not be probed again for hours). Returns their names."""
    overdue = [
        (row.name, row.failing_since)
        for row in conn.execute(
            select(W.c.name, W.c.failing_since).where(
                W.c.name.in_(list(names)),
                W.c.disabled_at.is_(None),
                W.c.failing_since < now - disable_after,
            )
        )
    ]
    disabled = []
    for name, since in overdue:
        changed = conn.execute(
            update(W)
            .where(W.c.name == name, W.c.disabled_at.is_(None))
            .values(disabled_at=now, disabled_reason=f"failing since {rfc3339(since)}")
        ).rowcount
        if changed == 1:
            disabled.append(name)
    return disabled
