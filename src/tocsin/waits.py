"""A wait shared by the daemon, the monitor service and the delivery process (kept light: the
delivery child imports it without the monitor's probes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def first(*waits: Awaitable[object]) -> None:
    """Wait until the first of `waits` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
