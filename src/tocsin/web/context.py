"""What the pages share: the API's context (store, orgs, tokens, the monitor's views), the
config's view for pages, the sessions and the live stream."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from aiohttp import web

from tocsin.api.context import ApiContext
from tocsin.config import Settings
from tocsin.monitor import states
from tocsin.tickets.model import State
from tocsin.tickets.store import TicketFilter, utcnow
from tocsin.web.live import Live
from tocsin.web.sessions import SessionBook
from tocsin.web.site import Site
from tocsin.web.throttle import LoginQueues


@dataclass
class WebContext:
    api: ApiContext
    site: Site
    sessions: SessionBook
    live: Live
    counts: Counts = field(default_factory=lambda: Counts())
    subjects: SubjectRows = field(default_factory=lambda: SubjectRows())
    clock: Callable[[], datetime] = utcnow  # sessions' start and expiry
    login_queues: LoginQueues = field(default_factory=lambda: LoginQueues())

    @property
    def settings(self) -> Settings:
        return self.site.settings

    @property
    def secure_cookies(self) -> bool:
        """Cookies only over https when the daemon is published as https."""
        return self.api.base_url.startswith("https://")

    def reload(self, settings: Settings) -> None:
        self.site.reload(settings)


K = TypeVar("K")
V = TypeVar("V")


class Kept(Generic[K, V]):
    """Values kept `ttl` seconds (at most `most` of them), made again once older."""

    def __init__(
        self, ttl: float, monotonic: Callable[[], float] = time.monotonic, most: int = 256
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._most = most
        self._kept: dict[K, tuple[float, V]] = {}

    async def get(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        now = self._monotonic()
        kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self._ttl:
            return kept[1]
        value = await make()
        if len(self._kept) >= self._most:  # searches make many keys: keep the latest
            self._kept.clear()
        self._kept[key] = (now, value)
        return value

    def clear(self) -> None:
        self._kept.clear()


class Counts(Kept[tuple[str, TicketFilter], dict[State, int]]):
    """The list's tab counts by (org, filters but the states), kept a few seconds: counting an
    org's tickets by state reads every one of them (9 ms at 100,000 in SQLite), and every view
    of the list shows them. A ticket write in this process clears them (`clear`, on the store's
    triggers); a write from another process (the CLI) shows within `ttl` seconds."""

    def __init__(self, ttl: float = 5.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl, monotonic)


class SubjectRows(Kept[str, list[states.StateRow]]):
    """An org's subjects as the monitor sees them, kept `ttl` seconds for every board and
    ticket page: building them reads each subject's tracker state (0.9 s at 100,000), and
    each open board reloads when health changes. The API's subjects answer stays live."""

    def __init__(self, ttl: float = 3.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl, monotonic)


WEB_CONTEXT = web.AppKey("web_context", WebContext)
