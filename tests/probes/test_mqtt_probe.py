"""The MQTT broker monitor against a real mosquitto: status topics, Last Wills, heartbeats,
retained claims, discovery, Sparkplug B and the broker's own outages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trustme
from paho.mqtt import client as paho_client
from pydantic import ValidationError

from tests.peers import Mosquitto, binary, free_port
from tocsin.probes import mqtt
from tocsin.probes.base import ProbeContext
from tocsin.probes.mqtt import Arrivals, BrokerMonitor, BrokerSpec, DiscoverySpec, MqttProbeSpec
from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.probes.sparkplug import SparkplugError, decode_bdseq, parse_topic

WAIT = 5.0  # seconds any one expected observation may take
BROKER = SubjectKey("acme", "integration", "mqtt-broker:site")
CAM = SubjectKey("acme", "device", "cam-1")
DOOR = SubjectKey("acme", "device", "door-1")
NODE = SubjectKey("acme", "device", "plc-1")
NDEATH = "spBv1.0/plant/NDEATH/node1"
NBIRTH = "spBv1.0/plant/NBIRTH/node1"


class FakeMonotonic:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Observations:
    """The sink: every observation, queued per subject, for tests to await in order."""

    def __init__(self) -> None:
        self.queues: defaultdict[SubjectKey, asyncio.Queue[Observation]] = defaultdict(
            asyncio.Queue
        )

    def __call__(self, key: SubjectKey, observation: Observation, at: float | None = None) -> None:
        self.queues[key].put_nowait(observation)

    async def next(self, key: SubjectKey) -> Observation:
        try:
            return await asyncio.wait_for(self.queues[key].get(), WAIT)
        except TimeoutError:
            pytest.fail(f"no observation for {key} within {WAIT} s")

    async def until(self, key: SubjectKey, wanted: Callable[[Observation], bool]) -> Observation:
        """The first observation for `key` that is `wanted`, skipping others on the way."""
        while not wanted(observation := await self.next(key)):
            pass
        return observation

    def none_pending(self, key: SubjectKey) -> bool:
        return self.queues[key].empty()


@pytest.fixture
def observations() -> Observations:
    return Observations()


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def context(tmp_path: Path, clock: FakeMonotonic) -> ProbeContext:
    return ProbeContext(base_dir=tmp_path, environ={}, monotonic=clock)


def broker_spec(broker: Mosquitto | int, **fields: Any) -> BrokerSpec:
    port = broker if isinstance(broker, int) else broker.port
    values: dict[str, Any] = {
        "name": "site",
        "host": "127.0.0.1",
        "port": port,
        "keepalive": "5s",
        "connect_timeout": "2s",
        "reconnect_min": "100ms",
        "reconnect_max": "500ms",
    }
    return BrokerSpec.model_validate(values | fields)


def device(**fields: Any) -> MqttProbeSpec:
    return MqttProbeSpec.model_validate({"type": "mqtt", "broker": "site"} | fields)


def advance(monitor: BrokerMonitor, clock: FakeMonotonic, seconds: int) -> None:
    """Let `seconds` pass as the daemon does: a timeout check every second. (A check that
    comes more than 5 s after the one before reveals a stall, which no heartbeat counts.)"""
    for _ in range(seconds):
        clock.now += 1
        monitor.check_timeouts(clock())


@contextlib.asynccontextmanager
async def running(monitor: BrokerMonitor) -> AsyncIterator[BrokerMonitor]:
    task = asyncio.create_task(monitor.run())
    try:
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def publisher(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        yield client


@contextlib.asynccontextmanager
async def device_client(
    broker: Mosquitto, client_id: str, will_topic: str, will_payload: bytes
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real device connection with a Last Will (mosquitto_sub); yields once subscribed.
    Kill it with SIGKILL to make the broker send the Will."""
    process = await asyncio.create_subprocess_exec(
        *(binary("stdbuf"), "-oL"),  # line-buffered, so its debug lines arrive as they happen
        binary("mosquitto_sub"),
        *("-h", "127.0.0.1", "-p", str(broker.port), "-i", client_id, "-d", "-k", "5"),
        *("-t", f"cmd/{client_id}", "--will-topic", will_topic, "--will-qos", "1"),
        *("--will-payload", will_payload),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT):
            while b"received SUBACK" not in await process.stdout.readline():
                pass
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def kill(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()


def sparkplug_payload(bdseq: int, *, timestamp: int = 1_700_000_000_000) -> bytes:
    """A Sparkplug B Payload{timestamp, metrics: [Metric{name: "bdSeq", datatype: Int64 (4),
    long_value: bdseq}]} in protobuf wire format, written out field by field."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    name = b"bdSeq"
    metric = b"\x0a" + varint(len(name)) + name + b"\x20\x04" + b"\x58" + varint(bdseq)
    return b"\x08" + varint(timestamp) + b"\x12" + varint(len(metric)) + metric


# --- status topics and Last Wills ------------------------------------------------------


async def test_status_payloads_make_a_device_healthy_then_offline(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    monitor = BrokerMonitor(
        broker_spec(mosquitto),
        {CAM: device(status_topic="dev/cam-1/status")},
        observations,
        context,
    )
    async with running(monitor), publisher(mosquitto) as pub:
        broker = await observations.next(BROKER)
        assert broker.health is Health.HEALTHY
        assert monitor.connected

        await pub.publish("dev/cam-1/status", "online", qos=1)
        online = await observations.next(CAM)
        assert online.health is Health.HEALTHY
        assert "'online' on dev/cam-1/status" in online.detail

        await pub.publish("dev/cam-1/status", "offline", qos=1)
        offline = await observations.next(CAM)
        assert offline.health is Health.UNHEALTHY
        assert (offline.kind_hint, offline.error_class) == ("device_offline", "offline")


async def test_a_killed_device_is_reported_offline_through_its_last_will(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    topic = "tele/cam-1/LWT"  # Tasmota's spelling
    spec = device(status_topic=topic, online="Online", offline="Offline")
    monitor = BrokerMonitor(broker_spec(mosquitto), {CAM: spec}, observations, context)
    async with running(monitor), publisher(mosquitto) as pub:
        await observations.next(BROKER)
        async with device_client(mosquitto, "cam-1", topic, b"Offline") as cam:
            await pub.publish(topic, "Online", qos=1, retain=True)
            assert (await observations.next(CAM)).healthy

            await kill(cam)  # no DISCONNECT: the broker publishes the Will

            offline = await observations.next(CAM)
            assert (offline.health, offline.kind_hint) == (Health.UNHEALTHY, "device_offline")
            assert "'Offline' on tele/cam-1/LWT" in offline.detail


# --- heartbeats and retained claims ------------------------------------------------------


async def test_a_heartbeat_that_stops_times_out_and_recovers_with_the_next_message(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext, clock: FakeMonotonic
) -> None:
    subjects = {
        CAM: device(heartbeat_topic="dev/cam-1/telemetry", heartbeat_timeout="90s"),
        DOOR: device(heartbeat_topics=["dev/door-1/#"], heartbeat_timeout="90s"),
    }
    monitor = BrokerMonitor(broker_spec(mosquitto), subjects, observations, context)
    async with running(monitor), publisher(mosquitto) as pub:
        await observations.next(BROKER)
        await pub.publish("dev/cam-1/telemetry", '{"fps": 25}', qos=1)
        assert (await observations.next(CAM)).healthy

        advance(monitor, clock, 89)
        assert observations.none_pending(CAM)
        advance(monitor, clock, 2)

        late = await observations.next(CAM)
        assert (late.health, late.error_class) == (Health.UNHEALTHY, "heartbeat_timeout")
        assert "no message for 91 s" in late.detail
        silent = await observations.next(DOOR)  # never spoke since the subscription
        assert (silent.health, silent.error_class) == (Health.UNHEALTHY, "heartbeat_timeout")

        await pub.publish("dev/cam-1/telemetry", '{"fps": 25}', qos=1)
        assert (await observations.next(CAM)).healthy
        await pub.publish("dev/door-1/contact/state", "closed", qos=1)  # matches the wildcard
        assert (await observations.next(DOOR)).healthy


async def test_a_retained_online_without_heartbeat_counts_as_online(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    async with publisher(mosquitto) as pub:
        await pub.publish("dev/cam-1/status", "online", qos=1, retain=True)
    monitor = BrokerMonitor(
        broker_spec(mosquitto),
        {CAM: device(status_topic="dev/cam-1/status")},
        observations,
        context,
    )
    async with running(monitor):
        await observations.next(BROKER)
        online = await observations.next(CAM)

    assert online.health is Health.HEALTHY
    assert "retained 'online'" in online.detail


async def test_a_retained_online_older_than_the_heartbeat_timeout_is_stale(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext, clock: FakeMonotonic
) -> None:
    async with publisher(mosquitto) as pub:
        await pub.publish("dev/cam-1/status", "online", qos=1, retain=True)
    subjects = {
        CAM: device(status_topic="dev/cam-1/status", heartbeat_timeout="90s"),
        DOOR: device(status_topic="dev/door-1/status"),
    }
    monitor = BrokerMonitor(broker_spec(mosquitto), subjects, observations, context)
    async with running(monitor), publisher(mosquitto) as pub:
        await observations.next(BROKER)
        # The broker replays retained messages on SUBSCRIBE, before anything published later:
        # once DOOR's live message is in, CAM's retained claim has been seen too.
        await pub.publish("dev/door-1/status", "online", qos=1)
        assert (await observations.next(DOOR)).healthy
        assert observations.none_pending(CAM)  # a claim, not yet proof of life

        advance(monitor, clock, 91)

        stale = await observations.next(CAM)
        assert (stale.health, stale.error_class) == (Health.UNHEALTHY, "heartbeat_timeout")
        assert "retained 'online' on dev/cam-1/status is stale" in stale.detail

        await pub.publish("dev/cam-1/status", "online", qos=1)  # the device speaks for real
        assert (await observations.next(CAM)).healthy


# --- discovery -------------------------------------------------------------------------


async def test_devices_matching_a_discovery_pattern_become_subjects(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    discovery = {
        "pattern": "site/+/status",
        "org": "acme",
        "id_template": "sensor-{id}",
        "name_template": "Sensor {id}",
    }
    configured = SubjectKey("acme", "device", "sensor-t9")
    found: list[tuple[SubjectKey, str]] = []
    monitor = BrokerMonitor(
        broker_spec(mosquitto, discovery=[discovery]),
        {configured: device(status_topic="other/t9/state")},
        observations,
        context,
        on_discovered=lambda key, name: found.append((key, name)),
    )
    t1 = SubjectKey("acme", "device", "sensor-t1")
    t2 = SubjectKey("acme", "device", "sensor-t2")
    async with running(monitor), publisher(mosquitto) as pub:
        await observations.next(BROKER)
        await pub.publish("site/t1/status", "online", qos=1)
        await pub.publish("site/t9/status", "offline", qos=1)  # configured otherwise: ignored
        await pub.publish("site/t2/status", "offline", qos=1)
        await pub.publish("site/t1/status", "offline", qos=1)

        assert (await observations.next(t1)).healthy
        assert (await observations.next(t2)).error_class == "offline"
        assert (await observations.next(t1)).error_class == "offline"
        assert observations.none_pending(configured)

    assert found == [(t1, "Sensor t1"), (t2, "Sensor t2")]


# --- Sparkplug B -----------------------------------------------------------------------


async def test_sparkplug_birth_and_death_with_matching_bdseq(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    spec = device(sparkplug={"group_id": "plant", "edge_node_id": "node1"})
    monitor = BrokerMonitor(broker_spec(mosquitto), {NODE: spec}, observations, context)
    async with running(monitor), publisher(mosquitto) as pub:
        await observations.next(BROKER)
        async with device_client(mosquitto, "node1", NDEATH, sparkplug_payload(7)) as node:
            await pub.publish(NBIRTH, sparkplug_payload(7), qos=1)
            born = await observations.next(NODE)
            assert born.healthy
            assert "bdSeq 7" in born.detail

            await kill(node)

            dead = await observations.next(NODE)
            assert (dead.health, dead.error_class) == (Health.UNHEALTHY, "offline")
            assert "NDEATH" in dead.detail


async def test_a_sparkplug_death_with_an_older_bdseq_is_ignored(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    subjects = {
        NODE: device(sparkplug={"group_id": "plant", "edge_node_id": "node1"}),
        DOOR: device(status_topic="dev/door-1/status"),
    }
    monitor = BrokerMonitor(broker_spec(mosquitto), subjects, observations, context)
    async with running(monitor), publisher(mosquitto) as pub:
        await observations.next(BROKER)
        old_session = device_client(mosquitto, "node1-old", NDEATH, sparkplug_payload(4))
        async with old_session as old:
            await pub.publish(NBIRTH, sparkplug_payload(4), qos=1)
            assert (await observations.next(NODE)).healthy
            # The node reconnects and is born again before the broker notices the old session
            # is dead; the old session's Will then arrives after the new birth.
            await pub.publish(NBIRTH, sparkplug_payload(5), qos=1)
            await kill(old)

        await pub.publish("dev/door-1/status", "online", qos=1)  # a marker after the Will
        assert (await observations.next(DOOR)).healthy
        assert observations.none_pending(NODE)

        await pub.publish(NDEATH, sparkplug_payload(5), qos=1)
        dead = await observations.next(NODE)
        assert (dead.health, dead.error_class) == (Health.UNHEALTHY, "offline")


def test_the_bdseq_decoder_reads_known_sparkplug_bytes() -> None:
    # Payload{timestamp: 1, metrics: [Metric{name: "bdSeq", datatype: 8 (UInt64),
    # long_value: 5}]}, encoded by hand from sparkplug_b.proto's field numbers.
    known = bytes.fromhex("0801120b0a05" + b"bdSeq".hex() + "20085805")
    assert decode_bdseq(known) == 5
    assert decode_bdseq(sparkplug_payload(300)) == 300
    assert decode_bdseq(bytes.fromhex("0801")) is None  # no metrics
    with pytest.raises(SparkplugError):
        decode_bdseq(bytes.fromhex("120b0a05"))  # truncated
    assert parse_topic("spBv1.0/plant/DDATA/node1/pump") is not None
    assert parse_topic("spBv1.0/plant/NDATA") is None


# --- the broker itself -----------------------------------------------------------------


async def test_a_killed_broker_makes_devices_unknown_and_a_restart_brings_all_back(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    subjects = {
        CAM: device(status_topic="dev/cam-1/status"),
        DOOR: device(heartbeat_topic="dev/door-1/telemetry", heartbeat_timeout="90s"),
    }
    monitor = BrokerMonitor(broker_spec(mosquitto), subjects, observations, context)
    async with running(monitor):
        assert (await observations.next(BROKER)).healthy
        async with publisher(mosquitto) as pub:
            await pub.publish("dev/cam-1/status", "online", qos=1)
        assert (await observations.next(CAM)).healthy

        await mosquitto.astop(signal.SIGKILL)

        down = await observations.next(BROKER)
        assert (down.health, down.kind_hint) == (Health.UNHEALTHY, "integration_unreachable")
        assert not monitor.connected
        for key in (CAM, DOOR):
            unknown = await observations.next(key)
            assert unknown.health is Health.UNKNOWN  # not offline: nobody can tell
        monitor.check_timeouts(context.monotonic() + 1000)  # no heartbeat verdicts meanwhile
        assert observations.none_pending(DOOR)

        await mosquitto.astart()  # same port; reconnect backoff is capped at 0.5 s

        assert (await observations.until(BROKER, lambda o: o.healthy)).healthy
        async with publisher(mosquitto) as pub:  # subscriptions are back
            await pub.publish("dev/cam-1/status", "online", qos=1)
            await pub.publish("dev/door-1/telemetry", "1", qos=1)
        assert (await observations.next(CAM)).healthy
        assert (await observations.next(DOOR)).healthy


async def test_an_unreachable_broker_is_unhealthy_and_its_devices_unknown(
    observations: Observations, context: ProbeContext
) -> None:
    port = free_port()  # nothing listens there
    monitor = BrokerMonitor(
        broker_spec(port), {CAM: device(status_topic="dev/cam-1/status")}, observations, context
    )
    async with running(monitor):
        down = await observations.next(BROKER)
        unknown = await observations.next(CAM)

    assert (down.health, down.error_class) == (Health.UNHEALTHY, "refused")
    assert down.kind_hint == "integration_unreachable"
    assert unknown.health is Health.UNKNOWN


@pytest.fixture
def login_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that knows one user, `tocsin`, whose password is `right-password`."""
    passwords = tmp_path / "passwords"
    subprocess.run(
        [binary("mosquitto_passwd"), "-b", "-c", str(passwords), "tocsin", "right-password"],
        check=True,
        capture_output=True,
    )
    listener = f"password_file {passwords}\n"
    broker = Mosquitto(tmp_path / "login-broker", free_port(), listener=listener, anonymous=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A TLS-only broker whose certificate a private CA (tmp_path / "ca.pem") signed."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    listener = "".join(f"{key} {tmp_path / name}\n" for key, name in TLS_FILES)
    broker = Mosquitto(tmp_path / "tls-broker", free_port(), listener=listener)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


TLS_FILES = (("cafile", "ca.pem"), ("certfile", "cert.pem"), ("keyfile", "key.pem"))


async def test_a_broker_that_refuses_the_login_is_a_credentials_problem(
    login_broker: Mosquitto, tmp_path: Path, observations: Observations
) -> None:
    (tmp_path / "good").write_text("right-password\n")
    (tmp_path / "bad").write_text("wrong-password\n")
    context = ProbeContext(base_dir=tmp_path, environ={})
    subjects = {CAM: device(status_topic="dev/cam-1/status")}

    bad = broker_spec(login_broker, username="tocsin", password_file="bad")
    async with running(BrokerMonitor(bad, subjects, observations, context)):
        refused = await observations.next(BROKER)
        unknown = await observations.next(CAM)
    good = broker_spec(login_broker, username="tocsin", password_file="good")
    async with running(BrokerMonitor(good, subjects, observations, context)):
        accepted = await observations.next(BROKER)

    assert (refused.health, refused.error_class) == (Health.UNHEALTHY, "auth")
    assert refused.kind_hint == "integration_credentials_invalid"
    assert "wrong-password" not in refused.detail
    assert unknown.health is Health.UNKNOWN
    assert accepted.healthy, accepted.detail


# paho-mqtt 2.x drops the SSL socket of a failed handshake without closing it (the fd closes
# when it is collected); only that ResourceWarning is let through, and only here.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
async def test_it_connects_over_tls_with_a_private_ca(
    tls_broker: Mosquitto, tmp_path: Path, observations: Observations
) -> None:
    context = ProbeContext(base_dir=tmp_path, environ={})
    subjects = {CAM: device(status_topic="dev/cam-1/status")}

    trusting = broker_spec(tls_broker, tls=True, ca_file="ca.pem")
    async with running(BrokerMonitor(trusting, subjects, observations, context)):
        up = await observations.next(BROKER)
    untrusting = broker_spec(tls_broker, tls=True)  # the system CAs do not know this one
    async with running(BrokerMonitor(untrusting, subjects, observations, context)):
        refused = await observations.next(BROKER)
    gc.collect()  # collect paho's dropped socket now, under this test's warning filter

    assert up.healthy, up.detail
    assert (refused.health, refused.error_class) == (Health.UNHEALTHY, "tls")


# --- specs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        pytest.param(MqttProbeSpec, {}, "status_topic, heartbeat_topic", id="nothing-to-watch"),
        pytest.param(
            MqttProbeSpec,
            {"heartbeat_topic": "a/b"},
            "heartbeat_timeout",
            id="heartbeat-no-timeout",
        ),
        pytest.param(MqttProbeSpec, {"status_topic": "a/+/b"}, "wildcards", id="wild-status"),
        pytest.param(
            MqttProbeSpec,
            {"heartbeat_topic": "a/b#", "heartbeat_timeout": "9s"},
            "whole level",
            id="bad-wildcard",
        ),
        pytest.param(DiscoverySpec, {"pattern": "a/#"}, r"exactly one '\+'", id="pattern-hash"),
        pytest.param(DiscoverySpec, {"pattern": "a/+/+"}, r"exactly one '\+'", id="two-plus"),
        pytest.param(
            DiscoverySpec, {"pattern": "a/+", "id_template": "{name}"}, "only {id}", id="template"
        ),
        pytest.param(BrokerSpec, {"password_env": "P"}, "needs a username", id="password-no-user"),
        pytest.param(BrokerSpec, {"ca_file": "ca.pem"}, "tls = true", id="ca-without-tls"),
    ],
)
def test_invalid_specs_are_refused(model: Any, fields: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        MqttProbeSpec: {"type": "mqtt", "broker": "site"},
        DiscoverySpec: {"org": "acme"},
        BrokerSpec: {"name": "site", "host": "localhost"},
    }[model]
    with pytest.raises(ValidationError, match=message):
        model.model_validate(base | fields)


def test_broker_subjects_default_to_the_orgs_of_its_devices(context: ProbeContext) -> None:
    spec = broker_spec(1883, discovery=[{"pattern": "b/+/status", "org": "beta"}])
    monitor = BrokerMonitor(
        spec, {CAM: device(status_topic="x")}, lambda key, observation, at=None: None, context
    )
    assert [str(k) for k in monitor.broker_keys] == [
        "acme/integration/mqtt-broker:site",
        "beta/integration/mqtt-broker:site",
    ]
    owned = BrokerMonitor(
        broker_spec(1883, org="ops"),
        {CAM: device(status_topic="x")},
        lambda k, o, at=None: None,
        context,
    )
    assert [str(k) for k in owned.broker_keys] == ["ops/integration/mqtt-broker:site"]


async def test_a_backlog_of_messages_is_read_in_one_wake_up_not_one_per_loop_turn(
    mosquitto: Mosquitto, observations: Observations, context: ProbeContext
) -> None:
    """A busy event loop turns slowly; read one message per turn and 80,000 heartbeats a
    minute fall behind their timeouts. Here the loop is blocked while 300 devices report
    (from another thread), then given a handful of turns: every report must be in."""
    keys = [SubjectKey("acme", "device", f"d{i}") for i in range(300)]
    specs = {key: device(status_topic=f"site/{key.id}/status") for key in keys}
    monitor = BrokerMonitor(broker_spec(mosquitto), specs, observations, context)

    def report() -> None:
        client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            sent = [client.publish(f"site/{key.id}/status", b"online") for key in keys]
            for info in sent:
                info.wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()

    async with running(monitor):
        await observations.next(BROKER)
        await asyncio.sleep(0.3)  # subscribed; the devices have said nothing yet
        reporter = threading.Thread(target=report)
        reporter.start()
        time.sleep(1.0)  # noqa: ASYNC251 - the point: a blocked loop, reports waiting
        reporter.join(5)
        for _ in range(20):
            await asyncio.sleep(0)
        seen = [key for key in keys if not observations.none_pending(key)]
        assert len(seen) == 300, f"{len(seen)} of 300 reports read in 20 loop turns"


def test_arrivals_time_each_message_by_the_first_note_that_covers_it() -> None:
    arrivals = Arrivals()
    assert arrivals.arrival() is None  # nothing noted: not known
    arrivals.mark(300, 10.0)  # at 10.0 the kernel held bytes 0..300
    arrivals.consumed = 100
    assert arrivals.arrival() == 10.0
    arrivals.mark(500, 11.0)  # at 11.0 (100 read since): bytes up to 600
    arrivals.mark(0, 11.5)  # nothing more waiting: no note
    arrivals.mark(400, 11.6)  # bytes up to 500: covered by the 10.0 and 11.0 notes already
    arrivals.consumed = 300
    assert arrivals.arrival() == 10.0  # the message ends at the 10.0 note's last byte
    arrivals.consumed = 301
    assert arrivals.arrival() == 11.0
    arrivals.consumed = 601
    assert arrivals.arrival() is None  # read past every note: handled as it comes


async def test_a_burst_handled_slowly_is_timed_when_it_reached_the_host(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """1,000 devices go offline at once while handling each message takes 2 ms (a busy
    loop): the last is handled over a second after the broker had it, yet timed then."""
    await _burst_timed_on_arrival(mosquitto, tmp_path, "burst/d{}/status", 1000, 0.002)


async def test_a_burst_larger_than_a_new_connections_window_is_timed_on_arrival(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """6,000 offline messages (~280 KB) are more than a fresh TCP connection's 128 KB window:
    unless the monitor's socket takes them all, the broker keeps the rest until the busy loop
    reads, and they are timed that late (the 20,000-device storm: 3-4 s)."""
    topic = "site-a/building-north/floor-3/device-{:05}/status"
    await _burst_timed_on_arrival(mosquitto, tmp_path, topic, 6000, 0.0002)


def test_a_broker_connection_asks_for_a_wide_receive_buffer(tmp_path: Path) -> None:
    limit = tmp_path / "rmem_max"
    for rmem_max, wanted in ((8 << 20, mqtt.RECEIVE_BUFFER), (1 << 20, 1 << 20)):
        limit.write_text(f"{rmem_max}\n")
        with socket.socket() as sock, pytest.MonkeyPatch.context() as patch:
            patch.setattr(mqtt, "RMEM_MAX", str(limit))
            mqtt._widen_receive_buffer(sock)
            # Linux doubles what is asked (bookkeeping), capped by the real rmem_max.
            real_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(wanted, real_max)
    limit.write_text("4096\n")  # smaller than what the kernel gives: left alone (it grows)
    with socket.socket() as sock, pytest.MonkeyPatch.context() as patch:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        patch.setattr(mqtt, "RMEM_MAX", str(limit))
        mqtt._widen_receive_buffer(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == before


async def _burst_timed_on_arrival(
    mosquitto: Mosquitto, tmp_path: Path, topic: str, count: int, cost: float
) -> None:
    """`count` devices publish 'offline' at once while handling each message takes `cost`
    seconds: every message is timed within 0.3 s of when the broker had them all."""
    keys = {SubjectKey("acme", "device", f"d{i}"): topic.format(i) for i in range(count)}
    handled: list[tuple[float, float | None]] = []  # (handled at, timed at)

    def sink(key: SubjectKey, observation: Observation, at: float | None = None) -> None:
        if key in keys and not observation.healthy:
            handled.append((time.monotonic(), at))
            time.sleep(cost)

    monitor = BrokerMonitor(
        broker_spec(mosquitto),
        {key: device(status_topic=topic) for key, topic in keys.items()},
        sink,
        ProbeContext(base_dir=tmp_path, environ={}),
    )

    def publish_all() -> float:  # another thread: this loop is the one made busy
        client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            for topic in keys.values():  # QoS 0: the broker sends them on without waiting
                client.publish(topic, "offline", qos=0)
            # The broker takes a client's packets in order: once it acknowledges this one, it
            # has sent every message above to the monitor (or holds them for it).
            client.publish("burst/sent", "1", qos=1).wait_for_publish(WAIT)
            return time.monotonic()
        finally:
            client.loop_stop()
            client.disconnect()

    async with running(monitor):
        deadline = time.monotonic() + WAIT
        while not monitor.connected:
            assert time.monotonic() < deadline, "not connected"
            await asyncio.sleep(0.05)
        published = await asyncio.to_thread(publish_all)
        deadline = time.monotonic() + 4 * WAIT
        while len(handled) < count:
            assert time.monotonic() < deadline, f"{len(handled)} of {count} handled"
            await asyncio.sleep(0.05)
    last_handled, last_timed = handled[-1]
    assert last_handled - published > 1.0  # the loop was busy for that long after...
    assert last_timed is not None
    assert last_timed - published < 0.3  # ...the messages had come
    assert all(at is not None and at <= when for when, at in handled)
