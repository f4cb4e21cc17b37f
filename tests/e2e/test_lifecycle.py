"""The daemon as a service: SIGHUP reloads the config in place (new device probed, removed
device stopped, tracker state kept; an invalid config refused and the old one kept), SIGTERM
stops it within 10 s, and it speaks systemd's notify protocol."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.daemon import Daemon, base_config, eventually, free_port


class Devices:
    """HTTP devices at /d/{id}: counts requests; ids in `failing` answer 503."""

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


def config(port: int, base: str, ids: list[str], *, extra: str = "") -> str:
    text = base_config(port)
    for device in ids:
        text += f"""
[[devices]]
org = "acme"
id = "{device}"
name = "Device {device}"
probe = {{ type = "http", url = "{base}/d/{device}", timeout = "1s" }}
"""
    return text + extra


async def subjects(daemon: Daemon) -> dict[str, dict[str, object]]:
    body = await daemon.get("/api/v1/orgs/acme/subjects")
    return {s["subject"]["id"]: s for s in body["subjects"]}


async def test_sighup_reloads_devices_in_place_and_refuses_an_invalid_config(
    tmp_path: Path, devices: tuple[Devices, str]
) -> None:
    state, base = devices
    port = free_port()
    path = tmp_path / "tocsin.toml"
    path.write_text(config(port, base, ["a", "b"]))
    daemon = Daemon(path, port)
    await daemon.start()
    try:
        state.failing.add("b")
        opened = await eventually(daemon.tickets, lambda t: len(t) == 1, what="b's ticket")
        seq = opened[0]["seq"]
        b_before = (await subjects(daemon))["b"]
        assert b_before["health"] == "down"

        path.write_text(config(port, base, ["b", "c"]))  # a removed, c added, b unchanged
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: asyncio.sleep(0, state.hits["c"]), lambda n: n >= 3, what="c probed"
        )
        a_hits = state.hits["a"]
        await eventually(
            lambda: asyncio.sleep(0, state.hits["c"]), lambda n: n >= 8, what="c probed more"
        )
        assert state.hits["a"] <= a_hits + 1  # a's probe stopped (one may have been in flight)
        after = await subjects(daemon)
        assert set(after) == {"b", "c"}
        assert after["b"]["health"] == "down"  # not reset to unknown: its state was kept
        assert after["b"]["since"] == b_before["since"]
        assert after["b"]["ticket_seq"] == seq
        assert len(await daemon.tickets()) == 1  # no duplicate for b

        path.write_text(config(port, base, ["b", "c"]) + "\n[monitor2]\nbogus = 1\n")
        daemon.process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: asyncio.sleep(0, daemon.log.read_text()),
            lambda log: "config reload refused" in log,
            what="refusal logged",
        )
        assert "monitor2: unknown key" in daemon.log.read_text()
        hits = state.hits["c"]
        await eventually(
            lambda: asyncio.sleep(0, state.hits["c"]),
            lambda n: n >= hits + 3,
            what="the old config keeps running",
        )
        assert set(await subjects(daemon)) == {"b", "c"}
    finally:
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10


async def test_it_notifies_systemd_ready_watchdog_status_and_stopping(
    tmp_path: Path, devices: tuple[Devices, str]
) -> None:
    _, base = devices
    port = free_port()
    path = tmp_path / "tocsin.toml"
    path.write_text(config(port, base, ["a"]))
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    received: list[tuple[float, str]] = []

    async def collect() -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(sock, 4096)
            received.append((time.monotonic(), data.decode()))

    collector = asyncio.create_task(collect())
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    os.environ.update(env)
    daemon = Daemon(path, port)
    try:
        await daemon.start()
        await eventually(
            lambda: asyncio.sleep(0, list(received)),
            lambda r: sum("WATCHDOG=1" in m for _, m in r) >= 3,
            what="watchdog pings",
        )
        ready = [m for _, m in received if "READY=1" in m]
        assert ready
        assert "STATUS=1 subject, 0 down, 0 webhooks pending" in ready[0]
        assert daemon.stop(signal.SIGTERM) == 0
        await eventually(
            lambda: asyncio.sleep(0, list(received)),
            lambda r: any("STOPPING=1" in m for _, m in r),
            what="STOPPING=1",
        )
    finally:
        for key in env:
            os.environ.pop(key, None)
        collector.cancel()
        sock.close()
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()


async def test_metrics_and_readiness_describe_the_running_daemon(
    tmp_path: Path, devices: tuple[Devices, str]
) -> None:
    state, base = devices
    port = free_port()
    path = tmp_path / "tocsin.toml"
    path.write_text(config(port, base, ["a", "b"]))
    state.failing.add("b")
    daemon = Daemon(path, port)
    await daemon.start()
    try:
        await eventually(daemon.tickets, lambda t: len(t) == 1, what="b's ticket")

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(daemon.base + "/metrics") as response,
            ):
                assert response.status == 200
                assert response.content_type == "text/plain"
                text = await response.text()
            return {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }

        samples = await eventually(
            scrape,
            lambda s: s.get(("tocsin_subjects", (("health", "down"),))) == 1.0,
            what="b counted down",
        )
        assert samples[("tocsin_subjects", (("health", "up"),))] == 1.0
        assert samples[("tocsin_probe_runs_total", (("type", "http"),))] > 2
        assert samples[("tocsin_probe_failures_total", (("type", "http"),))] >= 1
        assert samples[("tocsin_tickets", (("kind", "device_offline"), ("state", "open")))] == 1
        assert ("tocsin_probe_duration_seconds_count", (("type", "http"),)) in samples
        assert ("tocsin_event_loop_lag_seconds_count", ()) in samples
        assert samples[("tocsin_outbox_backlog", ())] >= 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(daemon.base + "/readyz") as response,
        ):
            assert response.status == 200
            assert (await response.json())["checks"] == {"store": "ok", "monitor": "ok"}
        assert samples[("tocsin_store_failures_total", (("fault", "disk_full"),))] == 0.0
    finally:
        assert daemon.stop() == 0
