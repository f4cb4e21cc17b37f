"""Live updates for open pages over Server-Sent Events: `GET /orgs/{org}/live`.

One `Live` per daemon tells every stream what changed: "tickets" when a ticket write commits
(the store's trigger callback, and description edits), "subjects" when the monitor's health
view changed. Changes are coalesced (at most one event per kind every `EVERY` seconds, so a
storm of 5,000 tickets costs each browser a handful of reloads, not 5,000), and an idle stream
costs a comment every `KEEPALIVE` seconds and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

EVERY = 1.0  # s: the least time between two events of one kind
KEEPALIVE = 20.0  # s: a comment line, so proxies and browsers keep an idle stream open
POLL = 2.0  # s: how often the monitor's change marker is read while someone listens


class Live:
    def __init__(
        self,
        subjects_changed: Callable[[], float] | None = None,
        *,
        every: float = EVERY,
        keepalive: float = KEEPALIVE,
        poll: float = POLL,
    ) -> None:
        """`subjects_changed`: the monitor's marker of its last health change (any value that
        changes when the health board would)."""
        self._subjects_changed = subjects_changed
        self._every, self._keepalive, self._poll = every, keepalive, poll
        self._versions = {"tickets": 0, "subjects": 0}
        self._wake = asyncio.Event()  # set and replaced on every change
        self._closing = False
        self._listeners = 0
        self._poller: asyncio.Task[None] | None = None
        self._pending: asyncio.TimerHandle | None = None

    @property
    def listeners(self) -> int:
        return self._listeners

    def tickets_changed(self) -> None:
        """A ticket write committed: tell the streams within EVERY seconds (coalesced)."""
        if self._listeners and self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self._every, self._fire, "tickets")

    def _fire(self, kind: str) -> None:
        self._pending = None
        self._versions[kind] += 1
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _poll_subjects(self) -> None:
        assert self._subjects_changed is not None
        seen = self._subjects_changed()
        while True:
            await asyncio.sleep(self._poll)
            marker = self._subjects_changed()
            if marker != seen:
                seen = marker
                self._versions["subjects"] += 1
                self._notify()

    async def stream(
        self,
        request: web.Request,
        kinds: frozenset[str],
        signed_in: Callable[[], Awaitable[bool]],
    ) -> web.StreamResponse:
        """Serve one browser until it goes away, or its session ends (asked at each wake,
        at least every keepalive): an event named after what changed."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self._listeners += 1
        if self._poller is None and self._subjects_changed is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_subjects())
        seen = dict(self._versions)
        try:
            await response.write(b"retry: 5000\n\n")
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._keepalive)
                if self._closing or not await signed_in():
                    break
                changed = [k for k in kinds if self._versions[k] != seen[k]]
                seen = dict(self._versions)
                chunk = b"".join(f"event: {k}\ndata: {seen[k]}\n\n".encode() for k in changed)
                await response.write(chunk or b": idle\n\n")
        except ConnectionResetError:  # the browser went away
            pass
        finally:
            self._listeners -= 1
            if not self._listeners and self._poller is not None:
                self._poller.cancel()
                self._poller = None
        return response

    async def close(self) -> None:
        """End every stream (the daemon is stopping: browsers reconnect to the next one)."""
        self._closing = True
        self._notify()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
