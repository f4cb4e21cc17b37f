"""Retries on the fake clock: the schedule on 500, timeouts and refused connections, Retry-After,
410 Gone, redirects, leases of crashed senders, failing endpoints' tickets and disabling."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from tests.conftest import FakeClock
from tests.delivery.conftest import (
    MakeWorker,
    Receiver,
    Reply,
    hook_toml,
    open_ticket,
    webhook_settings,
)
from tocsin.delivery import ops, outbox
from tocsin.delivery.endpoints import endpoints_from
from tocsin.delivery.outbox import Slots
from tocsin.tickets.model import Kind, State
from tocsin.tickets.store import TicketFilter, TicketStore

pytestmark = pytest.mark.engines

SCHEDULE = [
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
]
NO_TICKETS = '[webhook_delivery]\njitter = 0.0\nticket_after = "30d"\ndisable_after = "60d"\n'


async def deliveries(store: TicketStore, status: str | None = None) -> list[ops.DeliveryView]:
    rows, _ = await ops.list_deliveries(
        store.database.read, statuses=[status] if status else [], limit=200
    )
    return rows


async def endpoint(store: TicketStore, name: str = "ops") -> ops.EndpointHealth:
    [health] = await ops.endpoint_health(store.database.read, [name])
    return health


async def failing_tickets(store: TicketStore) -> list[tuple[int, State]]:
    page = await store.list_tickets("acme", TicketFilter(kind=Kind.WEBHOOK_ENDPOINT_FAILING.value))
    return [(t.seq, t.state) for t in page.tickets]


async def walk_the_schedule(pump: Callable[[], Awaitable[int]], clock: FakeClock) -> None:
    """Each retry comes exactly when the schedule says, not a second before."""
    assert await pump() == 1
    for n, delay in enumerate(SCHEDULE, start=2):
        clock.advance(seconds=delay.total_seconds() - 1)
        assert await pump() == 0, f"attempt {n} came early"
        clock.advance(seconds=1)
        assert await pump() == 1, f"attempt {n} did not come"
    clock.advance(days=3)
    assert await pump() == 0


async def test_a_500_is_retried_on_the_schedule_then_the_delivery_fails(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.default = Reply(500)
    worker = make_worker(
        webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=NO_TICKETS)
    )
    await open_ticket(store)

    await walk_the_schedule(worker.pump, clock)

    assert len(receiver.received) == 8
    assert len({r.webhook_id for r in receiver.received}) == 1  # the same webhook-id each time
    assert len({r.headers["webhook-timestamp"] for r in receiver.received}) == 8  # signed afresh
    [failed] = await deliveries(store, "failed")
    assert (failed.attempts, failed.last_status, failed.last_error) == (8, 500, "HTTP 500")


async def test_a_timeout_is_retried_like_a_500(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.default = Reply(hang=True)
    hook = hook_toml("ops", receiver.url, timeout='"200ms"')
    worker = make_worker(webhook_settings(db_url, hook, delivery=NO_TICKETS))
    await open_ticket(store)

    assert await worker.pump() == 1
    [row] = await deliveries(store)
    assert (row.status, row.last_error, row.last_status) == (
        "pending",
        "no answer within 0.2s",
        None,
    )
    assert row.next_attempt_at == clock.now + timedelta(seconds=5)
    clock.advance(seconds=5)
    receiver.default = Reply(204)
    assert await worker.pump() == 1
    [row] = await deliveries(store)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 2, 204)


async def test_a_refused_connection_is_retried_on_the_schedule(
    db_url: str, store: TicketStore, make_worker: MakeWorker, clock: FakeClock
) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = hook_toml("ops", f"http://127.0.0.1:{port}/hook")
    worker = make_worker(webhook_settings(db_url, hook, delivery=NO_TICKETS))
    await open_ticket(store)

    assert await worker.pump() == 1
    for n, delay in enumerate(SCHEDULE, start=2):
        clock.advance(seconds=delay.total_seconds())
        assert await worker.pump() == 1, f"attempt {n}"
    [row] = await deliveries(store)
    assert (row.status, row.attempts) == ("failed", 8)
    assert row.last_error is not None
    assert row.last_error.startswith("cannot connect")
    assert str(port) not in row.last_error  # no URL in messages (chat webhook URLs are secrets)


async def test_429_with_retry_after_waits_as_asked(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.replies = [Reply(429, {"Retry-After": "120"})]
    worker = make_worker(
        webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=NO_TICKETS)
    )
    await open_ticket(store)

    assert await worker.pump() == 1
    clock.advance(seconds=5)  # the schedule's first delay is not enough
    assert await worker.pump() == 0
    clock.advance(seconds=114)
    assert await worker.pump() == 0
    clock.advance(seconds=1)
    assert await worker.pump() == 1
    assert (await deliveries(store))[0].status == "delivered"


async def test_503_with_an_http_date_retry_after_waits_as_asked(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    later = clock.now + timedelta(minutes=10)
    stamp = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    receiver.replies = [Reply(503, {"Retry-After": stamp})]
    worker = make_worker(
        webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=NO_TICKETS)
    )
    await open_ticket(store)

    assert await worker.pump() == 1
    clock.advance(minutes=9, seconds=59)
    assert await worker.pump() == 0
    clock.advance(seconds=1)
    assert await worker.pump() == 1


async def test_410_gone_fails_the_delivery_disables_the_endpoint_and_keeps_its_backlog(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.replies = [Reply(410)]
    hook = hook_toml("ops", receiver.url, orgs='["acme"]')
    worker = make_worker(webhook_settings(db_url, hook))
    await open_ticket(store, subject_id="d1")

    assert await worker.pump() == 1
    health = await endpoint(store)
    assert health.state == "disabled"
    assert health.disabled_reason == "the receiver answered 410 Gone"
    # Disabled: a ticket at once (not after ticket_after), and the backlog waits.
    [(seq, state)] = await failing_tickets(store)
    assert state is State.OPEN
    await open_ticket(store, subject_id="d2")
    clock.advance(days=1)
    assert await worker.pump() == 0
    statuses = sorted(d.status for d in await deliveries(store))
    assert statuses == ["failed", "pending", "pending"]  # d1 failed; d2 and the ticket wait

    assert await store.writer.run(lambda c: ops.enable(c, "ops", clock.now))
    assert await worker.pump() == 3  # the backlog, then the ticket's Resolved trigger
    assert await failing_tickets(store) == [(seq, State.RESOLVED)]
    assert [b["type"] for b in receiver.bodies()] == [
        "ticket.opened",  # d1: 410
        "ticket.opened",  # d2
        "ticket.opened",  # the failing-endpoint ticket
        "ticket.resolved",
    ]
    statuses = sorted(d.status for d in await deliveries(store))
    assert statuses == ["delivered", "delivered", "delivered", "failed"]


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    receiver.default = Reply(307, {"Location": "/elsewhere"})
    worker = make_worker(
        webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=NO_TICKETS)
    )
    await open_ticket(store)
    assert await worker.pump() == 1
    [row] = await deliveries(store)
    assert (row.status, row.last_status) == ("pending", 307)
    assert row.last_error == "HTTP 307: redirects are not followed"
    assert len(receiver.received) == 1  # /elsewhere (this receiver too) was never asked


async def test_a_crashed_sender_s_claim_is_resent_with_the_same_webhook_id_after_its_lease(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    settings = webhook_settings(db_url, hook_toml("ops", receiver.url, timeout='"15s"'))
    worker = make_worker(settings)
    await open_ticket(store)
    # A sender that claims and dies before recording anything.
    endpoints = endpoints_from(settings)
    now = clock.now
    slots = {"ops": Slots(0, 16, timedelta(seconds=45))}
    await store.writer.run(lambda c: outbox.ensure_endpoints(c, ["ops"], now))
    await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))
    [lost] = await store.writer.run(lambda c: outbox.claim(c, slots, 16, now))

    clock.advance(seconds=44)
    assert await worker.pump() == 0  # still leased
    clock.advance(seconds=2)
    assert await worker.pump() == 1
    [received] = receiver.received
    assert received.webhook_id == lost.msg_id
    [row] = await deliveries(store)
    assert (row.status, row.attempts) == ("delivered", 2)


async def test_a_failing_endpoint_gets_a_ticket_that_resolves_when_it_recovers(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.default = Reply(500)
    hook = hook_toml("ops", receiver.url, orgs='["acme"]')
    worker = make_worker(webhook_settings(db_url, hook))  # ticket_after 10m
    await open_ticket(store)
    await worker.pump()
    clock.advance(seconds=5)
    await worker.pump()
    clock.advance(minutes=5)
    await worker.pump()
    assert await failing_tickets(store) == []  # failing for 5m05s: not yet
    clock.advance(minutes=5)
    await worker.sweep()
    [(seq, state)] = await failing_tickets(store)
    assert state is State.OPEN
    ticket, _ = await store.get("acme", seq)
    assert ticket.subject.id == "ops"
    assert ticket.subject.type.value == "integration"
    assert ticket.source.value == "health_monitor"
    assert "HTTP 500" in ticket.description

    receiver.default = Reply(200)
    clock.advance(minutes=30)
    await worker.pump()
    assert await failing_tickets(store) == [(seq, State.RESOLVED)]
    assert (await endpoint(store)).state == "ok"
    types = [b["type"] for b in receiver.bodies()]
    assert types[-3:] == ["ticket.opened", "ticket.opened", "ticket.resolved"]


async def test_an_endpoint_failing_longer_than_disable_after_is_disabled(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.default = Reply(500)
    delivery = '[webhook_delivery]\njitter = 0.0\nticket_after = "10m"\ndisable_after = "2h"\n'
    worker = make_worker(
        webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=delivery)
    )
    await open_ticket(store)
    for delay in [0, *(d.total_seconds() for d in SCHEDULE[:4])]:
        clock.advance(seconds=delay)
        await worker.pump()
    health = await endpoint(store)
    assert health.state == "disabled"
    assert health.disabled_reason is not None
    assert health.disabled_reason.startswith("failing since")
    [(seq, state)] = await failing_tickets(store)
    ticket, _ = await store.get("acme", seq)
    assert state is State.OPEN
    assert "is disabled" not in ticket.description  # it opened before, at 10 minutes
    clock.advance(days=2)
    assert await worker.pump() == 0
    assert {d.status for d in await deliveries(store)} == {"pending"}  # the backlog is kept


async def test_an_endpoint_resting_between_probes_is_disabled_on_time(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker, clock: FakeClock
) -> None:
    receiver.default = Reply(500)
    delivery = '[webhook_delivery]\njitter = 0.0\nticket_after = "10m"\ndisable_after = "1h"\n'
    hook = hook_toml("ops", receiver.url, orgs='["acme"]')
    worker = make_worker(webhook_settings(db_url, hook, delivery=delivery))
    await open_ticket(store)
    for delay in [0, *(d.total_seconds() for d in SCHEDULE[:3])]:
        clock.advance(seconds=delay)
        await worker.pump()
    assert (await endpoint(store)).state == "failing"  # 35 minutes; next probe at 2h35m
    clock.advance(minutes=26)
    assert await worker.pump() == 0
    health = await endpoint(store)
    assert health.state == "disabled"
    [(seq, _)] = await failing_tickets(store)
    _, timeline = await store.get("acme", seq)
    assert "is disabled" in timeline[-1].payload["body"]


async def test_an_orderly_stop_gives_back_attempts_still_in_flight(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    receiver.default = Reply(hang=True)
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url)), stop_grace=0.1)
    await open_ticket(store)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await receiver.wait_for(1)
    stop.set()
    await asyncio.wait_for(running, 5)
    [row] = await deliveries(store)
    assert (row.status, row.attempts) == ("pending", 0)
