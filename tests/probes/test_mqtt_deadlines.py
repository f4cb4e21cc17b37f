"""The MQTT monitor's heartbeat deadlines and its stall rule, on a fake monotonic clock.

Most tests need no broker: they feed the monitor's synchronous core as its connection loop
does (`Core`); the last one restarts a real mosquitto that keeps its retained messages.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from tests.peers import Mosquitto, free_port
from tocsin.probes.base import ProbeContext
from tocsin.probes.mqtt import BrokerMonitor, BrokerSpec, MqttProbeSpec
from tocsin.probes.observation import Health, Observation, SubjectKey

from .test_mqtt_probe import FakeMonotonic, Observations, advance, publisher, running

CAM = SubjectKey("acme", "device", "cam-1")
DOOR = SubjectKey("acme", "device", "door-1")
LAMP = SubjectKey("acme", "device", "lamp-1")
START = FakeMonotonic().now


def device(**fields: Any) -> MqttProbeSpec:
    return MqttProbeSpec.model_validate({"type": "mqtt", "broker": "site"} | fields)


def heartbeat(topic: str, timeout: str = "90s") -> MqttProbeSpec:
    return device(heartbeat_topic=topic, heartbeat_timeout=timeout)


class Core:
    """A BrokerMonitor without a broker: `connect`, `drop` and `message` call what its
    connection loop calls on (re)subscribing, on losing the connection and for each message
    read; `tick` lets seconds pass as the daemon does, with a timeout check each second;
    `sleep` lets time pass with no check at all (the process stopped, or its loop blocked)."""

    def __init__(self, subjects: dict[SubjectKey, MqttProbeSpec]) -> None:
        self.clock = FakeMonotonic()
        self.seen: list[tuple[float, SubjectKey, Observation]] = []
        broker = BrokerSpec.model_validate({"name": "site", "host": "127.0.0.1"})
        context = ProbeContext(monotonic=self.clock)
        self.monitor = BrokerMonitor(broker, subjects, self._sink, context)
        self.connect()

    def _sink(self, key: SubjectKey, observation: Observation, at: float | None = None) -> None:
        if key.type == "device":
            self.seen.append((self.clock.now, key, observation))

    def connect(self) -> None:
        self.monitor._connected()

    def drop(self) -> None:
        self.monitor._disconnected(aiomqtt.MqttError("Disconnected during message iteration"))

    def message(self, topic: str, payload: str = "1", *, retained: bool = False) -> None:
        self.monitor._handle(topic, payload.encode(), retained)

    def tick(self, seconds: int = 1) -> None:
        advance(self.monitor, self.clock, seconds)

    def sleep(self, seconds: float) -> None:
        self.clock.now += seconds

    def take(self) -> list[tuple[float, SubjectKey, Health, str]]:
        """What was reported since the last take: (when, subject, health, detail)."""
        taken = [(at, key, o.health, o.detail) for at, key, o in self.seen]
        self.seen.clear()
        return taken


# --- deadlines ------------------------------------------------------------------------------


def test_it_reports_a_silent_device_at_the_first_check_past_its_heartbeat_timeout() -> None:
    core = Core({CAM: heartbeat("dev/cam-1/telemetry")})
    core.message("dev/cam-1/telemetry")
    core.tick(90)
    assert core.take() == [(START, CAM, Health.HEALTHY, "message on dev/cam-1/telemetry")]

    core.tick(1)
    core.tick(60)  # reported once, not on every check

    assert core.take() == [
        (START + 91, CAM, Health.UNHEALTHY, "no message for 91 s (heartbeat timeout 90 s)")
    ]


def test_a_message_on_an_exact_topic_keeps_the_configured_topic_not_a_copy() -> None:
    """80,000 heartbeat devices each held the topic string of their last message besides
    the configured one: 5 MiB of copies."""
    spec = heartbeat("dev/cam-1/telemetry")
    core = Core({CAM: spec})
    for _ in range(3):
        core.message("".join(["dev/cam-1/", "telemetry"]))  # a new string, as paho's is
        core.tick()
    [device] = core.monitor._devices
    assert device.heard_on is spec.heartbeat_topic
    assert device.why == "message on dev/cam-1/telemetry"


def test_it_reports_nothing_for_the_messages_of_a_device_already_healthy() -> None:
    core = Core({CAM: heartbeat("dev/cam-1/#")})
    for second in range(200):
        core.message(f"dev/cam-1/sensor-{second % 3}")
        core.tick()
    assert [health for _, _, health, _ in core.take()] == [Health.HEALTHY]

    core.tick(91)
    core.message("dev/cam-1/door")

    [(_, _, late, _), (_, _, back, detail)] = core.take()
    assert (late, back) == (Health.UNHEALTHY, Health.HEALTHY)
    assert detail == "message on dev/cam-1/door"


def test_it_reports_many_devices_exactly_when_checking_every_device_every_second_would() -> None:
    rng = random.Random(20240611)
    timeouts = {
        SubjectKey("acme", "device", f"d{n}"): rng.choice([5, 17, 60, 90]) for n in range(300)
    }
    core = Core(
        {key: heartbeat(f"dev/{key.id}/#", f"{timeout}s") for key, timeout in timeouts.items()}
    )
    # The rule, checked the slow way: every device on every check.
    last: dict[SubjectKey, float] = {}
    state: dict[SubjectKey, Health] = {}
    expected: list[tuple[float, SubjectKey, Health]] = []
    talkers = list(timeouts)
    for _second in range(600):
        for key in rng.sample(talkers, 20):
            core.message(f"dev/{key.id}/x")
            last[key] = core.clock.now
            if state.get(key) is not Health.HEALTHY:
                state[key] = Health.HEALTHY
                expected.append((core.clock.now, key, Health.HEALTHY))
        if _second == 300:
            talkers = talkers[:150]  # half the fleet goes quiet
        core.tick()
        for key, timeout in timeouts.items():
            since = last.get(key, START)
            if core.clock.now - since > timeout and state.get(key) is not Health.UNHEALTHY:
                state[key] = Health.UNHEALTHY
                expected.append((core.clock.now, key, Health.UNHEALTHY))

    reported = [(at, key, health) for at, key, health, _ in core.take()]
    assert sorted(reported, key=repr) == sorted(expected, key=repr)
    assert len(expected) > 300


def test_it_gives_every_heartbeat_a_fresh_window_when_it_subscribes_again() -> None:
    core = Core(
        {
            CAM: heartbeat("dev/cam-1/telemetry"),
            DOOR: device(status_topic="dev/door-1/status", heartbeat_timeout="90s"),
            LAMP: device(status_topic="dev/lamp-1/status"),
        }
    )
    core.message("dev/cam-1/telemetry")
    core.message("dev/door-1/status", "online")
    core.message("dev/lamp-1/status", "online")
    core.tick(30)
    core.drop()
    core.tick(300)  # the broker is down: nothing is judged meanwhile
    assert [(key, health) for _, key, health, _ in core.take()][3:] == [
        (CAM, Health.UNKNOWN),
        (DOOR, Health.UNKNOWN),
        (LAMP, Health.UNKNOWN),
    ]

    core.connect()  # subscribed again; the broker replays its retained messages
    core.message("dev/door-1/status", "online", retained=True)  # a claim, not proof of life
    core.message("dev/lamp-1/status", "online", retained=True)
    core.tick(90)
    assert core.take() == [
        (START + 330, LAMP, Health.HEALTHY, "retained 'online' on dev/lamp-1/status")
    ]
    core.tick(1)

    assert core.take() == [
        (
            START + 421,
            CAM,
            Health.UNHEALTHY,
            "no message on dev/cam-1/telemetry within 90 s",
        ),
        (
            START + 421,
            DOOR,
            Health.UNHEALTHY,
            "retained 'online' on dev/door-1/status is stale: no live message within 90 s",
        ),
    ]


def test_it_names_the_last_sign_of_life_when_a_device_comes_back() -> None:
    plc = SubjectKey("acme", "device", "plc-1")
    spec = device(
        sparkplug={"group_id": "plant", "edge_node_id": "node1"},
        heartbeat_topic="plant/plc-1/telemetry",
        heartbeat_timeout="90s",
    )
    core = Core({plc: spec})
    core.message("spBv1.0/plant/NBIRTH/node1", "")
    core.message("plant/plc-1/telemetry")  # healthy already: only noted
    core.tick(91)
    core.message("spBv1.0/plant/NDATA/node1", "")  # data, which names no reason of its own

    [*_, (_, _, health, detail)] = core.take()
    assert (health, detail) == (Health.HEALTHY, "message on plant/plc-1/telemetry")


@pytest.mark.parametrize(
    ("topic", "matched"),
    [
        pytest.param("a", {"a/#", "#"}, id="hash-matches-the-parent-level"),
        pytest.param("a/b", {"a/#", "a/+", "+/b/#", "#"}, id="two-levels"),
        pytest.param("a/b/c", {"a/#", "a/+/c", "+/b/#", "#"}, id="three-levels"),
        pytest.param("a//c", {"a/#", "a/+/c", "#"}, id="empty-level"),
        pytest.param("x/y", {"x/y", "#"}, id="exact"),
        pytest.param("x/y/z", {"#"}, id="longer-than-the-filter"),
    ],
)
def test_it_matches_wildcard_filters_as_mqtt_does(topic: str, matched: set[str]) -> None:
    filters = ["a/#", "a/+", "a/+/c", "+/b/#", "#", "x/y"]
    keys = {SubjectKey("acme", "device", f"f{n}"): f for n, f in enumerate(filters)}
    core = Core({key: heartbeat(f) for key, f in keys.items()})

    core.message(topic)

    assert {keys[key] for _, key, _, _ in core.take()} == matched


# --- stalls ---------------------------------------------------------------------------------


def test_it_does_not_count_a_stall_against_a_heartbeat() -> None:
    core = Core({CAM: heartbeat("dev/cam-1/telemetry")})
    core.message("dev/cam-1/telemetry")
    core.tick(10)
    core.take()

    with capture_logs() as logs:
        core.sleep(119)  # SIGSTOP for two minutes, then SIGCONT
        core.tick()
        resumed = core.clock.now
        assert core.take() == []  # 130 s of silence, but only 11 s watched
        core.tick(79)
        assert core.take() == []
        core.tick()

    assert core.take() == [
        (resumed + 80, CAM, Health.UNHEALTHY, "no message for 91 s (heartbeat timeout 90 s)")
    ]
    assert [(e["event"], e["log_level"], e["seconds"]) for e in logs] == [
        ("heartbeat deadlines extended after a stall", "info", 119.0)
    ]


def test_it_takes_a_late_check_within_five_seconds_as_time_watched() -> None:
    core = Core({CAM: heartbeat("dev/cam-1/telemetry")})
    core.message("dev/cam-1/telemetry")
    with capture_logs() as logs:
        for _ in range(16):
            core.sleep(5)  # each check 6 s after the one before: late, but no stall
            core.tick()

    assert [(at, key, health) for at, key, health, _ in core.take()][1:] == [
        (START + 96, CAM, Health.UNHEALTHY)
    ]
    assert logs == []


def test_it_counts_a_message_read_on_waking_as_read_after_the_stall() -> None:
    core = Core({CAM: heartbeat("dev/cam-1/telemetry"), DOOR: heartbeat("dev/door-1/telemetry")})
    core.message("dev/cam-1/telemetry")
    core.message("dev/door-1/telemetry")
    core.tick(10)
    core.take()

    core.sleep(120)
    woke = core.clock.now
    core.message("dev/cam-1/telemetry")  # sent while the process was stopped, read before the check
    core.tick(200)

    # DOOR had 11 s of its 90 watched when the process stopped; CAM's message counts as read
    # when the process woke, not two minutes earlier (which would leave it 119 s more).
    assert [(at - woke, key) for at, key, _, _ in core.take()] == [(80, DOOR), (91, CAM)]


def test_it_extends_deadlines_of_devices_found_by_discovery_alike() -> None:
    discovery = {"pattern": "site/+/status", "org": "acme", "heartbeat_timeout": "60s"}
    broker = BrokerSpec.model_validate(
        {"name": "site", "host": "127.0.0.1", "discovery": [discovery]}
    )
    clock = FakeMonotonic()
    seen: list[tuple[float, SubjectKey, Health]] = []
    monitor = BrokerMonitor(
        broker,
        {},
        lambda key, o, at=None: seen.append((clock.now, key, o.health)),
        ProbeContext(monotonic=clock),
    )
    monitor._connected()
    monitor._handle("site/t1/status", b"online", False)
    advance(monitor, clock, 30)
    clock.now += 300
    advance(monitor, clock, 31)

    found = SubjectKey("acme", "device", "t1")
    assert [(at, health) for at, key, health in seen if key == found] == [
        (START, Health.HEALTHY),
        (START + 361, Health.UNHEALTHY),
    ]


# --- a real broker that keeps its retained messages across a restart --------------------


class PersistentMosquitto(Mosquitto):
    """mosquitto that saves retained messages on shutdown and reads them back on start."""

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(workdir, port)
        text = self.config.read_text().replace(
            "persistence false\n", f"persistence true\npersistence_location {workdir}/\n"
        )
        self.config.write_text(text)


async def test_it_watches_heartbeats_afresh_after_a_broker_restart_that_kept_retained_statuses(
    tmp_path: Path,
) -> None:
    broker = PersistentMosquitto(tmp_path / "persistent", free_port())
    broker.start()
    observations, clock = Observations(), FakeMonotonic()
    subjects = {
        CAM: heartbeat("dev/cam-1/telemetry"),
        DOOR: device(status_topic="dev/door-1/status", heartbeat_timeout="90s"),
        LAMP: device(status_topic="dev/lamp-1/status"),
    }
    spec = BrokerSpec.model_validate(
        {
            "name": "site",
            "host": "127.0.0.1",
            "port": broker.port,
            "keepalive": "5s",
            "reconnect_min": "100ms",
            "reconnect_max": "500ms",
        }
    )
    monitor = BrokerMonitor(spec, subjects, observations, ProbeContext(monotonic=clock))
    broker_key = monitor.broker_keys[0]
    try:
        async with running(monitor):
            assert (await observations.next(broker_key)).healthy
            async with publisher(broker) as pub:
                await pub.publish("dev/door-1/status", "online", qos=1, retain=True)
                await pub.publish("dev/lamp-1/status", "online", qos=1, retain=True)
                await pub.publish("dev/cam-1/telemetry", "1", qos=1)
            for key in (CAM, DOOR, LAMP):
                assert (await observations.next(key)).healthy
            advance(monitor, clock, 60)

            await broker.astop(signal.SIGTERM)  # saves its retained messages
            for key in (CAM, DOOR, LAMP):
                assert (
                    await observations.until(key, lambda o: not o.healthy)
                ).health is Health.UNKNOWN
            advance(monitor, clock, 60)  # the outage: no verdicts
            await broker.astart()
            await observations.until(broker_key, lambda o: o.healthy)

            # The replayed retained statuses: LAMP is online again, DOOR's is only a claim.
            assert (await observations.next(LAMP)).healthy
            advance(monitor, clock, 90)
            assert observations.none_pending(CAM)
            assert observations.none_pending(DOOR)
            advance(monitor, clock, 1)

            cam, door = await observations.next(CAM), await observations.next(DOOR)
            assert (cam.health, cam.error_class) == (Health.UNHEALTHY, "heartbeat_timeout")
            assert "stale" in door.detail
            assert observations.none_pending(LAMP)
    finally:
        broker.stop()
