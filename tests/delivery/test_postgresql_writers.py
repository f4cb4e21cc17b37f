"""Several writers on one PostgreSQL database, as several daemons on one store: trigger rows
that would commit out of id order, per-org sequence numbers, and two delivery workers sharing
one outbox. Each writer is a Database of its own (its own connections, its own writer thread),
as a second process would be."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from tests.conftest import FakeClock
from tests.delivery.conftest import MakeWorker, Receiver, hook_toml, open_ticket, webhook_settings
from tocsin.db import schema
from tocsin.db.engine import open_database
from tocsin.delivery import outbox
from tocsin.delivery.endpoints import delivery_settings, endpoints_from
from tocsin.delivery.worker import DeliveryWorker
from tocsin.tickets.model import Actor, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore
from tocsin.tickets.writes import open_ticket as open_ticket_op

pytestmark = pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)

Stores = Callable[[], TicketStore]


@pytest.fixture
async def more_stores(db_url: str, clock: FakeClock) -> AsyncIterator[Stores]:
    """More stores on the test's database, each with its own engines and writer thread."""
    made: list[TicketStore] = []

    def make() -> TicketStore:
        store = TicketStore(open_database(db_url), clock=clock)
        store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()
        await store.database.dispose()


def request(subject_id: str, org: str = "acme") -> OpenRequest:
    return OpenRequest(
        org=org,
        source=Source.HEALTH_MONITOR,
        subject=Subject(SubjectType.DEVICE, subject_id, subject_id),
        kind="device_offline",
        description=f"{subject_id} is down",
        actor=Actor.health_monitor(),
    )


async def test_a_trigger_that_commits_after_a_later_id_is_still_fanned_out(
    db_url: str, store: TicketStore, more_stores: Stores, clock: FakeClock, receiver: Receiver
) -> None:
    slow, fast = more_stores(), more_stores()
    endpoints = endpoints_from(webhook_settings(db_url, hook_toml("ops", receiver.url)))
    now = clock.now
    await store.writer.run(lambda c: outbox.ensure_endpoints(c, ["ops"], now))
    held, inside = threading.Event(), threading.Event()

    def open_and_wait(conn: Connection) -> Any:
        change = open_ticket_op(conn, request("slow"), now)  # its trigger row takes an id
        inside.set()
        held.wait(10)  # ... and commits only when the test says so
        return change

    slow_open = asyncio.create_task(slow.writer.run(open_and_wait))
    await asyncio.to_thread(inside.wait, 10)
    # A later id, in another org: the org's sequence row does not hold it back.
    fast_open = asyncio.create_task(fast.open(request("fast", org="beta")))
    await asyncio.sleep(0.3)  # time for the later one to commit first, were it not held
    fanned = await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))
    held.set()
    await asyncio.gather(slow_open, fast_open)
    fanned_after = await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))

    async with store.database.read.connect() as conn:
        triggers = (await conn.execute(select(schema.triggers.c.id))).scalars().all()
        delivered = (await conn.execute(select(schema.deliveries.c.trigger_id))).scalars().all()
    assert len(triggers) == 2
    assert sorted(delivered) == sorted(triggers), "a trigger was stepped over by the fan-out"
    assert fanned.triggers + fanned_after.triggers == 2


async def test_two_writers_take_each_org_s_numbers_without_gaps_or_repeats(
    more_stores: Stores, clock: FakeClock
) -> None:
    writers = [more_stores() for _ in range(3)]

    async def caller(store: TicketStore, n: int) -> list[int]:
        seqs = []
        for i in range(40):
            if i % 4 == 0:  # a batch, as the health monitor opens in a storm
                changes = await store.open_plain(
                    [(request(f"{n}-{i}-{j}"), clock.now) for j in range(5)]
                )
                seqs += [c.ticket.seq for c in changes]
            else:
                seqs.append((await store.open(request(f"{n}-{i}"))).ticket.seq)
        return seqs

    results = await asyncio.gather(*(caller(writers[n % 3], n) for n in range(12)))
    seqs = [seq for result in results for seq in result]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))


async def test_two_delivery_workers_on_one_outbox_send_each_webhook_once(
    db_url: str,
    store: TicketStore,
    more_stores: Stores,
    make_worker: MakeWorker,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    settings = webhook_settings(db_url, hook_toml("ops", receiver.url))
    for i in range(60):
        await open_ticket(store, subject_id=f"d{i}")
    first = make_worker(settings)
    second = DeliveryWorker(
        more_stores(), endpoints_from(settings), delivery_settings(settings), clock=clock
    )
    try:
        await asyncio.gather(first.pump(), second.pump())
        await first.pump()
    finally:
        await second.close()
    ids = [r.webhook_id for r in receiver.received]
    assert len(ids) == 60
    assert len(set(ids)) == 60, "a webhook was sent twice"
