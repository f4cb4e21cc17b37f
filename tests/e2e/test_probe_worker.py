"""End to end with the pull probes in a worker process ([monitor] pull_probes = "worker"): the
daemon's child runs the HTTP device's and the integration's checks; tickets open and resolve as
inline; a worker killed mid-run is started again and watching goes on; the daemon's stop takes
the worker with it."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e import test_http_and_integrations as http_e2e
from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.e2e.test_http_and_integrations import Site, of
from tests.peers import process_alive

site = http_e2e.site  # the device and cloud API fixture, shared


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def log_events(daemon: Daemon) -> list[dict[str, object]]:
    lines = daemon.log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
async def daemon(tmp_path: Path, site: tuple[Site, str]) -> AsyncIterator[Daemon]:
    port = free_port()
    (tmp_path / "bms-token").write_text("bms-secret-1\n")
    config = tmp_path / "tocsin.toml"
    url = site[1]
    config.write_text(
        base_config(port, pull_probes="worker")
        + f"""
[[devices]]
org = "acme"
id = "cam-1"
name = "Lobby camera"
probe = {{ type = "http", url = "{url}/health", timeout = "1s" }}
[[integrations]]
org = "acme"
id = "bms"
name = "BMS cloud"
check = {{ type = "http", url = "{url}/api/me", timeout = "1s", \
          auth = {{ bearer_file = "bms-token" }} }}
"""
    )
    process = Daemon(config, port)
    await process.start()
    yield process
    if process.process is not None and process.process.poll() is None:
        assert process.stop() == 0


async def test_the_worker_watches_is_restarted_and_stops_with_the_daemon(
    daemon: Daemon, site: tuple[Site, str]
) -> None:
    state, _ = site
    assert daemon.process is not None
    started = next(e for e in log_events(daemon) if e["event"] == "health monitor started")
    assert started["pull"] == 2
    assert str(started["pull_probes_in"]).startswith("worker process ")
    worker = int(str(started["pull_probes_in"]).rsplit(" ", 1)[1])
    assert worker in children(daemon.process.pid)

    state.device_ok = False
    state.valid_tokens.clear()
    opened = await eventually(
        daemon.tickets, lambda t: len(of("cam-1", t)) == len(of("bms", t)) == 1, what="tickets"
    )
    assert of("cam-1", opened)[0]["kind"] == "device_offline"
    assert of("bms", opened)[0]["kind"] == "integration_credentials_invalid"

    os.kill(worker, signal.SIGKILL)
    await eventually(
        lambda: _async(log_events(daemon)),
        lambda events: any(e["event"] == "probe worker exited; starting it again" for e in events),
        what="the exit logged",
    )
    state.device_ok = True  # only a new worker's checks can see this
    state.valid_tokens.add("bms-secret-1")
    resolved = await eventually(
        daemon.tickets,
        lambda t: [x["state"] for x in t] == ["resolved", "resolved"],
        what="both resolved",
    )
    assert len(resolved) == 2
    (second,) = children(daemon.process.pid)
    assert second != worker
    assert not process_alive(worker)

    assert daemon.stop() == 0
    await eventually(
        lambda: _async(process_alive(second)), lambda up: not up, within=3, what="gone"
    )
    assert "bms-secret-1" not in daemon.log.read_text()


async def _async(value: object) -> object:
    return value
