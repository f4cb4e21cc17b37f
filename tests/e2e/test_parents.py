"""End to end through `tocsin run` with real peers: a riser switch (an HTTP device) goes down and
its 200 MQTT cameras, which depend on it, go offline: one ticket, the switch's, listing them
unreachable; the subjects API says why the cameras have none. They come back, then the
switch: its ticket resolves and nothing else ever opened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Switchable
from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.peers import Mosquitto
from tests.probes.test_mqtt_probe import publisher

CAMERAS = 200


def status(n: int) -> str:
    return f"floor2/cam-{n:03}/status"


def write_config(tmp_path: Path, port: int, broker: Mosquitto, switch_url: str) -> Path:
    lines = [
        base_config(port, interval="200ms", debounce="1500ms", recovery="500ms"),
        f'[[mqtt.brokers]]\nname = "site"\nhost = "127.0.0.1"\nport = {broker.port}',
        '[[devices]]\norg = "acme"\nid = "sw-riser-2"\nname = "Riser switch 2"',
        f'probe = {{ type = "http", url = "{switch_url}", timeout = "500ms" }}',
    ]
    for n in range(CAMERAS):
        lines += [
            f'[[devices]]\norg = "acme"\nid = "cam-{n:03}"\nname = "Camera {n}"',
            'depends_on = ["sw-riser-2"]',
            f'probe = {{ type = "mqtt", broker = "site", status_topic = "{status(n)}" }}',
        ]
    config = tmp_path / "tocsin.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture
async def daemon(
    tmp_path: Path, mosquitto: Mosquitto, switchable: tuple[Switchable, str]
) -> AsyncIterator[Daemon]:
    port = free_port()
    process = Daemon(write_config(tmp_path, port, mosquitto, switchable[1]), port)
    await process.start()
    yield process
    if process.process is not None and process.process.poll() is None:
        assert process.stop() == 0


async def publish_all(broker: Mosquitto, payload: bytes) -> None:
    async with publisher(broker) as client:
        for n in range(CAMERAS):
            await client.publish(status(n), payload, qos=1, retain=True)


async def subjects(daemon: Daemon) -> dict[str, tuple[str, str | None, int | None]]:
    """Each subject's (health, no_ticket_because, ticket_seq): short, for failure messages."""
    body = await daemon.get("/api/v1/orgs/acme/subjects")
    return {
        s["subject"]["id"]: (s["health"], s["no_ticket_because"], s["ticket_seq"])
        for s in body["subjects"]
    }


def cameras(found: dict[str, tuple[str, str | None, int | None]]) -> set[Any]:
    """The distinct (health, why, seq) of the cameras."""
    return {value for name, value in found.items() if name.startswith("cam-")}


def everyone_up(found: dict[str, tuple[str, str | None, int | None]]) -> bool:
    return len(found) >= CAMERAS + 1 and {health for health, _, _ in found.values()} == {"up"}


async def test_a_switch_down_with_200_cameras_is_one_ticket(
    daemon: Daemon, mosquitto: Mosquitto, switchable: tuple[Switchable, str]
) -> None:
    state, _ = switchable
    await publish_all(mosquitto, b"online")
    await eventually(lambda: subjects(daemon), everyone_up, what="all up")
    state.ok = False  # the switch fails; its cameras' connections drop a moment later
    await eventually(
        lambda: subjects(daemon),
        lambda s: s["sw-riser-2"][0] in ("failing", "down"),
        what="the switch failing",
    )
    await publish_all(mosquitto, b"offline")
    await eventually(
        lambda: subjects(daemon),
        lambda s: cameras(s) == {("unreachable", "parent sw-riser-2", None)},
        what="every camera unreachable, no ticket because of its parent",
    )
    tickets = await daemon.tickets()
    assert [t["subject"]["id"] for t in tickets] == ["sw-riser-2"]
    seq = tickets[0]["seq"]
    listed = await eventually(
        lambda: daemon.ticket(seq),
        lambda t: f"Unreachable while this is down** ({CAMERAS})" in t["description"],
        what="the cameras listed on the switch's ticket",
    )
    assert "`cam-000`" in listed["description"]
    assert "`cam-199`" in listed["description"]

    await publish_all(mosquitto, b"online")
    state.ok = True
    await eventually(
        lambda: daemon.ticket(seq), lambda t: t["state"] == "resolved", what="switch resolved"
    )
    found = await eventually(lambda: subjects(daemon), everyone_up, what="all up again")
    assert cameras(found) == {("up", None, None)}
    assert [t["subject"]["id"] for t in await daemon.tickets()] == ["sw-riser-2"]
