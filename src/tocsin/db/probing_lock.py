"""Which daemon probes, when several run on one PostgreSQL store with the same config: a hot
standby. The one holding a PostgreSQL session advisory lock probes; the others serve the API
and the pages, deliver webhooks (their claims are safe to share), and try for the lock every
few seconds.

The lock lives on a connection of its own, in autocommit (no transaction stays open). When the
daemon that holds it dies, PostgreSQL ends its session and frees the lock at once if the
process was killed; if its box lost the network, once the server's TCP keepalives give up on
the connection (README: the settings). The holder checks its connection every few seconds; a
check that fails means another daemon may hold the lock by now, so the holder must stop
probing: `hold` returns and the daemon stops (systemd starts it again, as a standby).

A SQLite store has one box and one daemon: no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

log = structlog.get_logger("tocsin")

TRY_EVERY = 5.0  # seconds between a standby's tries for the lock
CHECK_EVERY = 5.0  # seconds between the holder's checks of its connection
CHECK_TIMEOUT = 5.0  # a check that takes longer failed


def lock_key(name: str = "") -> int:
    """The advisory lock's 64-bit key for the probing of `name` (a site; "" for the one)."""
    digest = hashlib.sha256(f"tocsin probing {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ProbingLock:
    def __init__(
        self,
        url: str,
        key: int | None = None,
        *,
        try_every: float = TRY_EVERY,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._engine = create_async_engine(make_url(url), poolclass=NullPool)
        self._key = lock_key() if key is None else key
        self._try_every = try_every
        self._check_every = check_every
        self._conn: AsyncConnection | None = None

    async def acquire(self, stop: asyncio.Event, on_wait: Callable[[], None]) -> bool:
        """Take the lock, trying every `try_every` seconds; `on_wait` is called once, when the
        first try finds it held (or the database unreachable). False: `stop` was set first."""
        told = False
        unreachable = ""
        while not stop.is_set():
            try:
                if await self._try():
                    return True
            except Exception as exc:  # the database is down: keep trying, say so once
                cause = type(exc).__name__
                if cause != unreachable:
                    log.warning("probing lock: cannot reach the database", error=cause)
                    unreachable = cause
            if not told:
                told = True
                on_wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._try_every):
                    await stop.wait()
        return False

    async def _try(self) -> bool:
        if self._conn is None:
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            statement = text("SELECT pg_try_advisory_lock(:key)")
            return bool((await self._conn.execute(statement, {"key": self._key})).scalar())
        except Exception:
            await self._drop()
            raise

    async def hold(self) -> None:
        """Return when the lock may have been lost: its connection failed a check."""
        while True:
            await asyncio.sleep(self._check_every)
            try:
                assert self._conn is not None
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await self._conn.execute(text("SELECT 1"))
            except Exception:
                await self._drop()
                return

    async def _drop(self, *, broken: bool = True) -> None:
        """Close the lock's connection; a `broken` one is not given back to be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if broken:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Give the lock back (ending its session) and close the connection."""
        await self._drop(broken=False)
        await self._engine.dispose()
