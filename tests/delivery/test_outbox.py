"""The outbox's SQL on a real SQLite file: idempotent fan-out, claims that only one taker wins,
fencing of a lost claim, and release at an orderly stop."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.conftest import FakeClock
from tests.delivery.conftest import Receiver, hook_toml, open_ticket, webhook_settings
from tocsin.delivery import ops, outbox, record
from tocsin.delivery.endpoints import endpoints_from
from tocsin.delivery.outbox import Claimed, Slots
from tocsin.delivery.record import Attempted
from tocsin.delivery.schedule import RetryPolicy
from tocsin.tickets.store import TicketStore

pytestmark = pytest.mark.engines

LEASE = timedelta(seconds=45)
POLICY = RetryPolicy((timedelta(seconds=5),), jitter=0.0)


async def prepared(db_url: str, store: TicketStore, clock: FakeClock, url: str) -> None:
    endpoints = endpoints_from(webhook_settings(db_url, hook_toml("ops", url)))
    now = clock.now
    await store.writer.run(lambda c: outbox.ensure_endpoints(c, ["ops"], now))
    await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))


async def claim_all(store: TicketStore, now: datetime) -> list[Claimed]:
    slots = {"ops": Slots(0, 16, LEASE)}
    return await store.writer.run(lambda c: outbox.claim(c, slots, 16, now))


async def test_fan_out_twice_writes_each_delivery_once(
    db_url: str, store: TicketStore, clock: FakeClock, receiver: Receiver
) -> None:
    await open_ticket(store)
    await prepared(db_url, store, clock, receiver.url)
    endpoints = endpoints_from(webhook_settings(db_url, hook_toml("ops", receiver.url)))
    now = clock.now
    again = await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))
    assert (again.triggers, again.deliveries) == (0, 0)
    # Even from a stale cursor, (trigger_id, endpoint) is unique: nothing is written twice.
    with store.database.write.begin() as conn:
        conn.execute(outbox.CURSORS.update().values(position=0))
        replay = outbox.fan_out(conn, endpoints, now)
        count = conn.execute(outbox.D.select()).all()
    assert replay.triggers == 1
    assert len(count) == 1


async def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_expires(
    db_url: str, store: TicketStore, clock: FakeClock, receiver: Receiver
) -> None:
    await open_ticket(store)
    await prepared(db_url, store, clock, receiver.url)
    [first] = await claim_all(store, clock.now)
    assert await claim_all(store, clock.now) == []
    assert await claim_all(store, clock.now + LEASE) == []
    [again] = await claim_all(store, clock.now + LEASE + timedelta(seconds=1))
    assert (again.id, again.msg_id, again.attempt) == (first.id, first.msg_id, 2)


async def test_the_outcome_of_a_lost_claim_does_not_overwrite_the_newer_attempt(
    db_url: str, store: TicketStore, clock: FakeClock, receiver: Receiver
) -> None:
    await open_ticket(store)
    await prepared(db_url, store, clock, receiver.url)
    [lost] = await claim_all(store, clock.now)
    later = clock.now + LEASE + timedelta(seconds=1)
    [taken] = await claim_all(store, later)

    old = Attempted(lost, later, 200)
    [recorded] = await store.writer.run(lambda c: record.record(c, [old], POLICY, LEASE))
    assert not recorded.applied
    new = Attempted(taken, later, 204)
    [recorded] = await store.writer.run(lambda c: record.record(c, [new], POLICY, LEASE))
    assert recorded.applied
    with store.database.write.connect() as conn:
        row = conn.execute(outbox.D.select()).one()
    assert (row.status, row.attempts, row.last_status) == ("delivered", 2, 204)


async def test_release_gives_an_abandoned_claim_back_without_spending_an_attempt(
    db_url: str, store: TicketStore, clock: FakeClock, receiver: Receiver
) -> None:
    await open_ticket(store)
    await prepared(db_url, store, clock, receiver.url)
    claims = await claim_all(store, clock.now)
    assert await store.writer.run(lambda c: record.release(c, claims)) == 1
    [again] = await claim_all(store, clock.now)
    assert again.attempt == 1


async def test_pending_count_counts_what_is_not_finished(
    db_url: str, store: TicketStore, clock: FakeClock, receiver: Receiver
) -> None:
    for n in range(3):
        await open_ticket(store, subject_id=f"d{n}")
    await prepared(db_url, store, clock, receiver.url)
    assert await ops.pending_count(store.database.read) == 3
    [first, *_] = await claim_all(store, clock.now)
    [recorded] = await store.writer.run(
        lambda c: record.record(c, [Attempted(first, clock.now, 200)], POLICY, LEASE)
    )
    assert recorded.applied
    assert await ops.pending_count(store.database.read) == 2
