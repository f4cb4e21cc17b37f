"""Recording attempts: each outcome, fenced by the attempt number its claim gave (a claim
that was lost to an expired lease changes nothing), and the endpoint's health: failing since,
failures in a row, the backoff pause, disabled (410 Gone, or failing longer than
disable_after). Operations of a synchronous Connection, run in the store's writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Connection

from tocsin.db.bulk import Bulk
from tocsin.delivery.outbox import Claimed, D, Status, W
from tocsin.delivery.schedule import RetryPolicy
from tocsin.tickets.model import rfc3339

MAX_ERROR = 500

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
_DELIVERED_MANY = Bulk(_DELIVERED)
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
    changed = _DELIVERED_MANY.run(conn, delivered)
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
