"""`tocsin run` on PostgreSQL through a server restart: while the server is down the daemon
stays up and says it is not ready, a device that fails meanwhile is decided as usual, and its
ticket is written (once) when the server is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests import pg
from tests.e2e.daemon import Daemon, eventually, free_port
from tests.e2e.test_lifecycle import Devices, devices
from tests.e2e.test_standby import config, logged

__all__ = ["devices"]  # the fixture, shared with the lifecycle test


@pytest.fixture
def server() -> Iterator[pg.PostgresServer]:
    with pg.running(durable=True) as own:  # stopped and started by the test
        yield own


async def readyz(daemon: Daemon) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.base}/readyz") as answer:
        return answer.status


async def test_a_failure_during_a_database_restart_is_ticketed_once_the_server_is_back(
    tmp_path: Path, server: pg.PostgresServer, devices: tuple[Devices, str]
) -> None:
    state, base = devices
    port = free_port()
    path = tmp_path / "tocsin.toml"
    path.write_text(config(port, server.url(server.new_database(template=None)), base))
    daemon = Daemon(path, port)
    try:
        await daemon.start()
        server.halt("fast")
        await eventually(lambda: readyz(daemon), lambda s: s == 503, what="not ready")
        state.failing.add("pump")
        subjects = await eventually(
            lambda: daemon.get("/api/v1/orgs/acme/subjects"),
            lambda body: any(
                s["subject"]["id"] == "pump" and s["health"] == "down" for s in body["subjects"]
            ),
            what="the pump decided down while the server is down",
        )
        pump = next(s for s in subjects["subjects"] if s["subject"]["id"] == "pump")
        assert pump["ticket_seq"] is None  # decided, not yet written
        assert logged(daemon, "store writes failing")
        assert daemon.process is not None
        assert daemon.process.poll() is None  # still running
        server.resume()
        tickets = await eventually(daemon.tickets, lambda ts: len(ts) == 1, what="the ticket")
        assert tickets[0]["subject"]["id"] == "pump"
        await eventually(lambda: readyz(daemon), lambda s: s == 200, what="ready again")
        assert len(await daemon.tickets()) == 1
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()
