"""Shared fixtures: a real SQLite file per test, a store with an injected clock, settings from
inline TOML, and a real aiohttp server on a free loopback port."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests import pg
from tests.pg import PostgresServer
from tocsin.api.app import make_app
from tocsin.config import Settings, parse
from tocsin.db import migrate
from tocsin.db.engine import Database, open_database
from tocsin.tickets.store import TicketStore

# Real peers (mosquitto, snmpd) for the probe and end-to-end tests.
pytest_plugins = ["tests.peers"]

# Tokens the test config knows, by name: org acme has all three scopes, org beta one.
TOKENS = {
    "acme-write": ("acme", "write"),
    "acme-read": ("acme", "read"),
    "acme-workflow": ("acme", "workflow"),
    "beta-write": ("beta", "write"),
}


def token_value(name: str) -> str:
    return f"test-token-{name}"


@dataclass
class FakeClock:
    """A wall clock the test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime(2026, 1, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def config_text(db_url: str, *, report_issue_acme: bool = True, extra: str = "") -> str:
    lines = [
        "[server]",
        'listen = "127.0.0.1:0"',
        'public_url = "http://tocsin.test"',
        "[store]",
        f'url = "{db_url}"',
    ]
    for org, report in (("acme", report_issue_acme), ("beta", False)):
        lines += [
            "[[orgs]]",
            f'slug = "{org}"',
            f'name = "{org.title()} Inc"',
            f"report_issue = {'true' if report else 'false'}",
        ]
        for name, (token_org, scope) in TOKENS.items():
            if token_org == org:
                digest = hashlib.sha256(token_value(name).encode()).hexdigest()
                lines += [
                    "[[orgs.tokens]]",
                    f'name = "{name}"',
                    f'scope = "{scope}"',
                    f'token_sha256 = "{digest}"',
                ]
    return "\n".join(lines) + "\n" + extra


ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `engines` that uses the store runs once on each engine."""
    if "db_engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker("engines"):
        metafunc.parametrize("db_engine", ENGINES, indirect=True)


@pytest.fixture
def db_engine(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, its template database migrated once."""
    import asyncio

    with pg.running() as server:
        server.new_database(template=None)  # t1: migrated, then the template
        server.sql(f"ALTER DATABASE t1 RENAME TO {pg.TEMPLATE}")

        async def migrated() -> None:
            db = open_database(server.url(pg.TEMPLATE))
            try:
                await migrate.upgrade(db)
            finally:
                await db.dispose()

        asyncio.run(migrated())
        server.sql(f"ALTER DATABASE {pg.TEMPLATE} IS_TEMPLATE true")
        yield server


@pytest.fixture
def db_url(db_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if db_engine == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.url(server.new_database())
    return f"sqlite+aiosqlite:///{tmp_path / 'tocsin.db'}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = open_database(db_url)
    await migrate.upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
async def store(database: Database, clock: FakeClock) -> AsyncIterator[TicketStore]:
    ticket_store = TicketStore(database, clock=clock)
    ticket_store.start()
    yield ticket_store
    await ticket_store.close()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return parse(config_text(db_url))


@dataclass
class Api:
    """A client for the real server: `call(method, path, token=..., json=...)`."""

    session: aiohttp.ClientSession
    base: str

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "acme-write",
        **kwargs: object,
    ) -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {token_value(token)}"} if token else {}
        async with self.session.request(
            method,
            self.base + path,
            headers=headers,
            **kwargs,  # type: ignore[arg-type]
        ) as response:
            return response.status, await response.json()


ApiFactory = Callable[[Settings], "AsyncIterator[Api]"]


@pytest.fixture
async def api(settings: Settings, store: TicketStore) -> AsyncIterator[Api]:
    server = TestServer(make_app(settings, store), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Api(session, str(server.make_url("")).rstrip("/"))
    await server.close()


class Switchable:
    """A device's /health endpoint that answers 200, or 503 once `ok` is False."""

    def __init__(self) -> None:
        self.ok = True

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ok else 503)


@pytest.fixture
async def switchable() -> AsyncIterator[tuple[Switchable, str]]:
    """A real aiohttp device on a free loopback port: (its switch, its /health URL)."""
    state = Switchable()
    app = web.Application()
    app.router.add_get("/health", state.health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("/health"))
    await server.close()
