"""The worker looks at the outbox as soon as a write that fires triggers has committed, not at
its next poll."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import structlog.testing

from tests.delivery.conftest import DELIVERY_TOML, MakeWorker, Receiver, hook_toml, open_ticket
from tests.delivery.conftest import webhook_settings as settings_with
from tocsin.delivery.worker import DeliveryWorker
from tocsin.tickets.model import Actor, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore

pytestmark = pytest.mark.engines

SLOW_POLL = DELIVERY_TOML + 'poll_interval = "1m"\n'  # a poll alone would wait a minute
ME = Actor.health_monitor()


@contextlib.asynccontextmanager
async def running(worker: DeliveryWorker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_writes_that_fire_triggers_tell_their_listeners_once_committed(
    store: TicketStore,
) -> None:
    calls: list[int] = []
    stop = store.on_triggers(lambda: calls.append(len(calls)))
    seq = await open_ticket(store)
    assert calls == [0]
    await store.comment("acme", seq, ME, "on site")
    await store.start_work("acme", seq, ME)
    assert len(calls) == 3
    await store.edit_description("acme", seq, ME, "fixed text")  # fires no webhook
    assert len(calls) == 3
    request = OpenRequest(
        "acme", Source.HEALTH_MONITOR, Subject(SubjectType.DEVICE, "d9", "D9"), "device_offline",
        "down", ME,
    )  # fmt: skip
    await store.open_plain([(request, datetime.now(UTC))])
    assert len(calls) == 4
    stop()
    await store.resolve("acme", seq, ME)
    assert len(calls) == 4  # no longer listening


async def test_a_listener_that_fails_does_not_fail_the_committed_write(
    store: TicketStore,
) -> None:
    def broken() -> None:
        raise RuntimeError("a listener's bug")

    store.on_triggers(broken)
    with structlog.testing.capture_logs() as logs:
        seq = await open_ticket(store)
    ticket, _ = await store.get("acme", seq)
    assert ticket.seq == seq
    assert [entry["event"] for entry in logs] == ["trigger listener failed"]


async def test_a_new_trigger_is_sent_at_once_not_at_the_next_poll(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    worker = make_worker(settings_with(db_url, hook_toml("ops", receiver.url), delivery=SLOW_POLL))
    await open_ticket(store, subject_id="d1")
    async with running(worker):
        await receiver.wait_for(1)  # its first look at the outbox, at the start
        await asyncio.sleep(0.5)  # the outcome recorded: now it waits for its poll (a minute)
        await open_ticket(store, subject_id="d2")
        await receiver.wait_for(2, seconds=5)
