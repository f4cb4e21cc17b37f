"""Operating webhooks: the CLI (list, deliveries, redeliver, enable, test) and the API
(deliveries list and redeliver, write scope only, answers matching the documented models)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner, Result
from standardwebhooks import Webhook

from tests.conftest import Api, FakeClock, config_text, token_value
from tests.delivery.conftest import (
    DELIVERY_TOML,
    ENV,
    SECRET,
    MakeWorker,
    Receiver,
    Reply,
    hook_toml,
    open_ticket,
    webhook_settings,
)
from tocsin.api.app import make_app
from tocsin.api.webhooks import DeliveryListOut, DeliveryOut
from tocsin.cli import main
from tocsin.config import Settings
from tocsin.delivery import outbox
from tocsin.delivery.endpoints import endpoints_from
from tocsin.delivery.outbox import Slots
from tocsin.tickets.store import TicketStore

pytestmark = pytest.mark.engines

ONE_TRY = '[webhook_delivery]\njitter = 0.0\nschedule = []\nticket_after = "30d"\n'
DELIVERIES = "/api/v1/orgs/acme/webhooks/deliveries"


def error_code(body: dict[str, Any]) -> str:
    return str(body["error"]["code"])


async def cli(*args: str) -> Result:
    """The CLI in a thread: it runs its own event loop, the receivers run in the test's."""
    env: dict[str, str | None] = {"TOCSIN_CONFIG": None, **ENV}
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def config_file(tmp_path: Path, settings_text: str) -> str:
    path = tmp_path / "tocsin.toml"
    path.write_text(settings_text, encoding="utf-8")
    return str(path)


@pytest.fixture
def one_try_text(db_url: str, receiver: Receiver) -> str:
    return config_text(db_url, extra=hook_toml("ops", receiver.url) + ONE_TRY)


async def test_the_cli_lists_a_failed_delivery_redelivers_it_and_shows_it_delivered(
    tmp_path: Path,
    one_try_text: str,
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    make_worker: MakeWorker,
    clock: FakeClock,
) -> None:
    config = config_file(tmp_path, one_try_text)
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=ONE_TRY))
    receiver.replies = [Reply(500)]
    await open_ticket(store)
    await worker.pump()

    [failed] = json.loads(
        ok(await cli("webhooks", "deliveries", "--config", config, "--failed", "--json")).stdout
    )
    assert (failed["status"], failed["attempts"], failed["last_status"]) == ("failed", 1, 500)
    [health] = json.loads(ok(await cli("webhooks", "list", "--config", config, "--json")).stdout)
    assert health["state"] == "failing"
    assert health["deliveries"]["failed"] == 1
    table = ok(await cli("webhooks", "list", "--config", config)).stdout
    assert "ops" in table
    assert "failing" in table

    said = ok(await cli("webhooks", "redeliver", str(failed["id"]), "--config", config)).stdout
    assert f"delivery {failed['id']} will be sent again" in said
    clock.advance(minutes=1)  # the CLI stamps real time; the worker's clock started earlier
    assert await worker.pump() == 1
    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == failed["webhook_id"]
    [row] = json.loads(ok(await cli("webhooks", "deliveries", "--config", config, "--json")).stdout)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert "delivered" in ok(await cli("webhooks", "deliveries", "--config", config)).stdout

    missing = await cli("webhooks", "redeliver", "999", "--config", config)
    assert missing.exit_code == 2
    assert "no delivery 999" in missing.stderr


async def test_webhooks_test_sends_a_signed_ping_and_fails_on_an_error_answer(
    tmp_path: Path, one_try_text: str, receiver: Receiver
) -> None:
    config = config_file(tmp_path, one_try_text)
    said = ok(await cli("webhooks", "test", "ops", "--config", config)).stdout
    assert "webhook ops: HTTP 200" in said
    [ping] = receiver.received
    assert Webhook(SECRET).verify(ping.body, ping.headers) == {
        "type": "webhook.test",
        "timestamp": ping.json["timestamp"],
        "data": {"webhook": "ops"},
    }
    assert "whsec_" not in said

    receiver.replies = [Reply(503)]
    failed = await cli("webhooks", "test", "ops", "--config", config)
    assert failed.exit_code == 1
    assert "HTTP 503" in failed.stderr
    unknown = await cli("webhooks", "test", "nope", "--config", config)
    assert unknown.exit_code == 2
    assert "no webhook 'nope'" in unknown.stderr


async def test_enable_brings_back_a_disabled_endpoint_and_its_backlog(
    tmp_path: Path,
    one_try_text: str,
    db_url: str,
    store: TicketStore,
    receiver: Receiver,
    make_worker: MakeWorker,
) -> None:
    config = config_file(tmp_path, one_try_text)
    worker = make_worker(webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=ONE_TRY))
    receiver.replies = [Reply(410)]
    await open_ticket(store, subject_id="d1")
    await worker.pump()
    await open_ticket(store, subject_id="d2")
    assert await worker.pump() == 0
    [health] = json.loads(ok(await cli("webhooks", "list", "--config", config, "--json")).stdout)
    assert health["state"] == "disabled"
    assert health["deliveries"]["pending"] == 3  # d2, and the failing-endpoint tickets in 2 orgs

    said = ok(await cli("webhooks", "enable", "ops", "--config", config)).stdout
    assert "webhook ops enabled" in said
    assert await worker.pump() == 5  # the backlog, then the two tickets' Resolved triggers
    assert (
        "was not disabled" in ok(await cli("webhooks", "enable", "ops", "--config", config)).stdout
    )


# -- the API --------------------------------------------------------------------------------------


@pytest.fixture
def hook_settings(db_url: str, receiver: Receiver) -> Settings:
    return webhook_settings(db_url, hook_toml("ops", receiver.url), delivery=ONE_TRY)


@pytest.fixture
async def hook_api(hook_settings: Settings, store: TicketStore) -> AsyncIterator[Api]:
    server = TestServer(make_app(hook_settings, store), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Api(session, str(server.make_url("")).rstrip("/"))
    await server.close()


async def test_the_api_lists_deliveries_and_redelivers_one(
    hook_api: Api,
    hook_settings: Settings,
    store: TicketStore,
    receiver: Receiver,
    make_worker: MakeWorker,
    clock: FakeClock,
) -> None:
    worker = make_worker(hook_settings)
    receiver.replies = [Reply(500)]
    for n in range(3):
        await open_ticket(store, subject_id=f"d{n}")
    await open_ticket(store, "beta", subject_id="b1")
    await worker.pump()

    status, body = await hook_api.call("GET", DELIVERIES + "?limit=2")
    assert status == 200
    page = DeliveryListOut.model_validate(body)
    assert [d.ticket_seq for d in page.deliveries] == [3, 2]  # newest first, acme only
    assert page.next_cursor is not None
    status, body = await hook_api.call("GET", f"{DELIVERIES}?limit=2&cursor={page.next_cursor}")
    rest = DeliveryListOut.model_validate(body)
    assert [(d.ticket_seq, d.status) for d in rest.deliveries] == [(1, "failed")]
    assert rest.next_cursor is None
    status, body = await hook_api.call("GET", DELIVERIES + "?status=failed")
    [failed] = DeliveryListOut.model_validate(body).deliveries

    status, body = await hook_api.call("POST", f"{DELIVERIES}/{failed.id}/redeliver")
    assert status == 200
    again = DeliveryOut.model_validate(body)
    assert (again.status, again.attempts, again.webhook_id) == ("pending", 0, failed.webhook_id)
    clock.advance(minutes=1)  # the API stamps real time; the worker's clock started earlier
    await worker.pump()
    status, body = await hook_api.call("GET", DELIVERIES + "?status=delivered,failed")
    assert {d.status for d in DeliveryListOut.model_validate(body).deliveries} == {"delivered"}


@pytest.mark.parametrize(
    ("method", "path", "token", "status", "code"),
    [
        ("GET", DELIVERIES, "acme-read", 403, "forbidden"),
        ("GET", DELIVERIES, "acme-workflow", 403, "forbidden"),
        ("GET", DELIVERIES, "beta-write", 404, "org_not_found"),
        ("GET", DELIVERIES, None, 401, "unauthorized"),
        ("GET", DELIVERIES + "?status=lost", "acme-write", 422, "invalid_value"),
        ("GET", DELIVERIES + "?limit=0", "acme-write", 422, "invalid_value"),
        ("GET", DELIVERIES + "?cursor=abc", "acme-write", 422, "invalid_value"),
        ("GET", DELIVERIES + "?colour=red", "acme-write", 400, "unknown_parameter"),
        ("POST", DELIVERIES + "/1/redeliver", "acme-read", 403, "forbidden"),
        ("POST", DELIVERIES + "/999/redeliver", "acme-write", 404, "delivery_not_found"),
        ("POST", DELIVERIES + "/x1/redeliver", "acme-write", 400, "invalid_delivery_id"),
    ],
)
async def test_the_api_refuses_what_it_should(
    hook_api: Api, method: str, path: str, token: str | None, status: int, code: str
) -> None:
    got, body = await hook_api.call(method, path, token=token)
    assert (got, error_code(body)) == (status, code)


async def test_another_org_s_delivery_is_not_found_and_one_in_flight_is_a_conflict(
    hook_api: Api, hook_settings: Settings, store: TicketStore, receiver: Receiver
) -> None:
    await open_ticket(store, "beta", subject_id="b1")
    await open_ticket(store, "acme", subject_id="a1")
    now = datetime.now(UTC)
    endpoints = endpoints_from(hook_settings)
    await store.writer.run(lambda c: outbox.ensure_endpoints(c, ["ops"], now))
    await store.writer.run(lambda c: outbox.fan_out(c, endpoints, now))
    slots = {"ops": Slots(0, 16, timedelta(minutes=1))}
    claimed = await store.writer.run(lambda c: outbox.claim(c, slots, 16, now))
    by_org = {c.org: c.id for c in claimed}

    got, body = await hook_api.call("POST", f"{DELIVERIES}/{by_org['beta']}/redeliver")
    assert (got, error_code(body)) == (404, "delivery_not_found")
    got, body = await hook_api.call("POST", f"{DELIVERIES}/{by_org['acme']}/redeliver")
    assert (got, error_code(body)) == (409, "delivery_in_flight")


async def test_the_openapi_document_lists_the_webhook_routes(hook_api: Api) -> None:
    async with hook_api.session.get(hook_api.base + "/api/v1/openapi.json") as response:
        document: dict[str, Any] = await response.json()
    deliveries = document["paths"]["/api/v1/orgs/{org}/webhooks/deliveries"]["get"]
    assert "write" in deliveries["description"]
    redeliver = document["paths"]["/api/v1/orgs/{org}/webhooks/deliveries/{delivery_id}/redeliver"][
        "post"
    ]
    [param] = [p for p in redeliver["parameters"] if p["name"] == "delivery_id"]
    assert param["schema"] == {"type": "integer", "minimum": 1}
    assert token_value("acme-write")  # the fixture's tokens are the shared ones
    assert DELIVERY_TOML  # the shared delivery settings stay importable
