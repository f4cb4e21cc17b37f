"""At least once, nothing lost: a real `tocsin run` killed with SIGKILL in the middle of a burst
of 1,000 triggers, restarted, and every trigger delivered with its one stable webhook-id."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from tests.delivery.conftest import ENV, SECRET, Receiver, Reply
from tocsin.delivery.worker import PREFETCH

pytestmark = pytest.mark.engines

TOKEN = "crash-test-token"
TICKETS = 200
COMMENTS = 4  # 200 tickets x (opened + 4 comments) = 1,000 triggers
CALLERS = 20
KILL_AFTER = 400  # acknowledged writes before the SIGKILL
SLOTS = 16  # the endpoint's concurrency
# What can be re-sent after the kill: the deliveries that were claimed (`delivering`) then.
CLAIMED_AT_MOST = SLOTS * PREFETCH


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(tmp_path: Path, port: int, receiver_url: str) -> Path:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = tmp_path / "tocsin.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://tocsin.test"
[store]
url = "sqlite+aiosqlite:///{tmp_path / "tocsin.db"}"
[log]
level = "warning"
format = "json"
[[orgs]]
slug = "acme"
name = "Acme"
  [[orgs.tokens]]
  name = "burst"
  scope = "write"
  token_sha256 = "{digest}"
[[webhooks]]
name = "ops"
url = "{receiver_url}"
secret_env = "HOOK_SECRET"
timeout = "2s"
[webhook_delivery]
lease = "500ms"
poll_interval = "50ms"
per_endpoint_concurrency = {SLOTS}
ticket_after = "1h"
""",
        encoding="utf-8",
    )
    return config


class Daemon:
    """`python -m tocsin run` as a child process, logs in a file."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: asyncio.subprocess.Process | None = None
        self.up = asyncio.Event()

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tocsin",
                "run",
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **ENV},
            )
        async with asyncio.timeout(20):
            while True:
                assert self.process.returncode is None, self.log.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # polling for the child to listen, not a backoff
        self.up.set()

    async def kill(self) -> None:
        assert self.process is not None
        self.up.clear()
        self.process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await self.process.wait()

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await self.process.wait()


@contextmanager
def database(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def all_delivered(db: Path) -> bool:
    with database(db) as conn:
        (triggers,) = conn.execute("SELECT COUNT(*) FROM triggers").fetchone()
        (position,) = conn.execute(
            "SELECT position FROM outbox_cursors WHERE name = 'webhooks'"
        ).fetchone()
        (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM triggers").fetchone()
        (unfinished,) = conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status != 'delivered'"
        ).fetchone()
    return bool(triggers >= TICKETS * (1 + COMMENTS) and position == last and not unfinished)


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll the child's database until `condition` holds (the caller bounds the time)."""
    for _ in itertools.count():
        if condition():
            return
        await asyncio.sleep(0.1)


async def test_a_daemon_killed_mid_burst_delivers_every_trigger_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.default = Reply(delay=0.01)  # a receiver slow enough to have attempts in flight
    port = free_port()
    config = write_config(tmp_path, port, receiver.url)
    base = f"http://127.0.0.1:{port}/api/v1/orgs/acme/tickets"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    acknowledged = 0
    enough = asyncio.Event()

    async with aiohttp.ClientSession() as session:
        daemon = Daemon(config, port, tmp_path / "daemon.log")

        async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            """POST until the daemon answers (it is killed and restarted meanwhile)."""
            nonlocal acknowledged
            while True:
                await daemon.up.wait()
                try:
                    async with session.post(base + path, json=body, headers=headers) as answer:
                        assert answer.status in (200, 201), await answer.text()
                        result: dict[str, Any] = await answer.json()
                        acknowledged += 1
                        if acknowledged >= KILL_AFTER:
                            enough.set()
                        return result
                except (aiohttp.ClientError, ConnectionError):
                    daemon.up.clear()  # it is down: wait for the restart, then ask again

        async def one_ticket(n: int) -> None:
            opened = await call(
                "",
                {
                    "source": "workflow",
                    "subject": {"type": "device", "id": f"d{n}", "name": f"Device {n}"},
                    "kind": "burst",
                    "dedup_key": f"burst-{n}",  # a retried open finds the ticket it made
                },
            )
            for c in range(COMMENTS):
                await call(f"/{opened['seq']}/comments", {"body": f"note {c}"})

        async def caller(first: int) -> None:
            for n in range(first, TICKETS, CALLERS):
                await one_ticket(n)

        await daemon.start(session)
        burst = asyncio.gather(*(caller(i) for i in range(CALLERS)))
        async with asyncio.timeout(30):
            await enough.wait()
            await receiver.wait_for(100, seconds=30)
        assert acknowledged < TICKETS * (1 + COMMENTS)  # the kill lands mid-burst
        await daemon.kill()
        received_before_restart = len(receiver.received)
        await daemon.start(session)
        async with asyncio.timeout(40):
            await burst
            await eventually(lambda: all_delivered(tmp_path / "tocsin.db"))
        assert await daemon.stop() == 0

    with database(tmp_path / "tocsin.db") as conn:
        triggers = dict(conn.execute("SELECT event_id, id FROM triggers").fetchall())
        msg_ids = dict(conn.execute("SELECT trigger_id, msg_id FROM deliveries").fetchall())
    assert len(triggers) >= TICKETS * (1 + COMMENTS)
    assert set(msg_ids) == set(triggers.values())  # every trigger got its delivery

    seen: dict[int, set[str]] = defaultdict(set)  # trigger id -> webhook-ids it arrived with
    verifier = Webhook(SECRET)
    for received in receiver.received:
        body = verifier.verify(received.body, received.headers)
        seen[triggers[body["data"]["event"]["id"]]].add(received.webhook_id)
    missing = set(triggers.values()) - set(seen)
    assert not missing, f"{len(missing)} triggers never arrived"
    assert all(ids == {msg_ids[t]} for t, ids in seen.items())  # one stable webhook-id each
    resent = len(receiver.received) - len(seen)
    assert resent <= CLAIMED_AT_MOST, f"{resent} re-sent, more than had been claimed"
    assert received_before_restart > 0
    log = (tmp_path / "daemon.log").read_text()
    assert SECRET not in log
    assert "whsec_" not in log
    assert all(json.loads(line)["level"] != "error" for line in log.splitlines() if line)
