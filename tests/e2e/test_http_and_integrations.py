"""End to end through `tocsin run`: an HTTP device and an integration's credentials fail and
recover against real aiohttp servers; tickets open after the debounce, auto-resolve, reopen
inside the window and come anew after it; a restart mid-outage duplicates nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.e2e.daemon import Daemon, base_config, eventually, free_port

DEBOUNCE = 1.0
RECOVERY = 1.0
REOPEN_WINDOW = 6.0


class Site:
    """A device answering /health and a cloud API checking a bearer token, both switchable."""

    def __init__(self) -> None:
        self.device_ok = True
        self.valid_tokens = {"bms-secret-1"}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/me", self.me)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": self.device_ok}, status=200 if self.device_ok else 503)

    async def me(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"user": "tocsin"})


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, str]]:
    state = Site()
    server = TestServer(state.app(), host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


def write_config(tmp_path: Path, device_url: str, port: int) -> Path:
    """Short windows, a 200 ms probe interval, one HTTP device and one integration."""
    (tmp_path / "bms-token").write_text("bms-secret-1\n")
    config = tmp_path / "tocsin.toml"
    windows = {
        "debounce": f"{DEBOUNCE}s",
        "recovery": f"{RECOVERY}s",
        "reopen_window": f"{REOPEN_WINDOW}s",
    }
    config.write_text(
        base_config(port, **windows)
        + f"""
[[devices]]
org = "acme"
id = "cam-1"
name = "Lobby camera"
probe = {{ type = "http", url = "{device_url}/health", timeout = "1s" }}
[[integrations]]
org = "acme"
id = "bms"
name = "BMS cloud"
check = {{ type = "http", url = "{device_url}/api/me", timeout = "1s", \
          auth = {{ bearer_file = "bms-token" }} }}
"""
    )
    return config


@pytest.fixture
async def daemon(tmp_path: Path, site: tuple[Site, str]) -> AsyncIterator[Daemon]:
    port = free_port()
    process = Daemon(write_config(tmp_path, site[1], port), port)
    await process.start()
    yield process
    if process.process is not None and process.process.poll() is None:
        assert process.stop() == 0


def of(subject_id: str, tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tickets if t["subject"]["id"] == subject_id]


def events(ticket: dict[str, Any]) -> list[str]:
    return [e["type"] for e in ticket["timeline"] if e["type"] != "comment"]


async def test_a_device_outage_opens_resolves_reopens_and_later_opens_anew(
    daemon: Daemon, site: tuple[Site, str]
) -> None:
    state, _ = site
    cam = lambda tickets: of("cam-1", tickets)  # noqa: E731

    failed_at = time.monotonic()
    state.device_ok = False
    opened = await eventually(daemon.tickets, lambda t: len(cam(t)) == 1, what="ticket opened")
    assert time.monotonic() - failed_at >= DEBOUNCE  # not before the debounce window
    ticket = cam(opened)[0]
    assert ticket["source"] == "health_monitor"
    assert ticket["kind"] == "device_offline"
    assert ticket["state"] == "open"
    assert "HTTP 503" in ticket["description"]
    seq = ticket["seq"]

    state.device_ok = True
    await eventually(
        lambda: daemon.ticket(seq), lambda t: t["state"] == "resolved", what="auto-resolved"
    )
    resolved_at = time.monotonic()

    state.device_ok = False  # inside the reopen window
    reopened = await eventually(
        lambda: daemon.ticket(seq), lambda t: t["state"] == "open", what="reopened"
    )
    assert time.monotonic() - resolved_at < REOPEN_WINDOW
    assert events(reopened) == ["opened", "resolved", "reopened"]
    assert reopened["timeline"][-1]["actor"]["type"] == "health_monitor" or any(
        e["type"] == "reopened" and e["actor"]["type"] == "health_monitor"
        for e in reopened["timeline"]
    )

    state.device_ok = True
    await eventually(
        lambda: daemon.ticket(seq), lambda t: t["state"] == "resolved", what="resolved again"
    )
    # Healthy until the reopen window has run out (nothing may change meanwhile) ...
    deadline = time.monotonic() + REOPEN_WINDOW + 0.5
    while time.monotonic() < deadline:
        assert [t["state"] for t in cam(await daemon.tickets())] == ["resolved"]
    state.device_ok = False  # ... then a failure: a new ticket
    fresh = await eventually(daemon.tickets, lambda t: len(cam(t)) == 2, what="a new ticket")
    assert cam(fresh)[1]["seq"] != seq
    assert (await daemon.ticket(seq))["state"] == "resolved"


async def test_a_revoked_integration_token_opens_a_credentials_ticket(
    daemon: Daemon, site: tuple[Site, str]
) -> None:
    state, _ = site
    bms = lambda tickets: of("bms", tickets)  # noqa: E731
    state.valid_tokens.clear()  # the provider revoked tocsin's token
    opened = await eventually(daemon.tickets, lambda t: len(bms(t)) == 1, what="ticket opened")
    ticket = bms(opened)[0]
    assert ticket["kind"] == "integration_credentials_invalid"
    assert ticket["subject"]["type"] == "integration"
    assert "bms-secret-1" not in str(await daemon.ticket(ticket["seq"]))
    state.valid_tokens.add("bms-secret-1")  # restored
    await eventually(
        lambda: daemon.ticket(ticket["seq"]),
        lambda t: t["state"] == "resolved",
        what="auto-resolved",
    )


async def test_a_restart_mid_outage_neither_duplicates_nor_falsely_resolves(
    daemon: Daemon, site: tuple[Site, str]
) -> None:
    state, _ = site
    cam = lambda tickets: of("cam-1", tickets)  # noqa: E731
    state.device_ok = False
    opened = await eventually(daemon.tickets, lambda t: len(cam(t)) == 1, what="ticket opened")
    seq = cam(opened)[0]["seq"]
    assert daemon.stop() == 0
    await daemon.start()
    # Failing across several debounce windows after the restart: still the one ticket.
    deadline = time.monotonic() + 3 * DEBOUNCE
    while time.monotonic() < deadline:
        tickets = await daemon.tickets()
        assert [t["seq"] for t in cam(tickets)] == [seq]
        assert cam(tickets)[0]["state"] == "open"
    subjects = await daemon.get("/api/v1/orgs/acme/subjects")
    cam_state = next(s for s in subjects["subjects"] if s["subject"]["id"] == "cam-1")
    assert cam_state["ticket_seq"] == seq
    state.device_ok = True
    await eventually(
        lambda: daemon.ticket(seq),
        lambda t: t["state"] == "resolved",
        what="resolved after recovery",
    )
    assert len(cam(await daemon.tickets())) == 1
