"""What operators see and do: endpoint health, the deliveries list, redeliver, enable.

Reads run on the store's async read engine; the two writes are operations for the store's
writer (`store.writer.run(lambda conn: redeliver(conn, ...))`), like every other write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tocsin.db import schema
from tocsin.delivery.outbox import Status, ensure_endpoints
from tocsin.tickets.model import Kind, SubjectType, rfc3339

D = schema.deliveries
W = schema.webhook_endpoints
T = schema.tickets


class WebhookOpsError(Exception):
    """An operator's request cannot be done; the message says why."""


class DeliveryNotFound(WebhookOpsError):
    def __init__(self, delivery_id: int) -> None:
        super().__init__(f"no delivery {delivery_id}")


class DeliveryInFlight(WebhookOpsError):
    def __init__(self, delivery_id: int) -> None:
        super().__init__(f"delivery {delivery_id} is being attempted right now; try again shortly")


@dataclass(frozen=True)
class EndpointHealth:
    name: str
    failing_since: datetime | None = None
    consecutive_failures: int = 0
    paused_until: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """disabled | failing | ok | new (never attempted)."""
        if self.disabled_at is not None:
            return "disabled"
        if self.failing_since is not None:
            return "failing"
        return "ok" if self.last_success_at is not None else "new"

    def to_json(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return rfc3339(moment) if moment else None

        return {
            "name": self.name,
            "state": self.state,
            "failing_since": when(self.failing_since),
            "consecutive_failures": self.consecutive_failures,
            "paused_until": when(self.paused_until),
            "disabled_at": when(self.disabled_at),
            "disabled_reason": self.disabled_reason,
            "last_success_at": when(self.last_success_at),
            "last_failure_at": when(self.last_failure_at),
            "last_error": self.last_error,
            "deliveries": {s.value: self.counts.get(s.value, 0) for s in Status},
        }


@dataclass(frozen=True)
class DeliveryView:
    id: int
    endpoint: str
    org: str
    type: str
    ticket_seq: int
    msg_id: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return rfc3339(moment) if moment else None

        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "org": self.org,
            "type": self.type,
            "ticket_seq": self.ticket_seq,
            "webhook_id": self.msg_id,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": rfc3339(self.created_at),
            "next_attempt_at": when(self.next_attempt_at)
            if self.status == Status.PENDING.value
            else None,
            "last_attempt_at": when(self.last_attempt_at),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "delivered_at": when(self.delivered_at),
        }


_VIEW = select(
    D.c.id,
    D.c.endpoint,
    D.c.org,
    D.c.type,
    T.c.seq,
    D.c.msg_id,
    D.c.status,
    D.c.attempts,
    D.c.created_at,
    D.c.next_attempt_at,
    D.c.last_attempt_at,
    D.c.last_status,
    D.c.last_error,
    D.c.delivered_at,
).join(T, T.c.id == D.c.ticket_id)


def _view(row: Any) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        endpoint=row.endpoint,
        org=row.org,
        type=row.type,
        ticket_seq=row.seq,
        msg_id=row.msg_id,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
    )


async def endpoint_health(
    engine: AsyncEngine, names: Sequence[str], *, with_counts: bool = True
) -> list[EndpointHealth]:
    """Each named endpoint's health (config order) and, `with_counts`, its deliveries counted
    by status (that reads every delivery of the endpoint: for operators, not for loops)."""
    counts: dict[str, dict[str, int]] = {}
    async with engine.connect() as conn:
        rows = {r.name: r for r in await conn.execute(select(W).where(W.c.name.in_(names)))}
        if with_counts:
            counted = await conn.execute(
                select(D.c.endpoint, D.c.status, func.count())
                .where(D.c.endpoint.in_(names))
                .group_by(D.c.endpoint, D.c.status)
            )
            for endpoint, status, count in counted:
                counts.setdefault(endpoint, {})[status] = int(count)
    result = []
    for name in names:
        row = rows.get(name)
        if row is None:
            result.append(EndpointHealth(name, counts=counts.get(name, {})))
            continue
        result.append(
            EndpointHealth(
                name=name,
                failing_since=row.failing_since,
                consecutive_failures=row.consecutive_failures,
                paused_until=row.paused_until,
                disabled_at=row.disabled_at,
                disabled_reason=row.disabled_reason,
                last_success_at=row.last_success_at,
                last_failure_at=row.last_failure_at,
                last_error=row.last_error,
                counts=counts.get(name, {}),
            )
        )
    return result


async def pending_count(engine: AsyncEngine) -> int:
    """Deliveries not finished yet (pending or being attempted), across all endpoints; found
    through the (endpoint, status, id) index, however many delivered rows the table keeps."""
    statement = (
        select(func.count())
        .select_from(D)
        .where(
            D.c.endpoint.in_(select(W.c.name)),
            D.c.status.in_([Status.PENDING.value, Status.DELIVERING.value]),
        )
    )
    async with engine.connect() as conn:
        return int((await conn.execute(statement)).scalar_one())


async def list_deliveries(
    engine: AsyncEngine,
    *,
    org: str | None = None,
    endpoint: str | None = None,
    statuses: Sequence[str] = (),
    limit: int = 50,
    before: int | None = None,
) -> tuple[list[DeliveryView], int | None]:
    """Deliveries newest first; the second value continues the listing (`before`)."""
    conditions = []
    if org is not None:
        conditions.append(D.c.org == org)
    if endpoint is not None:
        conditions.append(D.c.endpoint == endpoint)
    if statuses:
        conditions.append(D.c.status.in_(list(statuses)))
    if before is not None:
        conditions.append(D.c.id < before)
    statement = _VIEW.where(and_(True, *conditions)).order_by(D.c.id.desc()).limit(limit + 1)
    async with engine.connect() as conn:
        rows = [_view(r) for r in await conn.execute(statement)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


async def get_delivery(engine: AsyncEngine, delivery_id: int) -> DeliveryView | None:
    async with engine.connect() as conn:
        row = (await conn.execute(_VIEW.where(D.c.id == delivery_id))).first()
    return _view(row) if row is not None else None


# -- writes (run them through the store's writer) -------------------------------------------


def redeliver(conn: Connection, delivery_id: int, now: datetime, org: str | None = None) -> int:
    """Send delivery `delivery_id` again, now, with its webhook-id and a fresh retry schedule.

    A pending delivery is moved up to now; one being attempted is refused (DeliveryInFlight).
    The endpoint's backoff pause is lifted, so a fixed receiver hears at once; a disabled
    endpoint keeps the delivery pending until it is enabled. Returns the delivery's id.
    """
    scope = [D.c.id == delivery_id]
    if org is not None:
        scope.append(D.c.org == org)
    found = conn.execute(select(D.c.status, D.c.endpoint).where(*scope)).first()
    if found is None:
        raise DeliveryNotFound(delivery_id)
    changed = conn.execute(
        update(D)
        .where(*scope, D.c.status != Status.DELIVERING.value)
        .values(
            status=Status.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            claimed_until=None,
            delivered_at=None,
        )
    ).rowcount
    if changed != 1:
        raise DeliveryInFlight(delivery_id)
    conn.execute(update(W).where(W.c.name == found.endpoint).values(paused_until=None))
    return delivery_id


def enable(conn: Connection, name: str, now: datetime) -> bool:
    """Enable endpoint `name` again (its kept backlog is then delivered); False if it was not
    disabled. Its health stays `failing` until a delivery succeeds."""
    ensure_endpoints(conn, [name], now)
    changed = conn.execute(
        update(W)
        .where(W.c.name == name, W.c.disabled_at.is_not(None))
        .values(disabled_at=None, disabled_reason=None, paused_until=None)
    ).rowcount
    return changed == 1


# -- the failing-endpoint tickets -------------------------------------------------------------


@dataclass(frozen=True)
class TicketMark:
    """The newest webhook_endpoint_failing ticket of one endpoint in one org."""

    org: str
    seq: int
    state: str
    resolved_at: datetime | None


async def failing_tickets(
    engine: AsyncEngine, orgs: Sequence[str], names: Sequence[str]
) -> dict[tuple[str, str], TicketMark]:
    """(org, endpoint name) -> its newest webhook_endpoint_failing ticket (found through the
    tickets' (org, subject_type, subject_id) index, however many tickets there are)."""
    statement = (
        select(T.c.org, T.c.subject_id, T.c.seq, T.c.state, T.c.resolved_at)
        .where(
            T.c.org.in_(list(orgs)),
            T.c.subject_type == SubjectType.INTEGRATION.value,
            T.c.subject_id.in_(list(names)),
            T.c.kind == Kind.WEBHOOK_ENDPOINT_FAILING.value,
        )
        .order_by(T.c.seq)
    )
    marks: dict[tuple[str, str], TicketMark] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(statement):
            marks[(row.org, row.subject_id)] = TicketMark(
                row.org, row.seq, row.state, row.resolved_at
            )
    return marks
