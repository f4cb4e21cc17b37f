"""The simulated site's MQTT side: a broker (one already running, or a mosquitto started here)
and devices that publish their status and heartbeats.

Each device is a minimal MQTT 3.1.1 client on a raw socket (asyncio streams), so that a crash
can be simulated faithfully: `kill` drops the TCP connection without a DISCONNECT, and the
broker publishes the device's Last Will (a retained ``offline`` on its status topic), exactly
as when a real device loses power. On connect a device publishes a retained ``online``;
devices with a heartbeat publish on their telemetry topic every `heartbeat_every` seconds.

Topics live under a per-run prefix (``tocsin-demo/<6 hex digits>``), so two demos sharing a
broker never see each other's devices; `close` clears the retained status messages it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import secrets
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CONNECT_TIMEOUT = 2.0
KEEPALIVE = 30  # seconds; the devices ping (or publish) far more often
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
ONLINE = b"online"
OFFLINE = b"offline"


class MqttUnavailable(Exception):
    """No broker could be reached or started."""


@dataclass(frozen=True)
class MqttSimDevice:
    """An MQTT device: `heartbeat` ones also publish telemetry on a schedule."""

    id: str
    name: str
    heartbeat: bool = False
    space: str | None = None


DEMO_MQTT_DEVICES: tuple[MqttSimDevice, ...] = (
    MqttSimDevice("air-handler", "Air handler, roof", heartbeat=False, space="roof"),
    MqttSimDevice("plant-sensor", "Plant room sensor", heartbeat=True, space="plant room"),
)


# -- MQTT 3.1.1 packets (only what a publishing device needs) ----------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def connect_packet(
    client_id: str, *, keepalive: int = KEEPALIVE, will: tuple[str, bytes] | None = None
) -> bytes:
    flags = 0x02  # clean session
    payload = _field(client_id.encode())
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        payload += _field(will[0].encode()) + _field(will[1])
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, *, retain: bool = False) -> bytes:
    body = _field(topic.encode()) + payload  # QoS 0: no packet id
    return bytes([0x30 | (0x01 if retain else 0)]) + _varint(len(body)) + body


class _Connection:
    """One open MQTT session: CONNECT sent and accepted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # The broker only answers pings: read and drop them, so the socket never fills up.
        self._drain = asyncio.create_task(self._discard())

    @classmethod
    async def open(
        cls, host: str, port: int, client_id: str, will: tuple[str, bytes] | None = None
    ) -> _Connection:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(connect_packet(client_id, will=will))
                await writer.drain()
                connack = await reader.readexactly(4)
            except BaseException:
                writer.transport.abort()
                raise
        if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
            writer.transport.abort()
            raise MqttUnavailable(f"the broker refused the connection (CONNACK {connack!r})")
        return cls(reader, writer)

    async def _discard(self) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await self.reader.read(4096):
                pass

    async def send(self, packet: bytes) -> None:
        self.writer.write(packet)
        await self.writer.drain()

    def abort(self) -> None:
        """Drop the connection without a word: the broker publishes the Last Will."""
        self._drain.cancel()
        self.writer.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            await self.send(DISCONNECT)
        self._drain.cancel()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def broker_reachable(host: str, port: int) -> bool:
    """Whether an MQTT broker at host:port accepts an anonymous connection."""
    try:
        connection = await _Connection.open(host, port, f"tocsin-demo-check-{secrets.token_hex(4)}")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, MqttUnavailable):
        return False
    await connection.close()
    return True


# -- a broker of our own --------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """mosquitto in the foreground on host:<free port>, anonymous, no persistence; its config
    and log in `workdir`."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", binary: str | None = None):
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.binary = binary or mosquitto_binary()
        self.log_path = workdir / "mosquitto.log"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, deadline: float = 10.0) -> None:
        if self.binary is None:
            raise MqttUnavailable("mosquitto is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port(self.host)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\npersistence false\n"
            # As root mosquitto would switch to the `mosquitto` user, who cannot read this
            # folder; as anyone else the line changes nothing.
            f"user {getpass.getuser()}\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is ours to handle: it is stopped last
            )
        until = time.monotonic() + deadline
        while not await broker_reachable(self.host, self.port):
            if self._process.returncode is not None or time.monotonic() > until:
                await self.stop()
                tail = self.log_path.read_text(errors="replace")[-500:].strip()
                raise MqttUnavailable(f"mosquitto did not start: {tail or 'no output'}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


# -- the devices ----------------------------------------------------------------------------


class MqttSite:
    """The MQTT devices of the site, connected to one broker."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: Sequence[MqttSimDevice] = DEMO_MQTT_DEVICES,
        *,
        prefix: str | None = None,
        heartbeat_every: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.devices = {d.id: d for d in devices}
        self.prefix = prefix or f"tocsin-demo/{secrets.token_hex(3)}"
        self.heartbeat_every = heartbeat_every
        self._connections: dict[str, _Connection] = {}
        self._killed: set[str] = set()
        self._lock = asyncio.Lock()

    def status_topic(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/status"

    def heartbeat_topic(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/telemetry"

    def connected(self, device_id: str) -> bool:
        return device_id in self._connections

    async def start(self) -> None:
        """Connect every device (raises when the broker cannot be reached)."""
        for device_id in self.devices:
            await self._connect(device_id)

    async def _connect(self, device_id: str) -> None:
        topic = self.status_topic(device_id)
        connection = await _Connection.open(
            self.host,
            self.port,
            f"{self.prefix.replace('/', '-')}-{device_id}",
            will=(topic, OFFLINE),
        )
        await connection.send(publish_packet(topic, ONLINE, retain=True))
        self._connections[device_id] = connection

    def kill(self, device_id: str) -> None:
        """The device dies: its connection drops and the broker publishes its Last Will."""
        if device_id not in self.devices:
            raise KeyError(f"no simulated MQTT device {device_id!r}")
        self._killed.add(device_id)
        connection = self._connections.pop(device_id, None)
        if connection is not None:
            connection.abort()

    async def revive(self, device_id: str) -> None:
        """The device comes back: it connects and says `online` again."""
        if device_id not in self.devices:
            raise KeyError(f"no simulated MQTT device {device_id!r}")
        self._killed.discard(device_id)
        async with self._lock:
            if device_id not in self._connections:
                with contextlib.suppress(OSError, TimeoutError, MqttUnavailable):
                    await self._connect(device_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeats (or pings, to keep the session) until `stop`; a device whose
        connection broke (the broker restarted) reconnects on the next beat."""
        while not stop.is_set():
            async with self._lock:
                for device_id, device in self.devices.items():
                    if device_id in self._killed:
                        continue
                    connection = self._connections.get(device_id)
                    try:
                        if connection is None:
                            await self._connect(device_id)
                        elif device.heartbeat:
                            payload = f'{{"t":{time.time():.1f},"ok":true}}'.encode()
                            topic = self.heartbeat_topic(device_id)
                            await connection.send(publish_packet(topic, payload))
                        else:
                            await connection.send(PINGREQ)
                    except (OSError, TimeoutError, asyncio.IncompleteReadError, MqttUnavailable):
                        lost = self._connections.pop(device_id, None)
                        if lost is not None:
                            lost.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_every)

    async def close(self) -> None:
        """Disconnect every device and clear the retained status messages of this run."""
        async with self._lock:
            connections, self._connections = self._connections, {}
            for connection in connections.values():
                await connection.close()
            with contextlib.suppress(OSError, TimeoutError, MqttUnavailable):
                cleaner = await _Connection.open(
                    self.host, self.port, f"{self.prefix.replace('/', '-')}-cleanup"
                )
                for device_id in self.devices:
                    await cleaner.send(
                        publish_packet(self.status_topic(device_id), b"", retain=True)
                    )
                await cleaner.close()
