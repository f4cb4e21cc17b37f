"""End to end through `tocsin run` with real peers: 500 MQTT devices in 5 spaces go offline
within a few seconds: 5 tickets (Multiple devices offline, one a space) and 5 `ticket.opened`
webhooks, no device's own; a restart in the middle opens nothing twice; the devices come back
one space at a time, partly: a space with one device left keeps its ticket open; then every
ticket resolves."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.e2e.faults import receiver, secret_file, webhook_config
from tests.peers import Mosquitto
from tests.probes.test_mqtt_probe import publisher

SPACES = 5
PER_SPACE = 100


def device(space: int, n: int) -> str:
    return f"s{space}-dev-{n:03}"


def topic(space: int, n: int) -> str:
    return f"site/{device(space, n)}/status"


def write_config(tmp_path: Path, port: int, broker: Mosquitto, hook_url: str) -> Path:
    lines = [
        base_config(port, debounce="2s", recovery="1s"),
        f'[[mqtt.brokers]]\nname = "site"\nhost = "127.0.0.1"\nport = {broker.port}',
        webhook_config("ops", hook_url, secret_file(tmp_path / "hook.secret")),
    ]
    # Two spaces declared with names; the others only named by their devices.
    lines += [f'[[spaces]]\norg = "acme"\nid = "floor-{s}"\nname = "Floor {s}"' for s in (0, 1)]
    for s in range(SPACES):
        for n in range(PER_SPACE):
            lines += [
                f'[[devices]]\norg = "acme"\nid = "{device(s, n)}"\nname = "Device {s}/{n}"',
                f'space = "floor-{s}"',
                f'probe = {{ type = "mqtt", broker = "site", status_topic = "{topic(s, n)}" }}',
            ]
    config = tmp_path / "tocsin.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


async def publish(broker: Mosquitto, topics: list[str], payload: bytes) -> None:
    async with publisher(broker) as client:
        for name in topics:
            await client.publish(name, payload, qos=1, retain=True)


Row = tuple[str, str | None, int | None]


async def subjects(daemon: Daemon) -> dict[str, Row]:
    body = await daemon.get("/api/v1/orgs/acme/subjects")
    return {
        s["subject"]["id"]: (s["health"], s["no_ticket_because"], s["ticket_seq"])
        for s in body["subjects"]
    }


def devices_up(found: dict[str, Row]) -> bool:
    rows = [row for name, row in found.items() if "-dev-" in name]
    return len(rows) == SPACES * PER_SPACE and {health for health, _, _ in rows} == {"up"}


async def test_500_devices_in_5_spaces_offline_are_5_tickets(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    every = [topic(s, n) for s in range(SPACES) for n in range(PER_SPACE)]
    async with receiver() as hooks:
        port = free_port()
        daemon = Daemon(write_config(tmp_path, port, mosquitto, hooks.url), port)
        await daemon.start()
        try:
            await publish(mosquitto, every, b"online")
            await eventually(lambda: subjects(daemon), devices_up, what="all up")

            # Offline within a few seconds, in a random order across the spaces.
            order = list(every)
            random.Random(9).shuffle(order)
            for part in range(4):
                await publish(mosquitto, order[part * 125 : (part + 1) * 125], b"offline")
                await asyncio.sleep(1)
            found = await eventually(
                lambda: daemon.tickets(),
                lambda t: len(t) >= SPACES,
                within=30,
                what="the spaces' tickets",
            )
            await asyncio.sleep(3)  # any device ticket would open within this
            found = await daemon.tickets()
            assert sorted(t["subject"]["id"] for t in found) == [f"floor-{s}" for s in range(5)]
            assert {t["kind"] for t in found} == {"multiple_devices_offline"}
            assert {t["subject"]["type"] for t in found} == {"space"}
            seqs = {t["subject"]["id"]: t["seq"] for t in found}
            opened = await eventually(
                hooks.opened_soon, lambda o: len(o) >= SPACES, what="5 ticket.opened webhooks"
            )
            assert sorted(d.subject_id or "" for d in opened) == sorted(seqs)
            rows = await eventually(
                lambda: subjects(daemon),
                lambda r: {r[device(s, 7)][1] for s in range(SPACES)}
                == {f"group #{seqs[f'floor-{s}']}" for s in range(SPACES)},
                what="devices: no ticket because of their group",
            )
            assert rows["floor-0"][0] == "down"
            ticket = await eventually(
                lambda: daemon.ticket(seqs["floor-3"]),
                lambda t: f"({PER_SPACE}, {PER_SPACE} still offline)" in t["description"],
                what="the members listed",
            )
            assert f"`{device(3, 99)}`: offline" in ticket["description"]

            # A restart mid-outage: nothing opens twice, no member is lost.
            assert daemon.stop() == 0
            await daemon.start()
            await asyncio.sleep(4)  # past the debounce
            assert len(await daemon.tickets()) == SPACES
            assert len(hooks.opened()) == SPACES

            # Floor 0 comes back but one device; the others come back whole.
            back = [t for t in every if not t.startswith(f"site/{device(0, 42)}/")]
            await publish(mosquitto, back, b"online")
            for s in range(1, SPACES):
                await eventually(
                    lambda s=s: daemon.ticket(seqs[f"floor-{s}"]),
                    lambda t: t["state"] == "resolved",
                    within=20,
                    what=f"floor-{s} resolved",
                )
            left = await daemon.ticket(seqs["floor-0"])
            assert left["state"] == "open"
            assert f"`{device(0, 42)}`: offline" in left["description"]
            assert f"({PER_SPACE}, 1 still offline)" in left["description"]
            await publish(mosquitto, [topic(0, 42)], b"online")
            await eventually(
                lambda: daemon.ticket(seqs["floor-0"]),
                lambda t: t["state"] == "resolved",
                what="floor-0 resolved",
            )
            assert len(await daemon.tickets()) == SPACES  # nothing else, ever
            assert len(hooks.opened()) == SPACES
        finally:
            if daemon.process is not None and daemon.process.poll() is None:
                assert daemon.stop() == 0
