"""Run `tocsin run` as a real subprocess and talk to its API, for end-to-end tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
TOKEN = "e2e-write-token"


def base_config(port: int, *, interval: str = "200ms", **windows: str) -> str:
    """[server], [store] (SQLite beside the config), [monitor] with short windows, and org
    acme with a write token (TOKEN): what every end-to-end config starts with."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    monitor = {"debounce": "1s", "recovery": "1s", **windows, "interval": interval}
    lines = "\n".join(f'{key} = "{value}"' for key, value in monitor.items())
    return f"""
[server]
listen = "127.0.0.1:{port}"
[store]
url = "sqlite+aiosqlite:///state/tocsin.db"
[monitor]
{lines}
[log]
format = "json"
[[orgs]]
slug = "acme"
name = "Acme"
  [[orgs.tokens]]
  name = "ops"
  scope = "write"
  token_sha256 = "{digest}"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """`python -m tocsin run --config FILE`, started and stopped by the test; `env` adds to
    (or overrides) the test's environment for the daemon."""

    def __init__(self, config: Path, port: int, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.env = dict(env or {})
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(".log")

    async def start(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; we poll /readyz
            [sys.executable, "-m", "tocsin", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"tocsin exited early:\n{self.log.read_text()}")
                try:
                    async with session.get(self.base + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"tocsin did not become ready:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    async def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base + path, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()

    async def tickets(self, org: str = "acme") -> list[dict[str, Any]]:
        body = await self.get(f"/api/v1/orgs/{org}/tickets?limit=200")
        return list(reversed(body["tickets"]))  # oldest first

    async def ticket(self, seq: int, org: str = "acme") -> dict[str, Any]:
        result: dict[str, Any] = await self.get(f"/api/v1/orgs/{org}/tickets/{seq}")
        return result


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    within: float = 15.0,
    what: str = "condition",
) -> T:
    """Poll `probe` until `check` holds; fail with the last value after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {within} s; last: {value!r}")
        await asyncio.sleep(0.1)
