"""Retention: old resolved tickets go with everything that refers to them; old delivered
webhooks go; nothing unresolved, recent or undelivered is touched."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from tests.conftest import FakeClock, config_text
from tocsin.config import ConfigError, parse
from tocsin.db import retention, schema
from tocsin.db.engine import Database
from tocsin.delivery.outbox import ensure_endpoints
from tocsin.tickets.model import Actor, ActorType, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore

pytestmark = pytest.mark.engines

PERSON = Actor(ActorType.USER, "dana")


async def open_ticket(store: TicketStore, n: int) -> int:
    change = await store.open(
        OpenRequest(
            "acme",
            Source.WORKFLOW,
            Subject(SubjectType.DEVICE, f"d{n}", f"D{n}"),
            "door_ajar",
            "",
            Actor(ActorType.WORKFLOW, "wf"),
        )
    )
    return change.ticket.seq


async def count(database: Database, table: object) -> int:
    async with database.read.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_old_resolved_tickets_are_pruned_with_their_timeline_triggers_and_deliveries(
    store: TicketStore, database: Database, clock: FakeClock
) -> None:
    old = [await open_ticket(store, n) for n in range(3)]
    for seq in old:
        await store.resolve("acme", seq, PERSON)
    clock.advance(days=40)
    recent = await open_ticket(store, 10)
    await store.resolve("acme", recent, PERSON)
    still_open = await open_ticket(store, 11)

    def add_deliveries(conn: object) -> None:
        ensure_endpoints(conn, ["ops"], clock.now)  # type: ignore[arg-type]
        rows = conn.execute(select(schema.triggers)).all()  # type: ignore[attr-defined]
        conn.execute(  # type: ignore[attr-defined]
            insert(schema.deliveries),
            [
                {
                    "trigger_id": r.id,
                    "endpoint": "ops",
                    "org": r.org,
                    "ticket_id": r.ticket_id,
                    "type": r.type,
                    "msg_id": f"msg_{r.id}",
                    "status": "delivered",
                    "attempts": 1,
                    "created_at": r.created_at,
                    "next_attempt_at": r.created_at,
                    "delivered_at": r.created_at,
                }
                for r in rows
            ],
        )

    await store.writer.run(add_deliveries)
    cutoff = clock.now - timedelta(days=30)
    pruned = await store.writer.run(lambda conn: retention.prune_tickets(conn, cutoff, batch=2))
    pruned += await store.writer.run(lambda conn: retention.prune_tickets(conn, cutoff, batch=2))
    assert pruned.tickets == 3
    assert pruned.deliveries == 6  # each old ticket had an opened and a resolved trigger
    left = await store.list_tickets("acme")
    assert sorted(t.seq for t in left.tickets) == [recent, still_open]
    assert await count(database, schema.timeline_events) == 3  # recent: 2, still open: 1
    assert await count(database, schema.triggers) == 3
    assert await store.writer.run(lambda conn: retention.prune_tickets(conn, cutoff)) == (
        retention.Pruned()
    )


async def test_only_old_delivered_webhooks_are_pruned(
    store: TicketStore, database: Database, clock: FakeClock
) -> None:
    await open_ticket(store, 1)

    def add(conn: object) -> None:
        ensure_endpoints(conn, ["ops"], clock.now)  # type: ignore[arg-type]
        trigger = conn.execute(select(schema.triggers)).first()  # type: ignore[attr-defined]
        rows = []
        for n, (status, age) in enumerate(
            [("delivered", 40), ("delivered", 1), ("failed", 40), ("pending", 40)]
        ):
            at = clock.now - timedelta(days=age)
            rows.append(
                {
                    "trigger_id": trigger.id,
                    "endpoint": f"ops{n}" if n else "ops",
                    "org": "acme",
                    "ticket_id": trigger.ticket_id,
                    "type": trigger.type,
                    "msg_id": f"msg_{n}",
                    "status": status,
                    "attempts": 1,
                    "created_at": at,
                    "next_attempt_at": at,
                    "delivered_at": at if status == "delivered" else None,
                }
            )
        ensure_endpoints(conn, ["ops1", "ops2", "ops3"], clock.now)  # type: ignore[arg-type]
        conn.execute(insert(schema.deliveries), rows)  # type: ignore[attr-defined]

    await store.writer.run(add)
    cutoff = clock.now - timedelta(days=30)
    pruned = await store.writer.run(lambda conn: retention.prune_deliveries(conn, cutoff))
    assert pruned.deliveries == 1
    async with database.read.connect() as conn:
        left = sorted((await conn.execute(select(schema.deliveries.c.msg_id))).scalars())
    assert left == ["msg_1", "msg_2", "msg_3"]


def test_retention_shorter_than_the_reopen_window_is_refused(db_url: str) -> None:
    text = config_text(db_url, extra='[retention]\nresolved_tickets = "1h"\n')
    with pytest.raises(ConfigError, match="resolved_tickets must be at least"):
        parse(text)
    parse(config_text(db_url, extra='[retention]\nresolved_tickets = "30d"\n'))
