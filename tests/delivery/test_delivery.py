"""Delivery end to end against real aiohttp receivers: signatures, fan-out, formats, order."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from standardwebhooks import Webhook

from tests.conftest import FakeClock
from tests.delivery.conftest import (
    OLD_SECRET,
    SECRET,
    MakeWorker,
    Receiver,
    Reply,
    hook_toml,
    open_ticket,
    webhook_settings,
)
from tocsin.db.engine import open_database
from tocsin.delivery.endpoints import delivery_settings, endpoints_from
from tocsin.delivery.worker import DeliveryWorker
from tocsin.tickets.model import Actor
from tocsin.tickets.store import TicketStore

pytestmark = pytest.mark.engines

ME = Actor.health_monitor()


async def test_a_delivery_verifies_with_the_standardwebhooks_library(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url)))
    seq = await open_ticket(store)

    assert await worker.pump() == 1

    [received] = receiver.received
    body = Webhook(SECRET).verify(received.body, received.headers)
    assert body["type"] == "ticket.opened"
    assert body["data"]["org"] == "acme"
    assert body["data"]["ticket"]["seq"] == seq
    assert body["data"]["ticket"]["url"] == f"http://tocsin.test/orgs/acme/tickets/{seq}"
    assert body["data"]["event"]["type"] == "opened"
    assert body["data"]["event"]["actor"] == {"type": "health_monitor", "name": "health monitor"}
    assert received.headers["content-type"] == "application/json"
    assert received.webhook_id.startswith("msg_")


async def test_during_a_rotation_both_secrets_verify(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    hook = hook_toml("ops", receiver.url, previous_secret_env='"OLD_HOOK_SECRET"')
    worker = make_worker(webhook_settings(db_url, hook))
    await open_ticket(store)
    await worker.pump()

    [received] = receiver.received
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(received.body, received.headers)["type"] == "ticket.opened"
    assert Webhook(OLD_SECRET).verify(received.body, received.headers)["type"] == "ticket.opened"


async def test_each_subscribed_endpoint_gets_its_own_delivery_and_webhook_id(
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    other_receiver: Receiver,
    make_worker: MakeWorker,
) -> None:
    settings = webhook_settings(
        db_url,
        hook_toml("all", receiver.url),
        hook_toml(
            "beta-resolved", other_receiver.url, orgs='["beta"]', triggers='["ticket.resolved"]'
        ),
    )
    worker = make_worker(settings)
    acme = await open_ticket(store, "acme")
    beta = await open_ticket(store, "beta")
    await store.resolve("beta", beta, ME, "fixed")
    await store.comment("acme", acme, ME, "looking")
    await worker.pump()

    assert sorted((b["data"]["org"], b["type"]) for b in receiver.bodies()) == [
        ("acme", "ticket.comment_added"),
        ("acme", "ticket.opened"),
        ("beta", "ticket.opened"),
        ("beta", "ticket.resolved"),
    ]
    assert [(b["data"]["org"], b["type"]) for b in other_receiver.bodies()] == [
        ("beta", "ticket.resolved")
    ]
    ids = [r.webhook_id for r in receiver.received + other_receiver.received]
    assert len(set(ids)) == len(ids)


async def test_a_description_edit_fires_nothing(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url)))
    seq = await open_ticket(store)
    await store.edit_description("acme", seq, ME, "new text")
    await worker.pump()
    assert [b["type"] for b in receiver.bodies()] == ["ticket.opened"]


async def test_the_slack_format_is_a_text_field_with_the_link_and_escaped_markup(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    worker = make_worker(
        webhook_settings(db_url, hook_toml("chat", receiver.url, format='"slack"'))
    )
    seq = await open_ticket(store)
    await store.comment("acme", seq, ME, "ping <!channel> & co")
    await worker.pump()

    opened, commented = receiver.bodies()
    assert set(opened) == {"text"}
    assert f"#{seq} opened by health monitor: door_ajar - Device d1" in opened["text"]
    assert opened["text"].endswith(f"http://tocsin.test/orgs/acme/tickets/{seq}")
    assert "&lt;!channel&gt; &amp; co" in commented["text"]
    assert "<!channel>" not in commented["text"]
    assert Webhook(SECRET).verify(receiver.received[0].body, receiver.received[0].headers)


async def test_the_teams_format_is_an_adaptive_card(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    worker = make_worker(
        webhook_settings(db_url, hook_toml("teams", receiver.url, format='"teams"'))
    )
    await open_ticket(store)
    await worker.pump()
    [body] = receiver.bodies()
    card = body["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert "door_ajar" in card["content"]["body"][0]["text"]


async def test_extra_headers_are_sent(
    db_url: str, store: TicketStore, receiver: Receiver, make_worker: MakeWorker
) -> None:
    hook = hook_toml("ops", receiver.url, headers='{ "X-Tenant" = "site-7" }')
    worker = make_worker(webhook_settings(db_url, hook))
    await open_ticket(store)
    await worker.pump()
    assert receiver.received[0].headers["x-tenant"] == "site-7"


async def test_a_ticket_s_events_reach_an_endpoint_in_order_even_when_one_is_retried(
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    make_worker: MakeWorker,
    clock: FakeClock,
) -> None:
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url)))
    first = await open_ticket(store, subject_id="d1")
    second = await open_ticket(store, subject_id="d2")
    for n in range(3):
        await store.comment("acme", first, ME, f"note {n}")
        await store.comment("acme", second, ME, f"note {n}")
    await store.resolve("acme", first, ME)
    await store.resolve("acme", second, ME)
    receiver.replies = [Reply(500)]  # the first attempt (ticket 1's Opened) fails

    await worker.pump()
    # Ticket 2 went through; ticket 1 waits behind its Opened, due again in 5 s.
    assert [b["data"]["ticket"]["seq"] for b in receiver.bodies()[1:]] == [second] * 5
    clock.advance(seconds=5)
    await worker.pump()

    def events(seq: int) -> list[str]:
        return [b["type"] for b in receiver.bodies() if b["data"]["ticket"]["seq"] == seq]

    expected = ["ticket.opened"] + ["ticket.comment_added"] * 3 + ["ticket.resolved"]
    assert events(second) == expected
    assert events(first) == ["ticket.opened", *expected]  # the failed attempt, then in order


async def test_a_hanging_receiver_does_not_hold_up_another_endpoint(
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    other_receiver: Receiver,
    make_worker: MakeWorker,
) -> None:
    settings = webhook_settings(
        db_url, hook_toml("stuck", receiver.url), hook_toml("fine", other_receiver.url)
    )
    receiver.default = Reply(hang=True)
    worker = make_worker(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    for n in range(20):
        await open_ticket(store, subject_id=f"d{n}")
    await other_receiver.wait_for(20)
    assert len(other_receiver.received) == 20
    assert 1 <= len(receiver.received) <= 16  # its own slots, all hanging
    receiver.release.set()
    await receiver.wait_for(20)
    stop.set()
    await asyncio.wait_for(running, 10)


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_two_daemons_on_one_database_never_send_one_delivery_twice(
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    make_worker: MakeWorker,
    clock: FakeClock,
    concurrency: int,
) -> None:
    """Two stores on one SQLite file: two writers, two transactions racing for each claim."""
    delivery = f"[webhook_delivery]\njitter = 0.0\nper_endpoint_concurrency = {concurrency}\n"
    settings = webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=delivery)
    second_db = open_database(db_url)
    second_store = TicketStore(second_db, clock=clock)
    second_store.start()
    try:
        one = make_worker(settings)
        two = DeliveryWorker(
            second_store,
            endpoints_from(settings),
            delivery_settings(settings),
            clock=clock,
            rand=lambda: 0.5,
        )
        for n in range(60):
            await open_ticket(store, subject_id=f"d{n}")
        await asyncio.gather(one.pump(), two.pump(), one.pump(), two.pump())
        await two.close()
    finally:
        await second_store.close()
        await second_db.dispose()
    ids = [r.webhook_id for r in receiver.received]
    assert len(ids) == 60
    assert len(set(ids)) == 60
    assert one.stats.delivered + two.stats.delivered == 60  # and each counted its own


async def test_outcomes_are_logged_without_url_secret_or_signature(
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    make_worker: MakeWorker,
) -> None:
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url)))
    seq = await open_ticket(store)
    receiver.replies = [Reply(500)]
    with structlog.testing.capture_logs() as logs:
        await worker.pump()
    failed = next(e for e in logs if e["event"] == "webhook attempt failed")
    assert {k: failed[k] for k in ("endpoint", "trigger", "ticket_seq", "status", "attempt")} == {
        "endpoint": "ops",
        "trigger": "ticket.opened",
        "ticket_seq": seq,
        "status": 500,
        "attempt": 1,
    }
    assert isinstance(failed["latency_ms"], float)
    assert failed["error"] == "HTTP 500"
    text = repr(logs)
    signature = receiver.received[0].headers["webhook-signature"]
    assert signature.split(",")[1] not in text
    assert SECRET not in text
    assert "/hook" not in text  # the URL's path (a chat webhook's secret) is never logged
