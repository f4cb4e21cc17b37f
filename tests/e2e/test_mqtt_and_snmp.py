"""End to end through `tocsin run` with real peers: an MQTT device dies (its Last Will) and
comes back; an SNMP agent is stopped and started; the broker itself goes down, and its devices
are unknown then, not offline."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.peers import Mosquitto, Snmpd
from tests.probes.test_mqtt_probe import device_client, kill, publisher

STATUS = "site/sensor-1/status"


def write_config(tmp_path: Path, port: int, broker: Mosquitto, agent: Snmpd) -> Path:
    config = tmp_path / "tocsin.toml"
    config.write_text(
        base_config(port, interval="300ms", reopen_window="1h")
        + f"""
[[mqtt.brokers]]
name = "site"
host = "127.0.0.1"
port = {broker.port}
keepalive = "5s"
reconnect_min = "200ms"
reconnect_max = "500ms"
[[devices]]
org = "acme"
id = "sensor-1"
name = "Plant room sensor"
probe = {{ type = "mqtt", broker = "site", status_topic = "{STATUS}" }}
[[devices]]
org = "acme"
id = "switch-1"
name = "Core switch"
probe.type = "snmp"
probe.host = "127.0.0.1"
probe.port = {agent.port}
probe.community = "public"
probe.timeout = "300ms"
probe.retries = 0
"""
    )
    return config


@pytest.fixture
async def daemon(tmp_path: Path, mosquitto: Mosquitto, snmpd: Snmpd) -> AsyncIterator[Daemon]:
    port = free_port()
    process = Daemon(write_config(tmp_path, port, mosquitto, snmpd), port)
    await process.start()
    yield process
    if process.process is not None and process.process.poll() is None:
        assert process.stop() == 0


def of(subject_id: str, tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tickets if t["subject"]["id"] == subject_id]


async def subject(daemon: Daemon, subject_id: str) -> dict[str, Any]:
    body = await daemon.get("/api/v1/orgs/acme/subjects")
    found = [s for s in body["subjects"] if s["subject"]["id"] == subject_id]
    return found[0] if found else {}


async def test_an_mqtt_device_that_dies_opens_a_ticket_by_its_last_will(
    daemon: Daemon, mosquitto: Mosquitto
) -> None:
    async with device_client(mosquitto, "sensor-1", STATUS, b"offline") as device:
        async with publisher(mosquitto) as client:
            await client.publish(STATUS, b"online", qos=1, retain=True)
        await eventually(
            lambda: subject(daemon, "sensor-1"), lambda s: s.get("health") == "up", what="sensor up"
        )
        await kill(device)  # no DISCONNECT: the broker publishes the Will
        opened = await eventually(
            daemon.tickets, lambda t: len(of("sensor-1", t)) == 1, what="ticket opened"
        )
    ticket = of("sensor-1", opened)[0]
    assert ticket["kind"] == "device_offline"
    assert ticket["source"] == "health_monitor"
    async with publisher(mosquitto) as client:
        await client.publish(STATUS, b"online", qos=1, retain=True)
    await eventually(
        lambda: daemon.ticket(ticket["seq"]),
        lambda t: t["state"] == "resolved",
        what="auto-resolved",
    )


async def test_a_stopped_snmp_agent_opens_a_ticket_and_its_return_resolves_it(
    daemon: Daemon, snmpd: Snmpd
) -> None:
    await eventually(
        lambda: subject(daemon, "switch-1"), lambda s: s.get("health") == "up", what="switch up"
    )
    await snmpd.astop()
    opened = await eventually(
        daemon.tickets, lambda t: len(of("switch-1", t)) == 1, what="ticket opened"
    )
    ticket = of("switch-1", opened)[0]
    assert ticket["kind"] == "device_offline"
    assert "timeout" in ticket["description"].lower() or "no answer" in ticket["description"]
    await snmpd.astart()
    await eventually(
        lambda: daemon.ticket(ticket["seq"]),
        lambda t: t["state"] == "resolved",
        what="auto-resolved",
    )


async def test_a_broker_outage_is_the_brokers_ticket_and_its_devices_are_unknown(
    daemon: Daemon, mosquitto: Mosquitto
) -> None:
    async with publisher(mosquitto) as client:
        await client.publish(STATUS, b"online", qos=1, retain=True)
    await eventually(
        lambda: subject(daemon, "sensor-1"), lambda s: s.get("health") == "up", what="sensor up"
    )
    await mosquitto.astop()
    opened = await eventually(
        daemon.tickets, lambda t: len(of("mqtt-broker:site", t)) == 1, what="broker ticket"
    )
    broker_ticket = of("mqtt-broker:site", opened)[0]
    assert broker_ticket["kind"] == "integration_unreachable"
    assert broker_ticket["subject"]["type"] == "integration"
    sensor = await subject(daemon, "sensor-1")
    assert sensor["health"] == "unknown"
    async with aiohttp.ClientSession() as session, session.get(daemon.base + "/readyz") as ready:
        assert ready.status == 503
        assert (await ready.json())["checks"]["mqtt:site"] == "disconnected"
    assert of("sensor-1", await daemon.tickets()) == []  # unknown, not offline: no ticket
    with socket.socket() as probe:  # the broker's port is really closed
        assert probe.connect_ex(("127.0.0.1", mosquitto.port)) != 0
    await mosquitto.astart()
    await eventually(
        lambda: daemon.ticket(broker_ticket["seq"]),
        lambda t: t["state"] == "resolved",
        what="broker ticket resolved",
    )
    assert of("sensor-1", await daemon.tickets()) == []
