"""A hot standby: two `tocsin run` processes with the same config on one PostgreSQL store. One
probes; the other serves the API and, when the first is killed (SIGKILL), takes over probing
within 30 s from the state in the database: the outage the first one ticketed keeps its one
ticket and is resolved by the second, and an outage that begins after the takeover is
ticketed."""

from __future__ import annotations

import collections
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.pg import PostgresServer


class Devices:
    """HTTP devices at /d/{id}; ids in `failing` answer 503."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.failing: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        device = request.match_info["id"]
        self.hits[device] += 1
        return web.Response(status=503 if device in self.failing else 200)


@pytest.fixture
async def devices() -> AsyncIterator[tuple[Devices, str]]:
    state = Devices()
    app = web.Application()
    app.router.add_get("/d/{id}", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


def config(port: int, store_url: str, base: str) -> str:
    text = base_config(port).replace("sqlite+aiosqlite:///state/tocsin.db", store_url)
    for device in ("pump", "fan"):
        text += f"""
[[devices]]
org = "acme"
id = "{device}"
name = "Device {device}"
probe = {{ type = "http", url = "{base}/d/{device}", timeout = "1s" }}
"""
    return text


def logged(daemon: Daemon, event: str) -> bool:
    for line in daemon.log.read_text().splitlines():
        try:
            if json.loads(line).get("event", "").startswith(event):
                return True
        except ValueError:
            continue
    return False


async def test_the_standby_takes_over_probing_within_30_s_with_no_duplicate_ticket(
    tmp_path: Path, postgres: PostgresServer, devices: tuple[Devices, str]
) -> None:
    state, base = devices
    store_url = postgres.url(postgres.new_database())
    daemons = []
    for name in ("a", "b"):
        port = free_port()
        path = tmp_path / f"{name}.toml"
        path.write_text(config(port, store_url, base), encoding="utf-8")
        daemons.append(Daemon(path, port))
    first, second = daemons
    try:
        await first.start()
        assert logged(first, "health monitor started")
        await second.start()  # ready: its API is up while the other probes
        assert logged(second, "standby")
        assert not logged(second, "health monitor started")

        state.failing.add("pump")
        opened = await eventually(
            first.tickets, lambda ts: len(ts) == 1, what="the pump's ticket from the first"
        )
        assert opened[0]["subject"]["id"] == "pump"
        # The standby answers the API for the desk (links aside, which name its own port).
        assert [(t["seq"], t["state"]) for t in await second.tickets()] == [(1, "open")]

        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        await eventually(
            lambda: _async(logged(second, "health monitor started")),
            bool,
            within=30,
            what="the standby probing",
        )
        took = time.monotonic() - killed
        assert took < 30
        assert logged(second, "taking over probing")

        state.failing.add("fan")  # an outage that starts after the takeover
        tickets = await eventually(
            second.tickets, lambda ts: len(ts) == 2, what="the fan's ticket from the standby"
        )
        assert [t["subject"]["id"] for t in tickets] == ["pump", "fan"]  # no second pump one
        state.failing.discard("pump")
        resolved = await eventually(
            lambda: second.ticket(opened[0]["seq"]),
            lambda t: t["state"] == "resolved",
            what="the first's ticket resolved by the standby",
        )
        assert resolved["state"] == "resolved"
        assert len(await second.tickets()) == 2
    finally:
        for daemon in daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


async def _async(value: bool) -> bool:
    return value
