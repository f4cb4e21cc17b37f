"""Failed sign-ins are slowed: attempts from one address take turns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class LoginQueues:
    """Per client address, a lock held while a sign-in (and a failure's wait) runs, so guesses
    from one address wait their turn; an address's entry goes once nobody there waits. Behind
    a reverse proxy every client has the proxy's address, and so one queue."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[None]:
        lock, waiting = self._entries.setdefault(client, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if not waiting[0]:
                del self._entries[client]
