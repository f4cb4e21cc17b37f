"""Browser tests of the web pages: a real `tocsin run` subprocess per test module, real aiohttp
devices on loopback, and Debian's chromium driven by playwright's sync API (no downloaded
browser).

Playwright's sync API marks this thread's event loop as running between its calls, so nothing
here runs asyncio on the test's thread: the devices are served by a loop of their own thread,
and the daemon is started and asked with blocking calls. Tests are plain functions (no async).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from argon2 import PasswordHasher
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import Switchable
from tests.e2e.daemon import TOKEN as WRITE_TOKEN
from tests.e2e.daemon import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REFRESHED = re.compile(r"^\d+$")  # body[data-refreshed]: when a live update last came in
SCREENSHOTS = Path(os.environ.get("TOCSIN_SCREENSHOTS") or REPO / "artifacts" / "screenshots")

# Live updates take a second or two (coalesced events, then a fetch): room for a slow CI.
expect.set_options(timeout=10_000)

ORG = "acme"
READ_TOKEN = "web-read-token"
TOKENS = {"ops": ("write", WRITE_TOKEN), "wallboard": ("read", READ_TOKEN)}
# People who sign in with a name: name -> (role, password).
USERS = {"maria": ("write", "maria-says-open-sesame"), "rui": ("read", "rui-reads-only-9")}
# The config's devices: id -> (name, space id); the spaces: id -> name.
SPACES = {"plant-room": "Plant room", "lobby": "Lobby"}
DEVICES = {
    "chiller": ("Chiller 1", "plant-room"),
    "boiler": ("Boiler", "plant-room"),
    "door-panel": ("Door panel", "lobby"),
}


class Devices:
    """Real aiohttp devices on one free loopback port: `/health/<id>` answers 200, or 503 once
    `switches[id].ok` is False. Served by a loop of its own thread."""

    def __init__(self, ids: list[str]) -> None:
        self.switches = {ident: Switchable() for ident in ids}
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, ident: str) -> str:
        return f"http://127.0.0.1:{self.port}/health/{ident}"

    async def _health(self, request: web.Request) -> web.Response:
        return await self.switches[request.match_info["ident"]].health(request)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health/{ident}", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def web_config(port: int, devices: Devices | None, *, login_delay: str = "0s") -> str:
    """Org acme with Report issue on, a write and a read token, a write and a read user, and
    (given `devices`) three HTTP devices in two spaces, probed every 200 ms."""
    # Cheap hashing parameters: signing in costs the tests milliseconds, not a CPU second.
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        "[store]",
        'url = "sqlite+aiosqlite:///state/tocsin.db"',
        "[web]",
        f'login_delay = "{login_delay}"',
        "[monitor]",
        'debounce = "1s"',
        'recovery = "1s"',
        'interval = "200ms"',
        "[log]",
        'format = "json"',
        "[[orgs]]",
        f'slug = "{ORG}"',
        'name = "Acme Facilities"',
        "report_issue = true",
    ]
    for name, (scope, token) in TOKENS.items():
        digest = hashlib.sha256(token.encode()).hexdigest()
        lines += ["[[orgs.tokens]]", f'name = "{name}"', f'scope = "{scope}"']
        lines += [f'token_sha256 = "{digest}"']
    for name, (role, password) in USERS.items():
        lines += ["[[orgs.users]]", f'name = "{name}"', f'role = "{role}"']
        lines += [f'password_argon2 = "{hasher.hash(password)}"']
    if devices is not None:
        for ident, name in SPACES.items():
            lines += ["[[spaces]]", f'org = "{ORG}"', f'id = "{ident}"', f'name = "{name}"']
        for ident, (name, space) in DEVICES.items():
            lines += ["[[devices]]", f'org = "{ORG}"', f'id = "{ident}"', f'name = "{name}"']
            probe = f'{{ type = "http", url = "{devices.url(ident)}" }}'
            lines += [f'space = "{space}"', f"probe = {probe}"]
    return "\n".join(lines) + "\n"


class WebDaemon:
    """`python -m tocsin run --config FILE` (as tests/e2e's `Daemon`, but started, restarted
    and asked from sync code), with a small client for its API (the write token's unless
    told). Its log, JSON lines, is the file beside the config."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.base = f"http://127.0.0.1:{port}"
        self.log = config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start the process and return at once: `wait_ready` waits for it."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tocsin", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, within: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tocsin exited early:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass  # not listening yet, or not ready (503)
            time.sleep(0.05)  # the poll's pace
        raise AssertionError(f"tocsin did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.spawn()
        self.wait_ready()

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str = WRITE_TOKEN
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def open_ticket(
        self,
        *,
        kind: str = "door-stuck",
        name: str = "Front door",
        description: str = "It will not close.",
        source: str = "workflow",
    ) -> int:
        """A new ticket about a subject of its own (so tests never meet on one): its seq."""
        ident = uuid.uuid4().hex[:12]
        body: dict[str, Any] = {
            "source": source,
            "subject": {"type": "other", "id": f"web-{ident}", "name": name},
            "kind": kind,
            "description": description,
        }
        if source == "workflow":
            body["dedup_key"] = f"web-{ident}"
        status, answer = self.call("POST", f"/api/v1/orgs/{ORG}/tickets", body)
        assert status == 201, answer
        return int(answer["seq"])

    def ticket(self, seq: int) -> dict[str, Any]:
        status, answer = self.call("GET", f"/api/v1/orgs/{ORG}/tickets/{seq}")
        assert status == 200, answer
        result: dict[str, Any] = answer
        return result

    def act(self, seq: int, action: str, body: dict[str, Any] | None = None) -> None:
        status, answer = self.call("POST", f"/api/v1/orgs/{ORG}/tickets/{seq}/{action}", body)
        assert status in (200, 201), answer


@pytest.fixture(scope="module")
def devices() -> Iterator[Devices]:
    running = Devices(list(DEVICES))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def login_delay() -> str:
    """The module daemon's [web] login_delay: a failed sign-in answers at once, unless a
    module overrides this fixture."""
    return "0s"


@pytest.fixture(scope="module")
def spawned(
    tmp_path_factory: pytest.TempPathFactory, devices: Devices, login_delay: str
) -> Iterator[WebDaemon]:
    """The module's daemon, its process started but maybe not ready yet."""
    port = free_port()
    config = tmp_path_factory.mktemp("web") / "tocsin.toml"
    config.write_text(web_config(port, devices, login_delay=login_delay))
    running = WebDaemon(config, port)
    running.spawn()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def daemon(spawned: WebDaemon, browser: Browser) -> WebDaemon:
    """One daemon per test module, ready (it boots while the browser starts); tests stay
    apart by opening tickets of their own."""
    spawned.wait_ready()
    return spawned


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium; its absence fails the tests (they are not optional)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def sign_in(page: Page, who: str) -> None:
    """Sign in through the form: a user's name (with their password) or a token's name."""
    page.goto("/login")
    if who in USERS:
        form = page.locator("form#login-user")
        form.locator("input[name=username]").fill(who)
        form.locator("input[name=password]").fill(USERS[who][1])
    else:
        form = page.locator("form#login-token")
        form.locator("input[name=token]").fill(TOKENS[who][1])
    form.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(rf"/orgs/{ORG}/tickets$"))


class Visitors:
    """Browser contexts (a person each) for one test, closed when it ends. A person signs in
    through the form once per module; later contexts start from that session's cookies."""

    def __init__(self, browser: Browser, daemon: WebDaemon, sessions: dict[str, Any]) -> None:
        self.browser = browser
        self.daemon = daemon
        self._sessions = sessions
        self._contexts: list[BrowserContext] = []

    def page(
        self, who: str | None = None, at: str | None = None, *, fresh: bool = False, **options: Any
    ) -> Page:
        """A page in a context of its own, signed in as `who` (a user or token name; None:
        signed out) and open at `at` (default: the tickets list, or nothing when signed out).
        `fresh`: a session of its own, not the module's (to sign out). `options` go to
        `new_context`."""
        if who is None or fresh or who not in self._sessions:
            page = self._new_context(**options).new_page()
            if who is not None:
                sign_in(page, who)
                if not fresh:
                    self._sessions[who] = page.context.storage_state()
        else:
            page = self.context(who, **options).new_page()
            at = at or f"/orgs/{ORG}/tickets"
        if at is not None:
            page.goto(at)
        return page

    def context(self, who: str, **options: Any) -> BrowserContext:
        """A context of its own with `who`'s session cookie, and no page open yet."""
        if who not in self._sessions:
            self.page(who)
        return self._new_context(storage_state=self._sessions[who], **options)

    def _new_context(self, **options: Any) -> BrowserContext:
        context = self.browser.new_context(base_url=self.daemon.base, **options)
        context.set_default_timeout(10_000)
        self._contexts.append(context)
        return context

    def close(self) -> None:
        for context in self._contexts:
            context.close()


@pytest.fixture(scope="module")
def sessions() -> dict[str, Any]:
    """Signed-in browser state by person, kept for the module (its daemon's sessions)."""
    return {}


@pytest.fixture
def visitors(daemon: WebDaemon, browser: Browser, sessions: dict[str, Any]) -> Iterator[Visitors]:
    opened = Visitors(browser, daemon, sessions)
    yield opened
    opened.close()


def ticket_path(seq: int) -> str:
    return f"/orgs/{ORG}/tickets/{seq}"


def open_live(page: Page, path: str) -> None:
    """Open `path` and wait until its event stream is connected; mark the window (a reload
    would wipe the mark)."""
    with page.expect_response(lambda r: f"/orgs/{ORG}/live" in r.url) as stream:
        page.goto(path)
    assert stream.value.status == 200
    assert stream.value.headers["content-type"].startswith("text/event-stream")
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page: Page) -> bool:
    return page.evaluate("window.__notReloaded") is True
