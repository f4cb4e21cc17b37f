"""What the API's handlers share: the store, the tokens, the orgs and the public base URL."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tocsin.api.auth import TokenBook
from tocsin.api.errors import Handler
from tocsin.config import OrgConfig, Settings
from tocsin.tickets.store import TicketStore


@dataclass(frozen=True)
class ApiContext:
    store: TicketStore
    tokens: TokenBook
    orgs: dict[str, OrgConfig]
    base_url: str
    ping: Handler | None = None  # push heartbeats: the monitor's handler, when it has push subjects

    @classmethod
    def build(
        cls, settings: Settings, store: TicketStore, ping: Handler | None = None
    ) -> ApiContext:
        config = settings.config
        return cls(
            store=store,
            tokens=TokenBook(settings.tokens),
            orgs={org.slug: org for org in config.orgs},
            base_url=config.server.base_url,
            ping=ping,
        )

    def org(self, slug: str) -> OrgConfig | None:
        return self.orgs.get(slug)


API_CONTEXT = web.AppKey("api_context", ApiContext)
