"""Helpers of bench/bench_storm.py: the one HTTP device, the raw MQTT status publisher, the
daemon's config and a watcher that sees tickets appear in the SQLite file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from fleet.sim import connect_packet

ORG = "storm"
TOKEN = "storm-bench-read-token"
BROKER = "site"
HTTP_ID = "http-dev"
HOOK = "storm-hook"


def mqtt_id(n: int) -> str:
    return f"mqtt-{n:05d}"


def space_of(n: int, devices: int, spaces: int) -> str:
    """Device n's space: devices in `spaces` contiguous blocks."""
    return f"space-{n * spaces // devices:04}"


def status_topic(n: int) -> str:
    return f"storm/{mqtt_id(n)}/status"


# -- the HTTP device ----------------------------------------------------------------------------


async def http_device(port: int) -> None:
    """GET /health: 200 {"status": "ok"}, or 503 while failing. POST /control/state
    {"failing": bool} switches it and answers with the wall time of the switch; GET
    /control/checks lists every check as [arrival wall time, status answered]."""
    failing = False
    checks: list[tuple[float, int]] = []

    async def health(request: web.Request) -> web.Response:
        status = 503 if failing else 200
        checks.append((time.time(), status))
        if failing:
            return web.json_response({"status": "down"}, status=503)
        return web.json_response({"status": "ok"})

    async def state(request: web.Request) -> web.Response:
        nonlocal failing
        failing = bool((await request.json())["failing"])
        return web.json_response({"at": time.time(), "failing": failing})

    async def list_checks(request: web.Request) -> web.Response:
        return web.json_response({"checks": checks})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/control/state", state)
    app.router.add_get("/control/checks", list_checks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


# -- publishing device status over raw MQTT 3.1.1 ---------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def retained_publish(topic: str, payload: bytes) -> bytes:
    """PUBLISH, QoS 0, RETAIN: a device's status (and what its Last Will would carry)."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + payload
    return b"\x31" + _remaining_length(len(body)) + body


def _connect(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(connect_packet(client_id))
    connack = sock.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        sock.close()
        raise SystemExit(f"CONNACK refused: {connack!r}")
    return sock


def _disconnect(sock: socket.socket) -> None:
    """DISCONNECT, then wait for the broker to close: it has handled every packet before."""
    with contextlib.suppress(OSError):
        sock.sendall(b"\xe0\x00")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(4096):
            pass
    sock.close()


def publish_statuses(
    port: int,
    devices: int,
    payload: bytes,
    *,
    connections: int = 2,
    chunk: int = 256,
    then: Callable[[], float] | None = None,
) -> tuple[list[float], float, float | None]:
    """Publish `payload` (retained) on every device's status topic as fast as the broker takes
    it, from `connections` client connections, `chunk` messages per write. Returns, per device,
    the wall time just before the write that carried its message (its publish time), the wall
    time the last write returned, and what `then()` returned: it runs right after the last
    write, before the broker is told to disconnect (it has read everything once it closes)."""
    packets = [retained_publish(status_topic(n), payload) for n in range(devices)]
    socks = [_connect(port, f"bench-storm-{os.getpid()}-{i}") for i in range(connections)]
    published = [0.0] * devices
    try:
        for number, start in enumerate(range(0, devices, chunk)):
            stop = min(devices, start + chunk)
            data = b"".join(packets[start:stop])
            at = time.time()
            socks[number % connections].sendall(data)
            for n in range(start, stop):
                published[n] = at
        last = time.time()
        after = then() if then is not None else None
    finally:
        for sock in socks:
            _disconnect(sock)
    return published, last, after


def switch_http_device(url: str, failing: bool) -> float:
    """POST /control/state to the HTTP device from a plain thread; its wall time of the switch."""
    request = urllib.request.Request(
        f"{url}/control/state",
        data=json.dumps({"failing": failing}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        at: float = json.loads(response.read())["at"]
        return at


# -- the daemon's config ------------------------------------------------------------------------


def storm_config(
    *,
    db: Path,
    listen_port: int,
    broker_port: int,
    devices: int,
    http_url: str,
    http_interval: float,
    http_timeout: float,
    hook_url: str,
    secret_file: Path,
    debounce: float,
    delivery: str = "auto",
    spaces: int = 0,
    storm_limit: int = 0,
) -> str:
    """The daemon's config; with `spaces`, the MQTT devices in that many spaces, in blocks
    (`space_of`); `storm_limit`: [monitor] storm_limit (0: no cap)."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{listen_port}"',
        "[store]",
        f'url = "sqlite+aiosqlite:///{db}"',
        "[log]",
        'level = "info"',
        'format = "json"',
        "[monitor]",
        f'debounce = "{debounce:g}s"',
        f"storm_limit = {storm_limit}",
        "[[orgs]]",
        f'slug = "{ORG}"',
        'name = "Storm benchmark"',
        "[[orgs.tokens]]",
        'name = "bench-read"',
        'scope = "read"',
        f'token_sha256 = "{digest}"',
        "[[webhooks]]",
        f'name = "{HOOK}"',
        f'url = "{hook_url}"',
        f'secret_file = "{secret_file}"',
        'triggers = ["ticket.opened"]',
        "[webhook_delivery]",
        f'process = "{delivery}"',
        "[[mqtt.brokers]]",
        f'name = "{BROKER}"',
        'host = "127.0.0.1"',
        f"port = {broker_port}",
        # The HTTP device fails and recovers several times: a fresh ticket each time (no
        # reopen, no flapping), so every failure is timed the same way.
        "[[devices]]",
        f'org = "{ORG}"',
        f'id = "{HTTP_ID}"',
        'name = "The unrelated HTTP device"',
        'recovery = "1s"',
        'reopen_window = "1s"',
        "flap_threshold = 1000",
        f'probe = {{ type = "http", url = "{http_url}", interval = "{http_interval:g}s", '
        f'timeout = "{http_timeout:g}s" }}',
    ]
    for n in range(devices):
        lines += [
            "[[devices]]",
            f'org = "{ORG}"',
            f'id = "{mqtt_id(n)}"',
            f'name = "MQTT device {n}"',
            *([f'space = "{space_of(n, devices, spaces)}"'] if spaces else []),
            f'probe = {{ type = "mqtt", broker = "{BROKER}", status_topic = "{status_topic(n)}" }}',
        ]
    return "\n".join(lines) + "\n"


def write_secret(path: Path) -> None:
    path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)


# -- seeing tickets appear ----------------------------------------------------------------------


@dataclass
class Seen:
    """A ticket as the watcher saw it in the database."""

    ticket_id: int
    subject: str
    opened_at: float  # the daemon's own stamp (tickets.opened_at)
    seen_at: float  # the first poll that showed the row
    trigger_seen_at: float | None = None  # the first poll that showed its ticket.opened trigger

    @property
    def complete_at(self) -> float | None:
        """When the ticket and its trigger row were both visible (one transaction writes them)."""
        if self.trigger_seen_at is None:
            return None
        return max(self.seen_at, self.trigger_seen_at)


@dataclass
class DbWatcher:
    """Polls the SQLite file (read-only) for new tickets and ticket.opened trigger rows, and
    notes when each became visible: the bench's own clock of when a ticket was committed,
    whatever time the daemon stamps on it."""

    db: Path
    every: float = 0.1
    tickets: dict[int, Seen] = field(default_factory=dict)
    polls: int = 0
    poll_seconds: float = 0.0
    errors: int = 0
    _last_ticket: int = 0
    _last_trigger: int = 0
    _early_triggers: dict[int, float] = field(default_factory=dict)

    def poll(self, conn: sqlite3.Connection) -> None:
        started = time.perf_counter()
        conn.execute("BEGIN")
        try:
            tickets = conn.execute(
                "SELECT id, subject_id, opened_at FROM tickets WHERE id > ? ORDER BY id",
                (self._last_ticket,),
            ).fetchall()
            triggers = conn.execute(
                "SELECT id, ticket_id FROM triggers WHERE id > ? AND type = 'ticket.opened' "
                "ORDER BY id",
                (self._last_trigger,),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        now = time.time()
        for ticket_id, subject, opened_at in tickets:
            self.tickets[ticket_id] = Seen(ticket_id, subject, db_time(opened_at), now)
            self._last_ticket = max(self._last_ticket, ticket_id)
        for trigger_id, ticket_id in triggers:
            self._last_trigger = max(self._last_trigger, trigger_id)
            seen = self.tickets.get(ticket_id)
            if seen is None:
                self._early_triggers[ticket_id] = now
            elif seen.trigger_seen_at is None:
                seen.trigger_seen_at = now
        for ticket_id, at in list(self._early_triggers.items()):
            seen = self.tickets.get(ticket_id)
            if seen is not None:
                seen.trigger_seen_at = at
                del self._early_triggers[ticket_id]
        self.polls += 1
        self.poll_seconds += time.perf_counter() - started

    async def run(self, stop: asyncio.Event) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not stop.is_set():
                try:
                    if conn is None and self.db.exists():
                        conn = read_only(self.db)
                    if conn is not None:
                        self.poll(conn)
                except sqlite3.Error:
                    self.errors += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)
        finally:
            if conn is not None:
                conn.close()


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5, isolation_level=None)


def db_time(text: str) -> float:
    """A UTC DATETIME as SQLAlchemy writes it to SQLite ("2026-11-27 03:28:10.200000")."""
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
