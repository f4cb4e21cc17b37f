"""MQTT: one connection per broker, device liveness from what the devices publish.

A `BrokerMonitor` holds one aiomqtt connection to one `[[mqtt.brokers]]` entry, subscribes to
what its subjects need and reports through the sink, on edges only (a change of health or of
error class); the tracker's ticks carry time between them.

Subjects and keys:
- The broker itself is `SubjectKey(org, "integration", "mqtt-broker:NAME")`, for the broker's
  `org` when set, else for every org that has a device on it (each org sees why its devices
  went quiet). Healthy once connected and subscribed; unhealthy (`integration_unreachable`,
  or `integration_credentials_invalid` when the broker refuses the login) when it cannot
  connect or loses the connection. Reconnects use exponential backoff with jitter.
- While the broker is down every device on it is `unknown` (once, on the edge): nobody can
  tell whether a device is up, so none opens a ticket of its own.
- A device is healthy / unhealthy (`device_offline`) from:
  * a status topic carrying `online` / `offline` payloads (Home Assistant availability,
    Tasmota LWT): retained messages and Last Will messages count alike;
  * a heartbeat: any live message on the device's topics within `heartbeat_timeout`;
  * Sparkplug B: NBIRTH marks the edge node online and records its bdSeq; NDEATH marks it
    offline unless its bdSeq differs from the last NBIRTH's (a stale death racing a rebirth).
- Retained messages tell the last state, not that the device lives: a retained message is as
  old as anyone's guess. With a heartbeat configured, a retained `online` is only a claim: if
  no live message follows within `heartbeat_timeout` of subscribing it is stale, and the device
  is unhealthy. Without a heartbeat, a retained `online` is taken as online, which is what the
  status-topic convention promises: the broker replaces it with the Last Will when the device's
  connection dies (a broker that lost its state in a restart can leave it stale: add a
  heartbeat where that matters). A retained `offline` is always believed.
- Discovery (`[[mqtt.brokers.discovery]]`): a pattern such as `site/+/status` whose `+` names the
  device; an unknown name becomes `SubjectKey(org, "device", id_template.format(id=name))`,
  announced once through `on_discovered(key, name)` before its first observation. Ids that a
  configured subject already has are left to it.

Time: heartbeats are measured on `context.monotonic`; `run` calls `check_timeouts(now)` every
second, and tests may call it with a fake clock (in steps of a second: a call that comes more
than 5 s late reveals a stall). Time the process could not run - a paused machine, an event
loop blocked for long - counts for no heartbeat: while stalled it read no message.

Cost, for 100,000 devices on a broker: a live message from a healthy device only notes when
(no judgement, no observation); a device's deadline sits in a heap that is checked lazily, so
a timeout check costs the devices due, not all of them; wildcard filters are a tree of levels.
"""

from __future__ import annotations

import asyncio
import fcntl
import heapq
import random
import socket
import ssl
import struct
import termios
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from operator import itemgetter
from typing import Annotated, Any, Literal, NamedTuple

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as paho_client
from pydantic import Field, field_validator, model_validator

from tocsin.durations import Duration
from tocsin.probes import sparkplug
from tocsin.probes.base import ProbeContext, Sink, SpecModel
from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.probes.stalls import WatchedClock
from tocsin.secrets import SecretError, read_secret

log = structlog.get_logger("tocsin.probes.mqtt")

SUBSCRIBE_BATCH = 200  # filters per SUBSCRIBE packet
SUBSCRIBE_IN_FLIGHT = 16  # SUBSCRIBE packets awaiting their SUBACK at once
_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def _check_filter(value: str, *, wildcards: bool) -> str:
    if not value or len(value.encode()) > 65535 or "\0" in value:
        raise ValueError("a topic must be 1-65535 bytes without NUL")
    if "+" not in value and "#" not in value:
        return value  # no wildcard: nothing more to check (80,000 devices' topics at start)
    levels = value.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and not wildcards:
            raise ValueError(f"{value!r}: wildcards are not allowed here")
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise ValueError(f"{value!r}: a wildcard must fill a whole level")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"{value!r}: '#' must be the last level")
    return value


class DiscoverySpec(SpecModel):
    """Devices found by topic: `pattern = "site/+/status"`, the `+` level is the device name."""

    pattern: str
    """A status topic filter with exactly one + level, the device name: "site/+/status"."""
    org: Annotated[str, Field(min_length=1)]
    """The org the devices found belong to."""
    online: str = "online"
    """The payload that means online."""
    offline: str = "offline"
    """The payload that means offline (e.g. the Last Will)."""
    id_template: str = "{id}"
    """A found device's id, from its name ({id})."""
    name_template: str = "{id}"
    """A found device's name, from its name ({id})."""
    heartbeat_timeout: Duration | None = None
    """Also unhealthy when its status topic is silent this long; unset: no heartbeat."""
    max_devices: Annotated[int, Field(ge=1)] = 10_000
    """At most this many devices are found through the pattern; more are ignored (logged)."""

    @field_validator("pattern")
    @classmethod
    def _one_plus(cls, value: str) -> str:
        _check_filter(value, wildcards=True)
        levels = value.split("/")
        if levels.count("+") != 1 or "#" in levels:
            raise ValueError("the pattern needs exactly one '+' (the device name) and no '#'")
        return value

    @field_validator("id_template", "name_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(id="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError("a template may use only {id}") from None
        return value

    @property
    def id_level(self) -> int:
        return self.pattern.split("/").index("+")


class BrokerSpec(SpecModel):
    """[[mqtt.brokers]]: where to connect, as whom, and how to come back after a loss."""

    name: Annotated[str, Field(pattern=_NAME)]
    """What mqtt probes name in broker; lowercase letters, digits, - and _."""
    host: Annotated[str, Field(min_length=1)]
    """The broker's host name or address."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """The broker's port; default: 1883, or 8883 with tls."""
    tls: bool = False
    """Connect over TLS."""
    ca_file: str | None = None
    """A PEM file of CAs to verify the broker with; default: the system's CAs."""
    username: str | None = None
    """The user name to connect as."""
    password_file: str | None = None
    """A file holding the password (needs username)."""
    password_env: str | None = None
    """An environment variable holding the password (needs username)."""
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """The MQTT client id; default: a random one."""
    keepalive: Duration = timedelta(seconds=60)
    """The MQTT keepalive, at least 1s."""
    connect_timeout: Duration = timedelta(seconds=10)
    """How long connecting may take."""
    reconnect_min: Duration = timedelta(seconds=1)
    """The first delay before reconnecting after a loss; it doubles on each failure ..."""
    reconnect_max: Duration = timedelta(seconds=60)
    """... up to this."""
    org: str | None = None
    """The org the broker's own ticket belongs to; default: its devices'."""
    discovery: list[DiscoverySpec] = []
    """Devices found by topic instead of listed in [[devices]]."""

    @model_validator(mode="after")
    def _consistent(self) -> BrokerSpec:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give one of password_file or password_env")
        has_password = self.password_file is not None or self.password_env is not None
        if has_password and self.username is None:
            raise ValueError("a password needs a username")
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file needs tls = true")
        if self.reconnect_min.total_seconds() <= 0 or self.reconnect_max < self.reconnect_min:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if self.keepalive.total_seconds() < 1 or self.connect_timeout.total_seconds() <= 0:
            raise ValueError("keepalive must be at least 1s and connect_timeout positive")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)


class SparkplugSpec(SpecModel):
    """A Sparkplug B edge node: online after its NBIRTH, offline on the NDEATH that matches it."""

    group_id: Annotated[str, Field(min_length=1)]
    """The Sparkplug group id."""
    edge_node_id: Annotated[str, Field(min_length=1)]
    """The Sparkplug edge node id."""

    @field_validator("group_id", "edge_node_id")
    @classmethod
    def _plain_level(cls, value: str) -> str:
        if any(c in value for c in "/+#"):
            raise ValueError("Sparkplug ids may not contain '/', '+' or '#'")
        return value


class MqttProbeSpec(SpecModel):
    """probe = { type = "mqtt", broker = "site", status_topic = "dev/x/status" }
    and/or heartbeat_topic(s) + heartbeat_timeout, and/or sparkplug = { group_id, edge_node_id }.
    """

    type: Literal["mqtt"]
    """Watched through an MQTT broker."""
    broker: str
    """The name of a [[mqtt.brokers]] entry."""
    status_topic: str | None = None
    """A topic carrying online/offline (retained, and the device's Last Will)."""
    online: str = "online"
    """The status payload that means online."""
    offline: str = "offline"
    """The status payload that means offline."""
    heartbeat_topic: str | None = None
    """A topic (wildcards allowed) where any live message is a sign of life."""
    heartbeat_topics: list[str] = Field(default_factory=list)
    """More heartbeat topics."""
    heartbeat_timeout: Duration | None = None
    """No live message on the heartbeat topics for this long is unhealthy."""
    sparkplug: SparkplugSpec | None = None
    """A Sparkplug B edge node to watch."""

    @field_validator("status_topic")
    @classmethod
    def _status_topic(cls, value: str | None) -> str | None:
        return None if value is None else _check_filter(value, wildcards=False)

    @field_validator("heartbeat_topic")
    @classmethod
    def _heartbeat_topic(cls, value: str | None) -> str | None:
        return None if value is None else _check_filter(value, wildcards=True)

    @field_validator("heartbeat_topics")
    @classmethod
    def _heartbeat_topics(cls, value: list[str]) -> list[str]:
        return [_check_filter(v, wildcards=True) for v in value]

    @model_validator(mode="after")
    def _something_to_watch(self) -> MqttProbeSpec:
        if not (self.status_topic or self.all_heartbeat_topics or self.sparkplug):
            raise ValueError("give a status_topic, heartbeat_topic(s) or sparkplug")
        if self.all_heartbeat_topics and self.heartbeat_timeout is None:
            raise ValueError("heartbeat topics need a heartbeat_timeout")
        if self.heartbeat_timeout is not None and self.heartbeat_timeout.total_seconds() <= 0:
            raise ValueError("heartbeat_timeout must be positive")
        if self.online == self.offline:
            raise ValueError("online and offline payloads must differ")
        return self

    @property
    def all_heartbeat_topics(self) -> list[str]:
        return (
            [self.heartbeat_topic, *self.heartbeat_topics]
            if self.heartbeat_topic
            else list(self.heartbeat_topics)
        )


# --- what the monitor knows about one device ---------------------------------------------

# The edges devices report, one tuple per kind rather than one per device; a healthy device is
# told by identity on the message path.
_HEALTHY: tuple[Health, str | None] = (Health.HEALTHY, None)
_EDGES: dict[tuple[Health, str | None], tuple[Health, str | None]] = {_HEALTHY: _HEALTHY}


@dataclass(slots=True, eq=False)
class _Device:
    """One device's state; its times are on the monitor's watched clock (`_WatchedClock`).
    Slotted and without per-device containers: a broker may carry 100,000 of them."""

    key: SubjectKey
    online: str
    offline: str
    heartbeat_timeout: float | None
    watching: str  # the topics, for details
    window_start: float = 0.0
    status: Literal["online", "offline"] | None = None
    reason: str = ""  # what set the status, for details: read it as `why`
    heard_on: str | None = None  # the topic of a live message that set the reason since
    bdseq: int | None = None
    last_alive: float | None = None
    emitted: tuple[Health, str | None] | None = None
    index: int = -1  # its place among the monitor's heartbeat devices
    queued: bool = False  # it has an entry in the monitor's deadline heap

    @property
    def why(self) -> str:
        # A live message only notes its topic: formatting a reason for every heartbeat would
        # cost more than the rest of the message's way through the monitor.
        return self.reason if self.heard_on is None else f"message on {self.heard_on}"

    def because(self, reason: str) -> None:
        self.reason, self.heard_on = reason, None

    @property
    def since(self) -> float:
        """Where its heartbeat window starts: the last live message, else the subscription."""
        return self.last_alive if self.last_alive is not None else self.window_start

    def deadline(self) -> float:
        """When its heartbeat runs out, unless it speaks (a device with a heartbeat only)."""
        assert self.heartbeat_timeout is not None
        return self.since + self.heartbeat_timeout

    def runs_out(self, now: float) -> float | None:
        """When its heartbeat runs out, or None if it has by `now` (a device with a heartbeat
        only). One call, as the timeout check may ask it of every device at once."""
        timeout = self.heartbeat_timeout
        assert timeout is not None
        since = self.last_alive if self.last_alive is not None else self.window_start
        return None if now - since > timeout else since + timeout

    def forget(self, now: float) -> None:
        """After a (re)connect nothing is known until the broker replays or the device speaks;
        the heartbeat window starts at subscription."""
        self.status = None
        self.bdseq = None
        self.last_alive = None
        self.window_start = now

    def judge(self, now: float) -> Observation | None:
        """The device's health now, or None while there is nothing to go on yet."""
        if self.status == "offline":
            return Observation(
                Health.UNHEALTHY, self.why, kind_hint="device_offline", error_class="offline"
            )
        timeout = self.heartbeat_timeout
        if timeout is not None:
            if self.runs_out(now) is None:
                silence = now - self.since
                if self.last_alive is not None:
                    detail = f"no message for {silence:.0f} s (heartbeat timeout {timeout:g} s)"
                elif self.status == "online":
                    detail = f"{self.why} is stale: no live message within {timeout:g} s"
                else:
                    detail = f"no message on {self.watching} within {timeout:g} s"
                return Observation(
                    Health.UNHEALTHY,
                    detail,
                    kind_hint="device_offline",
                    error_class="heartbeat_timeout",
                )
            if self.last_alive is None:
                return None  # a retained claim, or silence, still inside the window
            return Observation(Health.HEALTHY, self.why or f"message on {self.watching}")
        if self.status == "online":
            return Observation(Health.HEALTHY, self.why)
        return None


class _Route(NamedTuple):  # a tuple: made in C, 100,000 of them at a broker's start
    device: _Device
    role: Literal["status", "heartbeat"]
    # The topic or filter it was added under. A message on an exact topic notes this string,
    # not the one paho made for the message: one string per device for good, not two.
    topic: str


@dataclass(slots=True, eq=False)
class _Level:
    # Made as needed: most levels of a fleet's filters have one child, or are leaves.
    children: dict[str, _Level] | None = None
    routes: list[tuple[int, _Route]] | None = None  # (order added, route)


class _WildRoutes:
    """Routes under topic filters with + and #, kept as a tree of levels: matching a topic
    costs about its depth, not the number of filters (a fleet may give each device one)."""

    def __init__(self) -> None:
        self._root = _Level()
        self._count = 0

    def add(self, pattern: str, route: _Route) -> None:
        node = self._root
        for level in pattern.split("/"):
            if node.children is None:
                node.children = {}
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Level()
            node = child
        if node.routes is None:
            node.routes = []
        node.routes.append((self._count, route))
        self._count += 1

    def match(self, levels: list[str]) -> list[_Route]:
        """The routes whose filter matches a topic (split on "/"), in the order added."""
        found: list[tuple[int, _Route]] = []
        self._collect(self._root, levels, 0, found)
        found.sort(key=itemgetter(0))
        return [route for _, route in found]

    def _collect(
        self, node: _Level, levels: list[str], depth: int, found: list[tuple[int, _Route]]
    ) -> None:
        if depth == len(levels) and node.routes:
            found += node.routes
        children = node.children
        if children is None:
            return
        if (rest := children.get("#")) is not None and rest.routes:
            found += rest.routes  # '#' matches the parent level too: "a/#" matches "a"
        if depth == len(levels):
            return
        level = levels[depth]
        if level not in ("+", "#") and (child := children.get(level)) is not None:
            self._collect(child, levels, depth + 1, found)
        if (child := children.get("+")) is not None:
            self._collect(child, levels, depth + 1, found)


@dataclass
class _Discovery:
    spec: DiscoverySpec
    found: dict[str, _Route] = field(default_factory=dict)  # name -> its status topic's route
    capped: bool = False
    levels: list[str] = field(init=False)
    id_level: int = field(init=False)

    def __post_init__(self) -> None:
        self.levels = self.spec.pattern.split("/")
        self.id_level = self.spec.id_level


"""Seconds the timeout check may come later than its period before the gap is a stall."""


READ_BURST = 512  # MQTT packets read in one wake-up of the socket, at most
MARK_EVERY = 16  # packets between two looks at what the kernel holds (see Arrivals)
RECEIVE_BUFFER = 4 << 20  # bytes the kernel may hold for a broker connection (~100,000 messages)
RMEM_MAX = "/proc/sys/net/core/rmem_max"


class Arrivals:
    """When the bytes of a message had reached this host, at the latest.

    Every MARK_EVERY packets read, a note of how many bytes the kernel holds for us then: all
    bytes up to that position in the stream had arrived by that moment. A message is timed by
    the first such note its last byte falls under. In a burst (5,000 devices going offline at
    once) the loop handles messages for a second or more after they came; timed when handled,
    the last of them would start its debounce that much late. (QoS 1 deliveries also wait in
    the broker for our acknowledgements, which no note here can see.)
    """

    __slots__ = ("_marks", "consumed")

    def __init__(self) -> None:
        self.consumed = 0  # bytes paho has read from the socket
        self._marks: deque[tuple[int, float]] = deque()  # (stream position, by when)

    def mark(self, queued: int, now: float) -> None:
        end = self.consumed + queued
        if queued > 0 and (not self._marks or end > self._marks[-1][0]):
            self._marks.append((end, now))

    def arrival(self) -> float | None:
        """The latest moment the message just read had arrived; None when not known."""
        marks = self._marks
        while marks and marks[0][0] < self.consumed:
            marks.popleft()
        return marks[0][1] if marks else None


def _widen_receive_buffer(sock: socket.socket) -> None:
    """Let the kernel take a burst (20,000 devices going offline at once) as the broker sends
    it, so Arrivals times each message by when it came, not by when the loop got to it.

    A TCP connection starts with a 128 KB window (net.ipv4.tcp_rmem) that grows only while the
    reader keeps up; past it the burst waits in the broker, unseen and untimed. A fixed
    RECEIVE_BUFFER (the kernel caps it at net.core.rmem_max) is set only where it is larger
    than what the socket has: setting it turns off that growth."""
    try:
        with open(RMEM_MAX) as f:
            size = min(RECEIVE_BUFFER, int(f.read()))
        if size > sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except (OSError, ValueError):
        pass  # no /proc (not Linux) or an odd socket: the kernel's defaults stand


def _queued(fileno: int) -> int:
    """Bytes the kernel holds for the socket (FIONREAD)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


class _DrainingClient(aiomqtt.Client):
    """aiomqtt, reading every packet waiting when its socket wakes and handing each message
    to `on_message` right there.

    aiomqtt reads one packet per wake-up of its socket (paho's loop_read), queues it, and its
    message iterator spends a task and several turns of the event loop on each: one message
    per few turns. At 80,000 heartbeat devices (1,333 messages a second) a busy loop turns
    slower than that, the backlog grows and heartbeats arrive after their devices' timeouts
    (the 100,000-subject bench: tens of thousands of false tickets). Here the reader drains
    what the socket holds, READ_BURST packets at most, with paho's own packet reader, and
    each message goes straight to the (synchronous) handler; errors reach aiomqtt as from its
    own reader, so `messages` still ends with MqttError when the connection goes.
    """

    def __init__(
        self,
        *args: Any,
        on_message: Callable[[str, bytes, bool, float | None], None],
        monotonic: Callable[[], float],
        **kw: Any,
    ):
        super().__init__(*args, **kw)
        self._deliver = on_message
        self._monotonic = monotonic
        # Our SUBSCRIBEs go SUBSCRIBE_IN_FLIGHT at a time: not a "concerning number" to warn of
        # (aiomqtt would log a non-JSON line per packet past 10).
        self.pending_calls_threshold = SUBSCRIBE_IN_FLIGHT
        self._held: list[tuple[str, bytes, bool, float | None]] | None = []
        self._arrivals = Arrivals()

    def hold(self) -> None:
        """Keep messages until `deliver` (while subscribing: the retained ones come then)."""
        self._held = []

    def deliver(self) -> None:
        """Hand over what was held, then every message as it is read."""
        held, self._held = self._held or [], None
        for topic, payload, retained, _ in held:
            # Timed now: a device's window starts at the subscription, not before.
            self._deliver(topic, payload, retained, None)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        arrived = self._arrivals.arrival()
        item = (message.topic, _payload(message.payload), bool(message.retain), arrived)
        if self._held is not None:
            self._held.append(item)
        else:
            self._deliver(*item)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        arrivals = self._arrivals = Arrivals()
        _widen_receive_buffer(sock)
        # Plain TCP only: through TLS the kernel's byte count is not paho's.
        if type(sock) is socket.socket:
            vars(client).pop("_sock_recv", None)  # the last connection's counter
            recv = client._sock_recv

            def counted(bufsize: int) -> bytes:
                data: bytes = recv(bufsize)
                arrivals.consumed += len(data)
                return data

            client._sock_recv = counted
            fileno = sock.fileno()
        else:
            fileno = -1

        def read() -> None:
            try:
                for n in range(READ_BURST):
                    if fileno >= 0 and n % MARK_EVERY == 0:
                        arrivals.mark(_queued(fileno), self._monotonic())
                    if client._sock is None:
                        return
                    rc = client._packet_read()
                    if rc == paho_client.MQTT_ERR_AGAIN:  # nothing more waiting, or half a packet
                        return
                    if rc > 0:
                        client._loop_rc_handle(rc)
                        return
            except Exception as exc:  # as aiomqtt: a broken socket means disconnected
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def start_misc() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the thread that connected: only thread-safe calls here.
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), read)
        self._loop.call_soon_threadsafe(start_misc)


class BrokerMonitor:
    """Watches one broker and the devices on it; `run()` until cancelled.

    `subjects` maps each configured device's key to its probe spec (all on this broker).
    `on_discovered(key, name)` is told of each device found through a discovery pattern,
    before its first observation.
    """

    def __init__(
        self,
        broker: BrokerSpec,
        subjects: Mapping[SubjectKey, MqttProbeSpec],
        sink: Sink,
        context: ProbeContext,
        *,
        on_discovered: Callable[[SubjectKey, str], None] | None = None,
        tick: float = 1.0,
    ) -> None:
        self.broker = broker
        self._sink = sink
        self._arrived: float | None = None  # the message being handled: when it came
        self._context = context
        self._on_discovered = on_discovered
        self._tick = tick
        self._clock = WatchedClock(tick, broker=broker.name)
        self._password = self._read_password(broker, context)
        self._tls = self._tls_context(broker, context) if broker.tls else None
        self.connected = False
        self._broker_emitted: tuple[Health, str | None] | None = None

        self._devices: list[_Device] = []
        # Only discovery asks whether a key is configured.
        self._configured: set[SubjectKey] = set(subjects) if broker.discovery else set()
        self._seconds: dict[float, float] = {}  # one float per distinct timeout, not per device
        self._exact: dict[str, tuple[_Route, ...]] = {}
        self._wild: _WildRoutes | None = None  # made for the first wildcard filter
        self._sparkplug: dict[tuple[str, str], list[_Device]] = {}
        self._filters: list[str] = []
        # The devices with a heartbeat (a device's `index` is its place here), and a heap of
        # (deadline, index) on the watched clock: see check_timeouts.
        self._beating: list[_Device] = []
        self._deadlines: list[tuple[float, int]] = []
        for key, spec in subjects.items():
            if spec.broker != broker.name:
                raise ValueError(f"{key} is on broker {spec.broker!r}, not {broker.name!r}")
            self._add_subject(key, spec)
        self._discoveries = [_Discovery(d) for d in broker.discovery]
        self._filters += [d.pattern for d in broker.discovery]
        self._filters = list(dict.fromkeys(self._filters))
        orgs = [broker.org] if broker.org else [k.org for k in subjects]
        orgs += [] if broker.org else [d.org for d in broker.discovery]
        self.broker_keys = [
            SubjectKey(org, "integration", f"mqtt-broker:{broker.name}")
            for org in dict.fromkeys(orgs)
        ]

    # --- setup -------------------------------------------------------------------------

    @staticmethod
    def _read_password(broker: BrokerSpec, context: ProbeContext) -> str | None:
        if broker.password_file is None and broker.password_env is None:
            return None
        return read_secret(
            file=broker.password_file,
            env=broker.password_env,
            base_dir=context.base_dir,
            environ=context.environ,
        )

    @staticmethod
    def _tls_context(broker: BrokerSpec, context: ProbeContext) -> ssl.SSLContext:
        ca_file = broker.ca_file
        if ca_file is not None and context.base_dir is not None:
            ca_file = str(context.base_dir / ca_file)  # an absolute ca_file stays as it is
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SecretError(f"cannot load CA file {ca_file}: {reason}") from None

    def _add_subject(self, key: SubjectKey, spec: MqttProbeSpec) -> None:
        heartbeats = spec.all_heartbeat_topics
        topics = [t for t in [spec.status_topic, *heartbeats] if t]
        if spec.sparkplug:
            sp = spec.sparkplug
            topics.append(f"{sparkplug.NAMESPACE}/{sp.group_id}/+/{sp.edge_node_id}")
        timeout = spec.heartbeat_timeout.total_seconds() if spec.heartbeat_timeout else None
        if timeout is not None:
            timeout = self._seconds.setdefault(timeout, timeout)
        device = _Device(key, spec.online, spec.offline, timeout, ", ".join(topics))
        self._devices.append(device)
        self._watch(device)
        if spec.status_topic:
            self._add_exact(spec.status_topic, _Route(device, "status", spec.status_topic))
            self._filters.append(spec.status_topic)
        for topic in heartbeats:
            route = _Route(device, "heartbeat", topic)
            if "+" in topic or "#" in topic:
                if self._wild is None:
                    self._wild = _WildRoutes()
                self._wild.add(topic, route)
            else:
                self._add_exact(topic, route)
            self._filters.append(topic)
        if spec.sparkplug:
            node = (spec.sparkplug.group_id, spec.sparkplug.edge_node_id)
            self._sparkplug.setdefault(node, []).append(device)
            base = f"{sparkplug.NAMESPACE}/{node[0]}/+/{node[1]}"
            self._filters += [base, f"{base}/+"]

    def _add_exact(self, topic: str, route: _Route) -> None:
        self._exact[topic] = (*self._exact.get(topic, ()), route)

    def _watch(self, device: _Device) -> None:
        if device.heartbeat_timeout is not None:
            device.index = len(self._beating)
            self._beating.append(device)

    # --- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, watch and reconnect until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_timeouts())
            group.create_task(self._stay_connected())

    async def _watch_timeouts(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.check_timeouts(self._context.monotonic())

    async def _stay_connected(self) -> None:
        broker = self.broker
        client = _DrainingClient(
            broker.host,
            broker.effective_port,
            username=broker.username,
            password=self._password,
            identifier=broker.client_id,
            keepalive=max(1, round(broker.keepalive.total_seconds())),
            timeout=broker.connect_timeout.total_seconds(),
            tls_context=self._tls,
            on_message=self._handle,
            monotonic=self._context.monotonic,
        )
        delay = broker.reconnect_min.total_seconds()
        while True:
            try:
                client.hold()
                async with client:
                    await self._subscribe(client)
                    self._connected()
                    client.deliver()
                    delay = broker.reconnect_min.total_seconds()
                    async for _ in client.messages:  # delivered as read; this ends with the link
                        pass
            except aiomqtt.MqttError as exc:
                self._disconnected(exc)
            # Equal jitter: at least half the delay, so a fleet of tocsins does not stampede.
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, broker.reconnect_max.total_seconds())

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to every filter, SUBSCRIBE_IN_FLIGHT packets awaiting their SUBACK at a
        time: 80,000 heartbeat devices are 400 packets, and one after the other they took
        longer than the connect timeout on a busy loop."""
        slots = asyncio.Semaphore(SUBSCRIBE_IN_FLIGHT)

        async def one(batch: list[str]) -> None:
            async with slots:
                granted = await client.subscribe([(topic, 1) for topic in batch])
            codes = [c if isinstance(c, int) else int(c.value) for c in granted]
            for topic, code in zip(batch, codes, strict=False):
                if code >= 0x80:  # SUBACK failure
                    log.warning("mqtt.subscribe_refused", broker=self.broker.name, topic=topic)

        every = self._filters
        batches = [every[i : i + SUBSCRIBE_BATCH] for i in range(0, len(every), SUBSCRIBE_BATCH)]
        outcomes = await asyncio.gather(*(one(b) for b in batches), return_exceptions=True)
        for outcome in outcomes:  # every one waited for, then the first failure raised
            if isinstance(outcome, BaseException):
                raise outcome

    def _connected(self) -> None:
        now = self._clock.at(self._context.monotonic())
        self.connected = True
        for device in self._all_devices():
            device.forget(now)
        # Every heartbeat window starts at the subscription: a new heap costs less than
        # moving every entry of the old one.
        self._deadlines = [(device.deadline(), device.index) for device in self._beating]
        heapq.heapify(self._deadlines)
        for device in self._beating:
            device.queued = True
        where = f"{self.broker.host}:{self.broker.effective_port}"
        self._emit_broker(Observation(Health.HEALTHY, f"connected to {where}"))

    def _disconnected(self, exc: aiomqtt.MqttError) -> None:
        was_connected, self.connected = self.connected, False
        error_class, kind = _classify(exc)
        where = f"{self.broker.host}:{self.broker.effective_port}"
        verb = "lost the connection to" if was_connected else "cannot connect to"
        self._emit_broker(
            Observation(Health.UNHEALTHY, f"{verb} {where}: {exc}", kind, error_class)
        )
        unknown = Observation(Health.UNKNOWN, f"MQTT broker {self.broker.name} is unreachable")
        for device in self._all_devices():
            self._emit(device, unknown)

    # --- messages and time: synchronous; a test with a fake clock calls check_timeouts ---

    def _handle(
        self, topic: str, payload: bytes, retained: bool, arrived: float | None = None
    ) -> None:
        """Take one message from the broker into account; `arrived` is when it had reached
        this host (monotonic, see Arrivals), if known: a busy loop handles it later."""
        mono = self._context.monotonic()
        if arrived is not None and arrived < mono:
            mono = arrived
        self._arrived = mono
        try:
            self._handle_at(topic, payload, retained, self._clock.at(mono))
        finally:
            self._arrived = None

    def _handle_at(self, topic: str, payload: bytes, retained: bool, now: float) -> None:
        for route in self._exact.get(topic, ()):
            device = route.device
            if device.emitted is _HEALTHY and route.role == "heartbeat" and not retained:
                # Most messages, kept to a lookup and two stores: a healthy device that
                # speaks now stays healthy (the same case as in _apply).
                device.last_alive, device.heard_on = now, route.topic
            else:
                self._apply(route, route.topic, payload, retained, now)
        wild = self._wild
        levels = topic.split("/") if wild is not None or self._discoveries else []
        if wild is not None:
            for route in wild.match(levels):
                self._apply(route, topic, payload, retained, now)
        if self._sparkplug and topic.partition("/")[0] == sparkplug.NAMESPACE:
            self._sparkplug_message(topic, payload, retained, now)
        for discovery in self._discoveries:
            if _matches(levels, discovery.levels):
                self._discover(discovery, levels, topic, payload, retained, now)

    def check_timeouts(self, now: float) -> None:
        """Report the devices whose heartbeat ran out as of monotonic `now`.

        Meant to be called every `tick`: a call that comes late reveals a stall, which
        extends every heartbeat (`_WatchedClock`). The heap holds, for each device whose
        verdict time can still change, a deadline no later than its real one: a live message
        only moves `last_alive`, and an entry that comes due is checked against it and pushed
        again when the device spoke since. So a call costs O(devices due), not O(devices).
        """
        now = self._clock.tick(now)
        if not self.connected:
            return
        deadlines, beating = self._deadlines, self._beating
        due: list[_Device] = []
        while deadlines and deadlines[0][0] <= now:
            if len(due) * 16 > len(deadlines):
                # Most of the heap is due (every window started at the subscription): one
                # pass over it costs less than popping them one by one.
                due += [beating[index] for deadline, index in deadlines if deadline <= now]
                deadlines[:] = [entry for entry in deadlines if entry[0] > now]
                heapq.heapify(deadlines)
                break
            due.append(beating[heapq.heappop(deadlines)[1]])
        again: list[tuple[float, int]] = []  # pushed back after, so each is seen once a call
        for device in due:
            deadline = device.runs_out(now)
            if deadline is None:
                device.queued = False  # time changes nothing more until the device speaks
                self._judge(device, now)
            else:
                again.append((deadline, device.index))
        if len(again) * 8 > len(deadlines):
            # Many at once (every window started at the subscription): one heapify is cheaper.
            deadlines += again
            heapq.heapify(deadlines)
        else:
            for entry in again:
                heapq.heappush(deadlines, entry)

    def _apply(self, route: _Route, topic: str, payload: bytes, retained: bool, now: float) -> None:
        device = route.device
        if route.role == "status":
            text = payload.decode("utf-8", errors="replace").strip()
            if text == device.online or text == device.offline:
                self._status(device, text, topic, retained, now)
                return
        if not retained:
            device.last_alive = now
            if device.emitted is _HEALTHY:
                # The common case, kept cheap: a healthy device alive now is still healthy.
                device.heard_on = topic
                return
            if device.status != "offline":
                device.heard_on = topic
        self._update(device, now)

    def _status(self, device: _Device, text: str, topic: str, retained: bool, now: float) -> None:
        online = text == device.online
        device.status = "online" if online else "offline"
        device.because(f"{'retained ' if retained else ''}{text!r} on {topic}")
        if online and not retained:
            device.last_alive = now
            if device.emitted is _HEALTHY:
                return  # healthy, online and alive now: nothing changes
        self._update(device, now)

    def _sparkplug_message(self, topic: str, payload: bytes, retained: bool, now: float) -> None:
        parsed = sparkplug.parse_topic(topic)
        if parsed is None or parsed.message_type not in sparkplug.NODE_MESSAGES:
            return
        devices = self._sparkplug.get((parsed.group_id, parsed.edge_node_id), ())
        if not devices:
            return
        bdseq: int | None = None
        if parsed.message_type in ("NBIRTH", "NDEATH"):
            try:
                bdseq = sparkplug.decode_bdseq(payload)
            except sparkplug.SparkplugError as exc:
                log.warning("mqtt.sparkplug_bad_payload", topic=topic, error=str(exc))
        for device in devices:
            if parsed.message_type == "NBIRTH":
                device.status, device.bdseq = "online", bdseq
                device.because(f"NBIRTH on {topic} (bdSeq {bdseq})")
            elif parsed.message_type == "NDEATH":
                # Without a birth seen since (re)connecting there is nothing to compare: the
                # death is the best news there is.
                if device.bdseq is not None and bdseq is not None and bdseq != device.bdseq:
                    # The broker publishes an old session's death certificate after the node
                    # has already been born again: it is news about a connection now gone.
                    log.info("mqtt.sparkplug_stale_ndeath", topic=topic, bdseq=bdseq)
                    continue
                device.status = "offline"
                device.because(f"NDEATH on {topic} (bdSeq {bdseq})")
                self._update(device, now)
                continue
            elif device.status is None:
                device.status = "online"  # data flows only after a birth we did not see
                device.because(f"{parsed.message_type} on {topic}")
            if not retained:
                device.last_alive = now
            self._update(device, now)

    def _discover(
        self,
        discovery: _Discovery,
        levels: list[str],
        topic: str,
        payload: bytes,
        retained: bool,
        now: float,
    ) -> None:
        spec = discovery.spec
        name = levels[discovery.id_level]
        route = discovery.found.get(name)
        if route is None:
            key = SubjectKey(spec.org, "device", spec.id_template.format(id=name))
            if key in self._configured:
                return  # configured explicitly: its own spec rules
            if len(discovery.found) >= spec.max_devices:
                if not discovery.capped:
                    discovery.capped = True
                    log.warning("mqtt.discovery_full", pattern=spec.pattern, max=spec.max_devices)
                return
            timeout = spec.heartbeat_timeout.total_seconds() if spec.heartbeat_timeout else None
            device = _Device(key, spec.online, spec.offline, timeout, topic, window_start=now)
            self._watch(device)
            route = discovery.found[name] = _Route(device, "status", topic)
            if self._on_discovered is not None:
                self._on_discovered(key, spec.name_template.format(id=name))
        self._apply(route, topic, payload, retained, now)

    # --- emitting, on edges ------------------------------------------------------------

    def _all_devices(self) -> Iterable[_Device]:
        yield from self._devices
        for discovery in self._discoveries:
            for route in discovery.found.values():
                yield route.device

    def _update(self, device: _Device, now: float) -> None:
        """After a message changed what is known of a device: keep its deadline, judge it."""
        if device.heartbeat_timeout is not None and not device.queued:
            device.queued = True
            heapq.heappush(self._deadlines, (device.deadline(), device.index))
        if self.connected:
            self._judge(device, now)

    def _judge(self, device: _Device, now: float) -> None:
        observation = device.judge(now)
        if observation is not None:
            self._emit(device, observation)

    def _emit(self, device: _Device, observation: Observation) -> None:
        edge = (observation.health, observation.error_class)
        if device.emitted != edge:
            device.emitted = _EDGES.setdefault(edge, edge)
            self._sink(device.key, observation, self._arrived)

    def _emit_broker(self, observation: Observation) -> None:
        edge = (observation.health, observation.error_class)
        if self._broker_emitted == edge:
            return
        self._broker_emitted = edge
        log.info(
            "mqtt.broker_" + ("up" if observation.healthy else "down"),
            broker=self.broker.name,
            detail=observation.detail,
        )
        for key in self.broker_keys:
            self._sink(key, observation)


def _classify(exc: aiomqtt.MqttError) -> tuple[str, str]:
    """(error_class, kind_hint) for a connection failure."""
    if isinstance(exc, aiomqtt.MqttCodeError):
        code = exc.rc if isinstance(exc.rc, int) or exc.rc is None else exc.rc.value
        # 3.1.1 CONNACK 4/5, MQTT 5 reason codes 0x86/0x87: bad login, not authorized
        if code in (4, 5, 0x86, 0x87):
            return "auth", "integration_credentials_invalid"
        if isinstance(exc, MqttConnectError):
            return "rejected", "integration_unreachable"
    text = str(exc).lower()
    for needle, error_class in (
        ("refused", "refused"),
        ("timed out", "timeout"),
        ("name or service", "dns"),
        ("name resolution", "dns"),
        ("certificate", "tls"),
        ("ssl", "tls"),
        ("disconnected", "disconnected"),
    ):
        if needle in text:
            return error_class, "integration_unreachable"
    return "network", "integration_unreachable"


def _matches(levels: list[str], pattern: list[str]) -> bool:
    """Whether a topic (split on "/") matches a filter (split on "/"), with + and #."""
    for i, want in enumerate(pattern):
        if want == "#":
            return True
        if i >= len(levels) or (want != "+" and want != levels[i]):
            return False
    return len(levels) == len(pattern)


def _payload(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()
