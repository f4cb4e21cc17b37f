"""Pages served by the real aiohttp app on a free loopback port, a real SQLite file, and a
browser-like client: a cookie jar, forms posted with the CSRF token the page gave."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from argon2 import PasswordHasher

from tests.conftest import FakeClock
from tocsin.api.app import make_app
from tocsin.config import Settings, parse
from tocsin.monitor import states
from tocsin.probes.observation import SubjectKey
from tocsin.tickets.model import Actor, Source, Subject, SubjectType
from tocsin.tickets.store import TicketStore
from tocsin.tickets.writes import OpenRequest
from tocsin.web.app import add_pages
from tocsin.web.context import WEB_CONTEXT

TOKENS = {"ops": "write", "viewer": "read", "robot": "workflow"}
USERS = {"maria": ("write", "maria-password"), "rui": ("read", "rui-password")}
_hasher = PasswordHasher(time_cost=1, memory_cost=8192)  # quick, and still argon2id
HASHES = {name: _hasher.hash(password) for name, (_, password) in USERS.items()}


def token_value(name: str) -> str:
    return f"page-token-{name}"


def site_config(
    db_url: str,
    *,
    public_url: str = "http://127.0.0.1",
    report_issue: bool = True,
    users: dict[str, tuple[str, str]] = USERS,
    extra: str = "",
) -> str:
    lines = [
        "[server]",
        'listen = "127.0.0.1:0"',
        f'public_url = "{public_url}"',
        "[store]",
        f'url = "{db_url}"',
        "[web]",
        'login_delay = "0s"',
        'session_lifetime = "2h"',
        "[[orgs]]",
        'slug = "acme"',
        'name = "Acme Facilities"',
        f"report_issue = {'true' if report_issue else 'false'}",
    ]
    for name, scope in TOKENS.items():
        digest = hashlib.sha256(token_value(name).encode()).hexdigest()
        lines += ["[[orgs.tokens]]", f'name = "{name}"', f'scope = "{scope}"']
        lines += [f'token_sha256 = "{digest}"']
    for name, (role, password) in users.items():
        known = USERS.get(name, ("", ""))[1] == password
        hashed = HASHES[name] if known else _hasher.hash(password)
        lines += ["[[orgs.users]]", f'name = "{name}"', f'role = "{role}"']
        lines += [f'password_argon2 = "{hashed}"']
    beta = hashlib.sha256(token_value("beta").encode()).hexdigest()
    lines += ["[[orgs]]", 'slug = "beta"', 'name = "Beta"', "[[orgs.tokens]]"]
    lines += ['name = "beta-ops"', 'scope = "write"', f'token_sha256 = "{beta}"']
    devices = [("cam-1", "Lobby camera", "lobby"), ("cam-2", "Dock camera", "dock")]
    for ident, name, space in devices:
        lines += ["[[devices]]", 'org = "acme"', f'id = "{ident}"', f'name = "{name}"']
        lines += [f'space = "{space}"', 'probe = { type = "http", url = "http://127.0.0.1:9/" }']
    lines += ["[[spaces]]", 'org = "acme"', 'id = "lobby"', 'name = "Main lobby"']
    return "\n".join(lines) + "\n" + extra


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    url: str
    html: str
    headers: Any

    @property
    def csrf(self) -> str:
        found = CSRF.search(self.html)
        assert found, "the page has no form with a CSRF token"
        return found.group(1)

    def seqs(self) -> list[int]:
        return [int(s) for s in re.findall(r'data-seq="(\d+)"', self.html)]

    def events(self) -> list[str]:
        return re.findall(r'data-event="([a-z_]+)"', self.html)

    def actions(self) -> list[str]:
        return re.findall(r'data-action="([a-z]+)"', self.html)

    def alert(self) -> str:
        found = re.search(r'role="alert">([^<]*)<', self.html)
        return unescape(found.group(1)) if found else ""


class Browser:
    """One person's browser: its own cookies; forms carry the CSRF token of the page shown."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.csrf = ""

    async def get(self, path: str) -> Page:
        async with self.session.get(self.base + path) as response:
            page = Page(response.status, str(response.url), await response.text(), response.headers)
        if CSRF.search(page.html):
            self.csrf = page.csrf
        return page

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> Page:
        form = {"csrf": self.csrf, **data} if csrf else dict(data)
        async with self.session.post(self.base + path, data=form) as response:
            page = Page(response.status, str(response.url), await response.text(), response.headers)
        if CSRF.search(page.html):
            self.csrf = page.csrf
        return page

    async def sign_in(self, **fields: str) -> Page:
        await self.get("/login")
        return await self.post("/login", fields)

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None


@dataclass
class Site:
    settings: Settings
    store: TicketStore
    base: str
    server: TestServer
    browsers: list[aiohttp.ClientSession]

    async def browser(self) -> Browser:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.browsers.append(session)
        return Browser(session, self.base)

    async def signed_in(self, token: str = "ops") -> Browser:
        browser = await self.browser()
        page = await browser.sign_in(token=token_value(token))
        assert page.status == 200, page.alert()
        return browser

    async def open(
        self,
        *,
        subject: tuple[str, str, str] = ("device", "cam-1", "Lobby camera"),
        kind: str = "device_offline",
        description: str = "It stopped answering.",
        source: Source = Source.WORKFLOW,
        key: str | None = None,
    ) -> int:
        kind_type, ident, name = subject
        change = await self.store.open(
            OpenRequest(
                org="acme",
                source=source,
                subject=Subject(SubjectType(kind_type), ident, name),
                kind=kind,
                description=description,
                actor=Actor.health_monitor(),
                dedup_key=key,
            )
        )
        return change.ticket.seq

    async def save_states(self, rows: list[states.StateRow]) -> None:
        """Subjects' health as a monitor would have saved it (what the pages read without
        one)."""
        await self.store.writer.run(lambda conn: states.save(conn, rows))


def state_row(
    kind: str,
    ident: str,
    name: str,
    health: str,
    *,
    ticket_seq: int | None = None,
    held_by: str | None = None,
    detail: str = "",
) -> states.StateRow:
    moment = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    return states.StateRow(
        key=SubjectKey("acme", kind, ident),
        name=name,
        health=health,
        flapping=False,
        since=moment,
        ticket_seq=ticket_seq,
        last_result={"at": moment.isoformat(), "health": health, "detail": detail},
        state={"held_by": held_by} if held_by else {},
        updated_at=moment,
    )


def site_app(settings: Settings, store: TicketStore) -> web.Application:
    """The API and the pages, wired as the daemon wires them (without a monitor)."""
    app = make_app(settings, store)
    add_pages(app, settings)
    return app


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, store: TicketStore, clock: FakeClock | None = None
) -> AsyncIterator[Site]:
    """The API and pages of `settings` on a free loopback port, until the block ends."""
    app = site_app(settings, store)
    if clock is not None:
        app[WEB_CONTEXT].clock = clock
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    running = Site(settings, store, str(server.make_url("")).rstrip("/"), server, [])
    try:
        yield running
    finally:
        for session in running.browsers:
            await session.close()
        await server.close()


@pytest.fixture
async def site(db_url: str, store: TicketStore, clock: FakeClock) -> AsyncIterator[Site]:
    async with serving(parse(site_config(db_url)), store, clock) as running:
        yield running


@pytest.fixture
def tmp_config(tmp_path: Path) -> Path:
    return tmp_path / "tocsin.toml"
