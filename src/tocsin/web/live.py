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
        # What changed, by (org, kind); the monitor's health view under ("", "subjects").
        self._versions: dict[tuple[str, str], int] = {}
        self._orgs_changed: set[str] = set()
        self._wake = asyncio.Event()  # set and replaced on every change
        self._closing = False
        self._listeners = 0
        self._poller: asyncio.Task[None] | None = None
        self._pending: asyncio.TimerHandle | None = None

    @property
    def listeners(self) -> int:
        return self._listeners

    def tickets_changed(self, orgs: frozenset[str]) -> None:
        """A ticket write of these orgs committed: tell their streams within EVERY seconds
        (coalesced; another org's pages hear nothing of it)."""
        if not self._listeners:
            return
        self._orgs_changed |= orgs
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self._every, self._fire)

    def _fire(self) -> None:
        self._pending = None
        for org in self._orgs_changed:
            self._bump(org, "tickets")
        self._orgs_changed.clear()
        self._notify()

    def _bump(self, org: str, kind: str) -> None:
        self._versions[org, kind] = self._versions.get((org, kind), 0) + 1

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
                self._bump("", "subjects")
                self._notify()

    async def stream(
        self,
        request: web.Request,
        org: str,
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
        keys = {kind: (org if kind == "tickets" else "", kind) for kind in kinds}

        def versions() -> dict[str, int]:
            return {kind: self._versions.get(key, 0) for kind, key in keys.items()}

        seen = versions()
        try:
            await response.write(b"retry: 5000\n\n")
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._keepalive)
                if self._closing or not await signed_in():
                    break
                now = versions()
                changed = [k for k in kinds if now[k] != seen[k]]
                seen = now
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
