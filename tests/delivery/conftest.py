"""Webhook delivery fixtures: real aiohttp receivers on free loopback ports, a real SQLite store,
settings from inline TOML, and a worker on the test's fake clock with jitter pinned to none."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import FakeClock, config_text
from tocsin.config import Settings, parse
from tocsin.delivery.endpoints import delivery_settings, endpoints_from
from tocsin.delivery.worker import DeliveryWorker
from tocsin.tickets.model import Actor, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore

SECRET = "whsec_" + base64.b64encode(b"the current secret, 32 bytes ok").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the previous secret, 32 bytes ok").decode()
ENV = {"HOOK_SECRET": SECRET, "OLD_HOOK_SECRET": OLD_SECRET}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # wait until the receiver's `release` event is set
    delay: float = 0.0  # a slow receiver: answer after this many seconds


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A webhook receiver: records every request; answers with `replies` in turn, then with
    `default`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.server = TestServer(web.Application(), host="127.0.0.1")
        self.server.app.router.add_post("/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        self.arrived.set()
        reply = self.replies.pop(0) if self.replies else self.default
        if reply.hang:
            await self.release.wait()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, headers=reply.headers)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))

    def bodies(self) -> list[Any]:
        return [r.json for r in self.received]

    async def wait_for(self, count: int, seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    yield r
    r.release.set()
    await r.server.close()


@pytest.fixture
async def other_receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    yield r
    r.release.set()
    await r.server.close()


def hook_toml(name: str, url: str, **keys: Any) -> str:
    """A [[webhooks]] table; keys are TOML values already (strings quoted by the caller)."""
    lines = ["[[webhooks]]", f'name = "{name}"', f'url = "{url}"']
    keys.setdefault("secret_env", '"HOOK_SECRET"')
    lines += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


DELIVERY_TOML = """
[webhook_delivery]
jitter = 0.0
ticket_after = "10m"
"""


def webhook_settings(db_url: str, *hooks: str, delivery: str = DELIVERY_TOML) -> Settings:
    return parse(config_text(db_url, extra="".join(hooks) + delivery), env=ENV)


MakeWorker = Callable[..., DeliveryWorker]


@pytest.fixture
async def make_worker(store: TicketStore, clock: FakeClock) -> AsyncIterator[MakeWorker]:
    workers: list[DeliveryWorker] = []

    def make(settings: Settings, **options: Any) -> DeliveryWorker:
        worker = DeliveryWorker(
            store,
            endpoints_from(settings),
            delivery_settings(settings),
            clock=clock,
            rand=lambda: 0.5,
            **options,
        )
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close()


async def open_ticket(store: TicketStore, org: str = "acme", subject_id: str = "d1") -> int:
    change = await store.open(
        OpenRequest(
            org=org,
            source=Source.WORKFLOW,
            subject=Subject(SubjectType.DEVICE, subject_id, f"Device {subject_id}"),
            kind="door_ajar",
            description="Door left open",
            actor=Actor.health_monitor(),
        )
    )
    return change.ticket.seq


def real_now_clock() -> FakeClock:
    """A fake clock at the real time: standardwebhooks checks timestamps against its own clock."""
    return FakeClock(now=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def clock() -> FakeClock:
    return real_now_clock()
