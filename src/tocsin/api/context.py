"""What the API's handlers share: the store, the tokens, the orgs and the public base URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tocsin.api.auth import TokenBook
from tocsin.api.errors import Handler
from tocsin.config import OrgConfig, Settings
from tocsin.monitor.maintenance import Window
from tocsin.monitor.states import StateRow
from tocsin.tickets.store import TicketStore


@dataclass
class ApiContext:
    """Mutable on purpose: a config reload swaps tokens, orgs and base URL in place."""

    store: TicketStore
    tokens: TokenBook
    orgs: dict[str, OrgConfig]
    base_url: str
    ping: Handler | None = None  # push heartbeats: the monitor's handler, when it has push subjects
    # The monitor's live view of an org's subjects; without a monitor, or when the view says
    # None (a standby's monitor does not run), the last saved state.
    subjects: Callable[[str], list[StateRow] | None] | None = None
    # /metrics text, and what /readyz checks besides the store: name -> "ok" or what is wrong.
    metrics: Callable[[], Awaitable[bytes]] | None = None
    readiness: Callable[[], dict[str, str]] | None = None
    # The running monitor's maintenance windows of an org (the config's and the store's), and
    # how to tell it the store's changed (it reads them again at once); None without a monitor.
    maintenance: Callable[[str], list[Window]] | None = None
    maintenance_changed: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: TicketStore,
        ping: Handler | None = None,
        subjects: Callable[[str], list[StateRow] | None] | None = None,
    ) -> ApiContext:
        config = settings.config
        return cls(
            store=store,
            tokens=TokenBook(settings.tokens),
            orgs={org.slug: org for org in config.orgs},
            base_url=config.server.base_url,
            ping=ping,
            subjects=subjects,
        )

    def reload(self, settings: Settings) -> None:
        fresh = ApiContext.build(settings, self.store, self.ping)
        self.tokens, self.orgs, self.base_url = fresh.tokens, fresh.orgs, fresh.base_url

    def org(self, slug: str) -> OrgConfig | None:
        return self.orgs.get(slug)


API_CONTEXT = web.AppKey("api_context", ApiContext)
