"""What the pages share: the API's context (store, orgs, tokens, the monitor's views), the
config's view for pages, the sessions and the live stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from tocsin.api.context import ApiContext
from tocsin.config import Settings
from tocsin.tickets.store import utcnow
from tocsin.web.live import Live
from tocsin.web.sessions import SessionBook
from tocsin.web.site import Site


@dataclass
class WebContext:
    api: ApiContext
    site: Site
    sessions: SessionBook
    live: Live
    clock: Callable[[], datetime] = utcnow  # sessions' start and expiry
    # Per client address: a lock held while a sign-in (and a failure's wait) runs, and how
    # many are waiting for it, so guesses from one address queue up one by one.
    login_queues: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.site.settings

    @property
    def secure_cookies(self) -> bool:
        """Cookies only over https when the daemon is published as https."""
        return self.api.base_url.startswith("https://")

    def reload(self, settings: Settings) -> None:
        self.site.reload(settings)


WEB_CONTEXT = web.AppKey("web_context", WebContext)
