"""`tocsin demo`: the daemon watching a simulated site, all on loopback, in one process.

`run_demo(options, stop)` starts the simulators (HTTP devices and a cloud API, an SNMP agent,
MQTT devices when a broker can be had, a webhook receiver), writes a config with short windows
pointing at them, and runs `tocsin.app.run` and the scenario under one TaskGroup until `stop`
is set (or `duration` has passed). The database, the config and its two secrets (the webhook's
``whsec_`` secret and the cloud API's token, generated afresh) live in `state_dir`, a temporary
folder unless one is given, so `tocsin tickets list --config <state_dir>/tocsin-demo.toml` works
from another terminal while the demo runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tocsin import app
from tocsin.config import parse, split_host_port
from tocsin.demo.mqtt import (
    DEMO_MQTT_DEVICES,
    Mosquitto,
    MqttSite,
    MqttUnavailable,
    broker_reachable,
    mosquitto_binary,
)
from tocsin.demo.receiver import Delivery, WebhookReceiver
from tocsin.demo.scenario import CLOUD_NAME, DEMO_PERIOD, SNMP_NAME, Scenario, Step, demo_script
from tocsin.demo.site import NAMED_DEVICES, SimulatedSite
from tocsin.demo.snmp_agent import SnmpAgent

ORG = "demo"
DEMO_TOKEN = "demo-ops-token"
CONFIG_NAME = "tocsin-demo.toml"
WEBHOOK_NAME = "demo-receiver"
CLOUD_ID = "bms-cloud"
SNMP_ID = "core-switch"
BROKER_NAME = "site"

Out = Callable[[str], None]


class DemoError(Exception):
    """The demo cannot start as asked (a bad option); the message says why."""


@dataclass(frozen=True)
class Windows:
    """The demo's windows and probe timings, in seconds of scenario time."""

    debounce: float = 10.0
    recovery: float = 10.0
    reopen_window: float = 120.0
    interval: float = 2.0
    flap_window: float = 60.0
    flap_threshold: int = 4
    probe_timeout: float = 1.5

    def scaled(self, speed: float) -> Windows:
        """Every time divided by `speed` (probe timeouts not below 250 ms)."""
        return Windows(
            debounce=self.debounce / speed,
            recovery=self.recovery / speed,
            reopen_window=self.reopen_window / speed,
            interval=self.interval / speed,
            flap_window=self.flap_window / speed,
            flap_threshold=self.flap_threshold,
            probe_timeout=max(0.25, min(self.probe_timeout / speed, self.interval / speed)),
        )


@dataclass(frozen=True)
class DemoOptions:
    listen: str = "127.0.0.1:8080"
    state_dir: Path | None = None
    """Keep the database and config here; default: a temporary folder removed at the end."""
    duration: float | None = None
    """Stop after this many (real) seconds; default: when `stop` is set."""
    speed: float = 1.0
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    http_devices: int = len(NAMED_DEVICES)
    script: Sequence[Step] | None = None
    """Default: `demo_script()`, repeating every `period` scenario seconds."""
    period: float | None = DEMO_PERIOD
    windows: Windows = field(default_factory=Windows)


def seconds(value: float) -> str:
    """A config duration string for `value` seconds (whole milliseconds, at least 1 ms)."""
    return f"{max(1, round(value * 1000))}ms"


def _human(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:.3g}s"


def _toml(value: Any) -> str:
    """A TOML value: JSON's strings, numbers and booleans are TOML's too."""
    return json.dumps(value)


def demo_config(
    *,
    listen: str,
    state_dir: Path,
    site: SimulatedSite,
    receiver_url: str,
    windows: Windows,
    snmp: SnmpAgent | None = None,
    mqtt: MqttSite | None = None,
) -> str:
    """The demo's config text; its secrets are the files `webhook-secret` and
    `bms-cloud-token` beside it (see `write_secrets`)."""
    w = windows
    token_digest = hashlib.sha256(DEMO_TOKEN.encode()).hexdigest()
    lines = [
        "# Written by `tocsin demo`: a simulated site on loopback, with short windows.",
        "[server]",
        f"listen = {_toml(listen)}",
        f"public_url = {_toml('http://' + listen)}",
        "",
        "[store]",
        f"url = {_toml('sqlite+aiosqlite:///' + str(state_dir / 'tocsin.db'))}",
        "",
        "[monitor]",
        f"debounce = {_toml(seconds(w.debounce))}",
        f"recovery = {_toml(seconds(w.recovery))}",
        f"reopen_window = {_toml(seconds(w.reopen_window))}",
        f"interval = {_toml(seconds(w.interval))}",
        f"flap_window = {_toml(seconds(w.flap_window))}",
        f"flap_threshold = {w.flap_threshold}",
        "per_host_concurrency = 64  # every simulated device is on 127.0.0.1",
        "",
        "[log]",
        'level = "warning"',
        "",
        "[[orgs]]",
        f"slug = {_toml(ORG)}",
        'name = "Demo site"',
        "report_issue = true",
        "",
        "  [[orgs.tokens]]",
        'name = "ops"',
        'scope = "write"',
        f"token_sha256 = {_toml(token_digest)}  # of {DEMO_TOKEN!r}",
        "",
    ]
    timeout = _toml(seconds(w.probe_timeout))
    for device in site.devices.values():
        url = _toml(site.device_url(device.id))
        lines += [
            "[[devices]]",
            f"org = {_toml(ORG)}",
            f"id = {_toml(device.id)}",
            f"name = {_toml(device.name)}",
            *([f"space = {_toml(device.space)}"] if device.space else []),
            f'probe = {{ type = "http", url = {url}, timeout = {timeout}, '
            'expect_json = { status = "ok" } }',
            "",
        ]
    if snmp is not None:
        lines += [
            "[[devices]]",
            f"org = {_toml(ORG)}",
            f"id = {_toml(SNMP_ID)}",
            f"name = {_toml(SNMP_NAME)}",
            'space = "server room"',
            f'probe = {{ type = "snmp", host = {_toml(snmp.host)}, port = {snmp.port}, '
            f'community = "public", timeout = {timeout}, retries = 0 }}',
            "",
        ]
    lines += [
        "[[integrations]]",
        f"org = {_toml(ORG)}",
        f"id = {_toml(CLOUD_ID)}",
        f"name = {_toml(CLOUD_NAME)}",
        f'check = {{ type = "http", url = {_toml(site.cloud_url)}, timeout = {timeout}, '
        'auth = { bearer_file = "bms-cloud-token" } }',
        "",
    ]
    if mqtt is not None:
        lines += [
            "[[mqtt.brokers]]",
            f"name = {_toml(BROKER_NAME)}",
            f"host = {_toml(mqtt.host)}",
            f"port = {mqtt.port}",
            f"org = {_toml(ORG)}",
            'reconnect_max = "5s"',
            "",
        ]
        for mqtt_device in mqtt.devices.values():
            probe = (
                f'{{ type = "mqtt", broker = {_toml(BROKER_NAME)}, '
                f"status_topic = {_toml(mqtt.status_topic(mqtt_device.id))}"
            )
            if mqtt_device.heartbeat:
                probe += (
                    f", heartbeat_topic = {_toml(mqtt.heartbeat_topic(mqtt_device.id))}"
                    f", heartbeat_timeout = {_toml(seconds(3 * w.interval))}"
                )
            lines += [
                "[[devices]]",
                f"org = {_toml(ORG)}",
                f"id = {_toml(mqtt_device.id)}",
                f"name = {_toml(mqtt_device.name)}",
                *([f"space = {_toml(mqtt_device.space)}"] if mqtt_device.space else []),
                f"probe = {probe} }}",
                "",
            ]
    lines += [
        "[[webhooks]]",
        f"name = {_toml(WEBHOOK_NAME)}",
        f"url = {_toml(receiver_url)}",
        'secret_file = "webhook-secret"',
        f"orgs = [{_toml(ORG)}]",
        "",
        "[webhook_delivery]",
        'schedule = ["1s", "5s", "30s", "2m"]',
        'poll_interval = "200ms"',
        "",
    ]
    return "\n".join(lines)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable by its owner only."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value + "\n")


def _listen_address(listen: str) -> str:
    """`listen` with a port 0 replaced by a free one, so the links in webhooks are right."""
    host, port = split_host_port(listen)
    if not host or not 0 <= port < 65536:
        raise DemoError(f"--listen: expected HOST:PORT, e.g. 127.0.0.1:8080, got {listen!r}")
    if port:
        return listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


async def _mqtt_site(
    options: DemoOptions, workdir: Path, heartbeat_every: float
) -> tuple[MqttSite | None, Mosquitto | None, str]:
    """The MQTT devices on a reachable broker, or on a mosquitto started here, or none."""
    host, port = options.mqtt_host, options.mqtt_port
    broker: Mosquitto | None = None
    if await broker_reachable(host, port):
        where = f"the broker at {host}:{port}"
    elif mosquitto_binary() is not None:
        broker = Mosquitto(workdir / "mosquitto")
        try:
            await broker.start()
        except MqttUnavailable as exc:
            return None, None, f"none ({exc})"
        host, port = broker.host, broker.port
        where = f"mosquitto on {host}:{port}, started for the demo"
    else:
        return None, None, f"none (no broker at {host}:{port} and mosquitto is not installed)"
    site = MqttSite(host, port, DEMO_MQTT_DEVICES, heartbeat_every=heartbeat_every)
    try:
        await site.start()
    except (OSError, TimeoutError, MqttUnavailable) as exc:
        await site.close()
        if broker is not None:
            await broker.stop()
        return None, None, f"none (the devices could not connect to {where}: {exc})"
    return site, broker, f"{len(site.devices)} devices on {where}"


async def _after(
    ready: asyncio.Event, stop: asyncio.Event, work: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run `work()` once the daemon is ready (not at all if it stops first)."""
    waiting = asyncio.ensure_future(ready.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        stopping.cancel()
    if not stop.is_set():
        await work()


async def _stop_after(stop: asyncio.Event, duration: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    stop.set()


async def run_demo(
    options: DemoOptions, stop: asyncio.Event, *, out: Out | None = print
) -> list[Delivery]:
    """Run the demo until `stop` is set (or `options.duration` passed); return what the
    receiver got. Raises DemoError for a bad option, OSError when a port is taken."""
    say: Out = out if out is not None else (lambda line: None)
    if options.speed <= 0:
        raise DemoError("--speed must be positive")
    listen = _listen_address(options.listen)
    windows = options.windows.scaled(options.speed)
    workdir = Path(tempfile.mkdtemp(prefix="tocsin-demo-"))
    state_dir = (options.state_dir or workdir / "state").resolve()
    secret = new_webhook_secret()
    site = SimulatedSite(options.http_devices, hang_seconds=max(2.0, 3 * windows.probe_timeout))
    receiver = WebhookReceiver(secret, out=out)
    snmp = SnmpAgent()
    mqtt: MqttSite | None = None
    broker: Mosquitto | None = None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        write_secret(state_dir / "webhook-secret", secret)
        write_secret(state_dir / "bms-cloud-token", site.cloud_token)
        await site.start()
        await receiver.start()
        await snmp.start()
        mqtt, broker, mqtt_note = await _mqtt_site(options, workdir, windows.interval)
        text = demo_config(
            listen=listen,
            state_dir=state_dir,
            site=site,
            receiver_url=receiver.url,
            windows=windows,
            snmp=snmp,
            mqtt=mqtt,
        )
        config_path = state_dir / CONFIG_NAME
        config_path.write_text(text, encoding="utf-8")
        settings = parse(text, base_dir=state_dir, env={})
        scenario = Scenario(
            demo_script() if options.script is None else options.script,
            site=site,
            snmp=snmp,
            mqtt=mqtt,
            speed=options.speed,
            period=options.period,
            out=out,
        )
        ready = asyncio.Event()

        def on_ready(addresses: list[tuple[str, int]]) -> None:
            host, port = addresses[0]
            base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            api = f"{base}/api/v1/orgs/{ORG}/tickets"
            w = windows
            for line in (
                "tocsin demo: a simulated site on loopback, watched by tocsin (Ctrl-C stops it)",
                f"  API       {api}",
                f"  web       {base}/orgs/{ORG}/tickets   (sign in with the token below)",
                f"  token     {DEMO_TOKEN}   curl -s -H 'Authorization: Bearer {DEMO_TOKEN}' {api}",
                f"  tickets   tocsin tickets list --config {config_path}",
                f"  health    tocsin subjects --config {config_path}",
                f"  HTTP      {len(site.devices)} devices and the {CLOUD_NAME} at {site.base_url}/",
                f"  SNMP      {SNMP_NAME}, v2c agent on udp {snmp.host}:{snmp.port}",
                f"  MQTT      {mqtt_note}",
                f"  webhooks  signed, to {receiver.url}: each one is printed below",
                f"  windows   debounce {_human(w.debounce)}, recovery {_human(w.recovery)}, "
                f"reopen window {_human(w.reopen_window)}, probes every {_human(w.interval)}"
                + (f" (speed {options.speed:g})" if options.speed != 1 else ""),
                "",
            ):
                say(line)
            ready.set()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(app.run(settings, stop, on_ready=on_ready), name="demo-tocsin")
                group.create_task(
                    _after(ready, stop, lambda: scenario.run(stop)), name="demo-scenario"
                )
                if mqtt is not None:
                    group.create_task(mqtt.run(stop), name="demo-mqtt-devices")
                if options.duration is not None:
                    group.create_task(_stop_after(stop, options.duration), name="demo-duration")
        except BaseExceptionGroup as group_error:
            if len(group_error.exceptions) == 1:
                raise group_error.exceptions[0] from None
            raise
        deliveries = list(receiver.deliveries)
        verified = sum(d.verified for d in deliveries)
        say(f"\ntocsin demo stopped: {len(deliveries)} webhooks received, {verified} verified.")
        if options.state_dir is not None:
            say(f"The tickets stay in {state_dir}: tocsin tickets list --config {config_path}")
        return deliveries
    finally:
        stop.set()
        if mqtt is not None:
            await mqtt.close()
        if broker is not None:
            await broker.stop()
        await snmp.stop()
        await receiver.close()
        await site.close()
        shutil.rmtree(workdir, ignore_errors=True)
