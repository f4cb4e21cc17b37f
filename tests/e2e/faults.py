"""Peers and faults for the end-to-end fault tests: a switchable HTTP device, a webhook
receiver, a receiver that accepts connections and never answers, a small tmpfs to fill up, a
second process holding SQLite's write lock, a wall clock that libfaketime steps, and readers
for the daemon's JSON log lines, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.daemon import TOKEN, Daemon
from tests.peers import Mosquitto

# Debian's libfaketime (package faketime), under the machine's multiarch folder.
LIBFAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)


# -- the daemon's outputs ------------------------------------------------------------------------


def log_lines(daemon: Daemon) -> list[dict[str, Any]]:
    """Every JSON line the daemon logged so far (other lines, e.g. a traceback, are skipped)."""
    lines = []
    text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                lines.append(parsed)
    return lines


def logged(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    """The log lines whose `event` is exactly `event`."""
    return [line for line in log_lines(daemon) if line.get("event") == event]


async def logged_soon(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    """`logged` as an awaitable, for `eventually`."""
    return logged(daemon, event)


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(daemon.base + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as response,
    ):
        return response.status, await response.json()


async def metrics(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(daemon.base + "/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def call(
    daemon: Daemon,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str = TOKEN,
    time_limit: float = 20.0,
) -> tuple[int, dict[str, Any]]:
    """One API request; the status and the JSON answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            daemon.base + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=time_limit),
        ) as response,
    ):
        return response.status, await response.json()


async def open_workflow_ticket(daemon: Daemon, subject_id: str) -> tuple[int, dict[str, Any]]:
    return await call(
        daemon,
        "POST",
        "/api/v1/orgs/acme/tickets",
        {
            "source": "workflow",
            "subject": {"type": "integration", "id": subject_id, "name": subject_id.upper()},
            "kind": "bms_alarm",
            "description": f"{subject_id} raised an alarm",
        },
    )


async def subjects(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """Each subject's health row by subject id."""
    body = await daemon.get("/api/v1/orgs/acme/subjects")
    return {row["subject"]["id"]: row for row in body["subjects"]}


async def deliveries(daemon: Daemon, endpoint: str) -> list[dict[str, Any]]:
    body = await daemon.get(f"/api/v1/orgs/acme/webhooks/deliveries?endpoint={endpoint}&limit=200")
    return list(body["deliveries"])


def new_webhook_secret(path: Path) -> str:
    """Write a fresh signing secret to `path`; the secret."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.write_text(secret + "\n")
    return secret


def secret_file(path: Path) -> Path:
    """`path`, holding a fresh signing secret."""
    new_webhook_secret(path)
    return path


def webhook_config(name: str, url: str, secret_file: Path, *, timeout: str = "5s") -> str:
    return f"""
[[webhooks]]
name = "{name}"
url = "{url}"
secret_file = "{secret_file}"
timeout = "{timeout}"
"""


def with_store(config: str, database: Path) -> str:
    """`config` (from base_config) with the store moved to the absolute path `database`."""
    default = 'url = "sqlite+aiosqlite:///state/tocsin.db"'
    assert default in config
    return config.replace(default, f'url = "sqlite+aiosqlite:///{database}"')


# -- peers ---------------------------------------------------------------------------------------


class _Peer:
    """An aiohttp server on a free loopback port, its routes from `routes`."""

    _server: TestServer | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None


PeerT = TypeVar("PeerT", bound=_Peer)


@contextlib.asynccontextmanager
async def serving(peer: PeerT) -> AsyncIterator[PeerT]:
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


class Device(_Peer):
    """An HTTP device at /health: `status` is what it answers (200 healthy, 500 failing)."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0

    async def health(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"ok": self.status == 200}, status=self.status)

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("/health"))

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)


def device() -> contextlib.AbstractAsyncContextManager[Device]:
    return serving(Device())


@dataclass(frozen=True)
class Delivery:
    """One webhook request as it arrived."""

    type: str
    seq: int | None
    subject_id: str | None
    arrived: float  # time.monotonic()
    headers: dict[str, str]
    body: bytes


class Receiver(_Peer):
    """A webhook receiver at /hook that records every request and answers 204."""

    def __init__(self) -> None:
        self.received: list[Delivery] = []

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = json.loads(body)
        ticket = payload.get("data", {}).get("ticket", {})
        self.received.append(
            Delivery(
                payload.get("type", ""),
                ticket.get("seq"),
                ticket.get("subject", {}).get("id"),
                time.monotonic(),
                dict(request.headers),
                body,
            )
        )
        return web.Response(status=204)

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("/hook"))

    def opened(self) -> list[Delivery]:
        return [d for d in self.received if d.type == "ticket.opened"]

    async def opened_soon(self) -> list[Delivery]:
        return self.opened()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self.hook)


def receiver() -> contextlib.AbstractAsyncContextManager[Receiver]:
    return serving(Receiver())


class HungReceiver:
    """A TCP server on a free loopback port that accepts connections, reads whatever comes and
    never writes a byte back: a webhook receiver that hangs."""

    def __init__(self) -> None:
        self.connections = 0
        self.open_connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self._writers.add(writer)
        try:
            while await reader.read(65536):
                pass  # swallow the request, answer nothing
        except ConnectionError:
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None


@contextlib.asynccontextmanager
async def hung_receiver() -> AsyncIterator[HungReceiver]:
    peer = HungReceiver()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


# -- store faults --------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "4m") -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted at `directory` (we are root), unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount") or "/bin/mount"
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {directory} (the tests run as root): {result.stderr}")
    try:
        yield directory
    finally:
        umount = shutil.which("umount") or "/bin/umount"
        if subprocess.run([umount, str(directory)], capture_output=True, check=False).returncode:
            subprocess.run([umount, "-l", str(directory)], capture_output=True, check=False)


class DiskFiller:
    """Fills the file system of `directory` to the last byte with one file, and keeps it full
    (topping up whatever the daemon frees, e.g. a WAL file it removes) until `free`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"
        self._keeper: asyncio.Task[None] | None = None

    def fill(self) -> int:
        """Write until ENOSPC; the bytes written now."""
        written = 0
        with self.path.open("ab", buffering=0) as file:
            for chunk in (1 << 20, 1 << 12, 1 << 9, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        written += file.write(block) or 0
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    async def keep_full(self, every: float = 0.1) -> None:
        self.fill()
        while True:
            await asyncio.sleep(every)
            self.fill()

    def start(self) -> None:
        self.fill()
        self._keeper = asyncio.create_task(self.keep_full())

    async def free(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        self.path.unlink(missing_ok=True)


LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin (or goes away)
connection.execute("COMMIT")
connection.close()
"""


class LockHolder:
    """A second process that takes SQLite's write lock on `database` (BEGIN EXCLUSIVE) and holds
    it until `release`."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.process: asyncio.subprocess.Process | None = None

    async def take(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LOCK_HOLDER,
            str(self.database),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 40)
        assert line.strip() == b"locked", f"the lock holder did not lock: {line!r}"

    async def release(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        assert process.returncode == 0, "the lock holder could not commit"


def truncate_wal(database: Path) -> None:
    """Checkpoint the store's WAL into its file and truncate the WAL to nothing, so that every
    later commit needs new room on the disk: a WAL that SQLite restarts over old frames would
    take new commits into space it already holds, and a full disk would go unnoticed."""
    connection = sqlite3.connect(database, timeout=10)
    try:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()
    assert busy == 0, "the WAL checkpoint was blocked by a reader"


def query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` on the store's file, read with the sqlite3 module (the daemon stopped)."""
    connection = sqlite3.connect(database)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


# -- the MQTT broker -----------------------------------------------------------------------------


def set_persistence(broker: Mosquitto, on: bool) -> None:
    """Rewrite the broker's config (applied at its next start): with persistence it saves its
    retained messages in its folder when stopped and loads them when started; without, a
    restart forgets them (and the saved file is removed)."""
    lines = [
        line
        for line in broker.config.read_text().splitlines()
        if not line.startswith(("persistence", "autosave"))
    ]
    if on:
        lines += ["persistence true", f"persistence_location {broker.workdir}/"]
    else:
        lines += ["persistence false"]
        (broker.workdir / "mosquitto.db").unlink(missing_ok=True)
    broker.config.write_text("\n".join(lines) + "\n")


# -- the wall clock ------------------------------------------------------------------------------


class FakeWallClock:
    """libfaketime preloaded into the daemon: its wall clock is the real one plus the offset
    written in `path`; its monotonic clock is left alone.

    The daemon re-reads the file at most once a second (FAKETIME_CACHE_DURATION=1) rather than
    on every clock call (FAKETIME_NO_CACHE=1): without a cache libfaketime opens and reads the
    file on each of the event loop's many clock reads, and the idle daemon spins a whole core,
    so that probes time out for want of CPU. `daemon_wall_clock` tells when a step has landed.
    """

    def __init__(self, path: Path) -> None:
        if not LIBFAKETIME.exists():
            pytest.fail(f"{LIBFAKETIME} is missing; scripts/test.sh installs it (apt faketime)")
        self.path = path
        self.offset = 0
        self.step(0)

    def step(self, seconds: int) -> None:
        """Set the daemon's wall clock to real time + `seconds` (the file replaced whole)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{seconds:+d}\n")
        os.replace(tmp, self.path)
        self.offset = seconds

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


async def daemon_wall_clock(daemon: Daemon) -> datetime:
    """The daemon's wall clock, to the second: the Date header of its answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(daemon.base + "/healthz") as response,
    ):
        return parsedate_to_datetime(response.headers["Date"])
