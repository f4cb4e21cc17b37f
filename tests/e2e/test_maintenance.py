"""End to end through `tocsin run` with real peers: a maintenance window on a space, added
through the API, holds its devices while they go offline (probed, shown in maintenance, no
ticket, no webhook); when it ends, those still down open one group ticket a debounce later.
A device outside the space is not held."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.daemon import TOKEN, Daemon, base_config, eventually, free_port
from tests.e2e.faults import receiver, secret_file, webhook_config
from tests.peers import Mosquitto
from tests.probes.test_mqtt_probe import publisher

DEVICES = [f"cam-{n}" for n in range(6)]


def write_config(tmp_path: Path, port: int, broker: Mosquitto, hook_url: str) -> Path:
    lines = [
        base_config(port, debounce="1500ms", recovery="500ms"),
        f'[[mqtt.brokers]]\nname = "site"\nhost = "127.0.0.1"\nport = {broker.port}',
        webhook_config("ops", hook_url, secret_file(tmp_path / "hook.secret")),
    ]
    for device in [*DEVICES, "door-1"]:
        lines += [
            f'[[devices]]\norg = "acme"\nid = "{device}"\nname = "{device}"',
            *(['space = "lobby"'] if device != "door-1" else []),
            f'probe = {{ type = "mqtt", broker = "site", status_topic = "site/{device}/status" }}',
        ]
    config = tmp_path / "tocsin.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


async def publish(broker: Mosquitto, devices: list[str], payload: bytes) -> None:
    async with publisher(broker) as client:
        for device in devices:
            await client.publish(f"site/{device}/status", payload, qos=1, retain=True)


async def call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, daemon.base + path, json=body, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, (await response.json() if text else None)


async def subjects(daemon: Daemon) -> dict[str, dict[str, Any]]:
    body = await daemon.get("/api/v1/orgs/acme/subjects")
    return {s["subject"]["id"]: s for s in body["subjects"]}


async def test_a_window_on_a_space_holds_its_devices_and_releases_them_at_its_end(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with receiver() as hooks:
        port = free_port()
        daemon = Daemon(write_config(tmp_path, port, mosquitto, hooks.url), port)
        await daemon.start()
        try:
            await publish(mosquitto, [*DEVICES, "door-1"], b"online")
            await eventually(
                lambda: subjects(daemon),
                lambda s: all(s.get(d, {}).get("health") == "up" for d in [*DEVICES, "door-1"]),
                what="all up",
            )
            status, window = await call(
                daemon,
                "POST",
                "/api/v1/orgs/acme/maintenance",
                {"space": "lobby", "for": "6s", "reason": "re-cabling the lobby"},
            )
            assert status == 201, window
            ends = time.monotonic() + 6
            status, listed = await call(daemon, "GET", "/api/v1/orgs/acme/maintenance")
            assert status == 200
            assert [w["id"] for w in listed["windows"]] == [window["id"]]
            assert listed["windows"][0]["active"] is True

            await publish(mosquitto, [*DEVICES, "door-1"], b"offline")
            found = await eventually(
                lambda: subjects(daemon),
                lambda s: s["cam-0"]["health"] == "unreachable" and s["door-1"]["health"] == "down",
                what="cameras held past their debounce, the door ticketed",
            )
            assert found["cam-3"]["no_ticket_because"].startswith("maintenance until ")
            assert found["cam-3"]["maintenance_until"] is not None
            # The subjects view is the monitor's own: the door's ticket is written just after.
            tickets = await eventually(
                lambda: daemon.tickets(), lambda t: len(t) >= 1, within=3, what="the door's ticket"
            )
            assert [t["subject"]["id"] for t in tickets] == ["door-1"]
            assert time.monotonic() < ends  # all that inside the window

            # The window ends; the cameras are still down: one group ticket a debounce later.
            await asyncio.sleep(max(0.0, ends - time.monotonic()))
            tickets = await eventually(
                lambda: daemon.tickets(),
                lambda t: len(t) == 2,
                within=10,
                what="the lobby's group ticket after the window",
            )
            opened_at = time.monotonic()
            assert opened_at - ends >= 1.4  # a debounce (1.5 s) counted from the end
            assert [t["subject"]["id"] for t in tickets] == ["door-1", "lobby"]
            assert tickets[1]["kind"] == "multiple_devices_offline"
            await asyncio.sleep(2)
            assert len(await daemon.tickets()) == 2  # no camera's own
            assert sorted(d.subject_id or "" for d in hooks.opened()) == ["door-1", "lobby"]
            found = await subjects(daemon)
            assert found["cam-3"]["maintenance_until"] is None

            status, _ = await call(
                daemon, "DELETE", f"/api/v1/orgs/acme/maintenance/{window['id']}"
            )
            assert status == 204
        finally:
            if daemon.process is not None and daemon.process.poll() is None:
                assert daemon.stop() == 0


async def test_a_reload_adds_spaces_and_windows_and_takes_them_away(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGHUP with a [[spaces]] and a [[maintenance]] added, then without them: each applies
    at once, without a restart."""
    async with receiver() as hooks:
        port = free_port()
        path = write_config(tmp_path, port, mosquitto, hooks.url)
        plain = path.read_text().replace('space = "lobby"\n', "")
        path.write_text(plain)
        daemon = Daemon(path, port)
        await daemon.start()
        try:
            found = await subjects(daemon)
            assert "lobby" not in found
            start = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
            end = start + timedelta(hours=2)
            path.write_text(
                plain.replace('name = "door-1"\n', 'name = "door-1"\nspace = "hall"\n')
                + '\n[[spaces]]\norg = "acme"\nid = "hall"\nname = "Entrance hall"\n'
                + '\n[[maintenance]]\norg = "acme"\nspace = "hall"\nreason = "painting"\n'
                + f"start = {start.isoformat()}\nend = {end.isoformat()}\n"
            )
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            found = await eventually(
                lambda: subjects(daemon),
                lambda s: "hall" in s and s["door-1"]["maintenance_until"] is not None,
                what="the space and its window applied",
            )
            assert found["hall"]["subject"]["name"] == "Entrance hall"
            status, listed = await call(daemon, "GET", "/api/v1/orgs/acme/maintenance")
            assert status == 200
            assert [w["id"] for w in listed["windows"]] == ["config-1"]

            path.write_text(plain)
            daemon.process.send_signal(signal.SIGHUP)
            await eventually(
                lambda: subjects(daemon),
                lambda s: "hall" not in s and s["door-1"]["maintenance_until"] is None,
                what="the space and its window gone",
            )
            status, listed = await call(daemon, "GET", "/api/v1/orgs/acme/maintenance")
            assert listed["windows"] == []
        finally:
            if daemon.process is not None and daemon.process.poll() is None:
                assert daemon.stop() == 0
