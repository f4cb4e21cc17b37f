"""Webhook delivery in a process of its own (`python -m tocsin.delivery.process`).

In a storm (5,000 tickets in a second) the daemon's one process opened the tickets, stepped the
tracker and sent the webhooks on one GIL: each waited for the others, and the webhooks ran at a
tenth of a bare client's rate. Here the same DeliveryWorker runs in a child with its own
connection to the store (the outbox is the database: fan-out, claims and outcomes are
transactions, safe beside the daemon's writer; SQLite's writers take turns with BEGIN
IMMEDIATE), on the other core.

The daemon writes one pickle to the child's stdin (the store URL, the endpoints with their keys,
the delivery settings, the log settings) and keeps the pipe open: a byte on it later says that
the daemon's tickets fired triggers (the child looks at once, not at its next poll); closing it
stops the child,
which finishes or gives back the attempts in flight, as an in-process worker does. The child
ignores SIGINT/SIGTERM (systemd signals the whole unit) and exits when its stdin ends, so also
when the daemon dies. A child that exits unasked is started again after a pause that doubles up
to 30 s while it keeps failing. Its log lines go to the daemon's stdout, as the daemon's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog

from tocsin import logs
from tocsin.db.engine import open_database
from tocsin.delivery.endpoints import DeliverySettings, Endpoint
from tocsin.delivery.worker import STOP_GRACE, DeliveryWorker
from tocsin.restarts import Backoff
from tocsin.tickets.store import TicketStore
from tocsin.waits import first

log = structlog.get_logger("tocsin.webhooks")

STOP_SECONDS = STOP_GRACE + 5.0  # its grace for attempts in flight, then closing the store


class DeliveryProcess:
    """The daemon's side: keeps one delivery child running until `stop`."""

    def __init__(
        self,
        store_url: str,
        endpoints: Sequence[Endpoint],
        settings: DeliverySettings,
        *,
        log_level: str = "info",
        log_format: str = "auto",
        nudged_by: TicketStore | None = None,
    ) -> None:
        self._nudged_by = nudged_by  # the daemon's store: its triggers wake the child
        self._hello = {
            "store_url": store_url,
            "endpoints": tuple(endpoints),
            "settings": settings,
            "log_level": log_level,
            "log_format": log_format,
        }

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            began = time.monotonic()
            code = await self._serve(stop)
            if stop.is_set():
                return
            pause = backoff.pause(time.monotonic() - began)
            log.error(
                "webhook delivery process exited; starting it again",
                exit_code=code,
                in_seconds=pause,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()

    async def _serve(self, stop: asyncio.Event) -> int | None:
        """One child, from spawn to exit; return its exit code."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tocsin.delivery.process", stdin=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.error("webhook delivery process could not start", error=str(exc))
            return None
        stdin = process.stdin
        assert stdin is not None

        def nudge() -> None:
            # One byte waiting is enough: the child looks at the whole outbox when it wakes.
            if not stdin.is_closing() and stdin.transport.get_write_buffer_size() == 0:
                with contextlib.suppress(ConnectionError):
                    stdin.write(b"\n")

        unwatch = self._nudged_by.on_triggers(nudge) if self._nudged_by else lambda: None
        try:
            stdin.write(pickle.dumps(self._hello, protocol=pickle.HIGHEST_PROTOCOL))
            with contextlib.suppress(ConnectionError):
                await stdin.drain()
            await first(process.wait(), stop.wait())
            if process.returncode is not None:
                return process.returncode
            return await self._stop(process)
        finally:
            unwatch()
            if process.returncode is None:  # cancelled: the daemon is going down
                process.kill()
                await process.wait()

    async def _stop(self, process: asyncio.subprocess.Process) -> int:
        """Close its stdin (the child's cue) and give it time to finish what is in flight."""
        assert process.stdin is not None
        process.stdin.close()
        try:
            async with asyncio.timeout(STOP_SECONDS):
                return await process.wait()
        except TimeoutError:
            log.warning("webhook delivery process did not stop in time; killed", pid=process.pid)
            process.kill()
            return await process.wait()


async def serve(hello: dict[str, Any]) -> None:
    """The child's side: deliver until stdin ends."""
    db = open_database(hello["store_url"])
    # Its writes fail when the daemon's do: the daemon's store health says so once; this
    # child's delivery loop logs "webhook delivery cannot reach the store" with the cause.
    store = TicketStore(db, announce=False)
    store.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        worker = DeliveryWorker(store, hello["endpoints"], hello["settings"])

        def read_until_closed() -> None:
            with contextlib.suppress(OSError):
                while os.read(0, 65536):  # the daemon's nudge: triggers fired
                    loop.call_soon_threadsafe(worker.wake)
            loop.call_soon_threadsafe(stop.set)

        # A daemon thread: the interpreter must not wait for it if delivery ends another way.
        threading.Thread(target=read_until_closed, name="stdin", daemon=True).start()
        await worker.run(stop)
    finally:
        await store.close()
        await db.dispose()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us by closing stdin
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        hello: dict[str, Any] = pickle.load(sys.stdin.buffer)
    except (EOFError, pickle.UnpicklingError):
        return  # the daemon went away before it said anything
    logs.configure(hello["log_level"], hello["log_format"])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(hello))


if __name__ == "__main__":
    main()
