"""Helpers for HTTP probe tests: real aiohttp servers on free loopback ports, a shared client
session, TLS material from trustme, and clocks the test controls."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trustme
from aiohttp import web

from tocsin.probes.base import ProbeContext
from tocsin.probes.http import make_http_session


@asynccontextmanager
async def serving(app: web.Application, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 at a free port; yield its base URL (no trailing slash).

    Handlers are cancelled when their client goes away, so a handler that hangs forever ends
    with the probe that gave up on it and shutdown does not wait for it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=tls).start()
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A loopback port that was just free: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Clock:
    """Monotonic and wall clocks the test moves by hand."""

    mono: float = 1000.0
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> datetime:
        return self.now


@asynccontextmanager
async def probe_context(
    base_dir: Path, *, clock: Clock | None = None, environ: dict[str, str] | None = None
) -> AsyncIterator[ProbeContext]:
    """A ProbeContext with a real shared session (closed on exit)."""
    session = make_http_session()
    try:
        context = ProbeContext(
            base_dir=base_dir, environ=environ or {}, resources={"http": session}
        )
        if clock is not None:
            context.wall = clock.wall
        yield context
    finally:
        await session.close()


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    server: ssl.SSLContext
    not_after: datetime | None


def make_tls(tmp_path: Path, *, not_after: datetime | None = None) -> Tls:
    """A fresh CA (written to tmp_path/ca.pem) and a server context for 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", not_after=not_after)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca_file, server, not_after)
