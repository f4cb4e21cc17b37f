"""Builds the health monitor and its probes from the config and runs them until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from sqlalchemy.engine import make_url
from yarl import URL

from tocsin.config import Settings
from tocsin.monitor.config import Subject, WindowOverrides, interval_for, windows_for
from tocsin.monitor.runtime import HealthMonitor
from tocsin.monitor.scheduler import PullScheduler
from tocsin.probes.base import ProbeContext
from tocsin.probes.credentials import CredentialCheck
from tocsin.probes.http import HTTP_RESOURCE, HttpProbe, HttpSpec, make_http_session
from tocsin.probes.mqtt import BrokerMonitor, MqttProbeSpec
from tocsin.probes.observation import SubjectKey
from tocsin.probes.push import PushRegistry, PushSpec, ping_handler
from tocsin.probes.snmp import SnmpProbe, SnmpSpec, close_snmp_engine
from tocsin.secrets import read_secret
from tocsin.tickets.store import TicketStore

log = structlog.get_logger("tocsin.monitor")


class MonitorService:
    """The monitor, the pull scheduler, one BrokerMonitor per MQTT broker and push heartbeats."""

    def __init__(
        self,
        settings: Settings,
        store: TicketStore,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        config = settings.config
        self.settings = settings
        self.context = ProbeContext(
            base_dir=settings.base_dir, environ=settings.environ, monotonic=monotonic, wall=wall
        )
        defaults = config.monitor
        self.monitor = HealthMonitor(
            store,
            monotonic=monotonic,
            wall=wall,
            default_windows=windows_for(defaults, WindowOverrides()),
        )
        self.scheduler = PullScheduler(
            self.monitor.observe,
            max_concurrency=defaults.max_concurrency,
            per_host=defaults.per_host_concurrency,
            monotonic=monotonic,
            wall=wall,
        )
        self.push = PushRegistry(push_secret(settings)) if _has_push(settings) else None
        self.ping: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = (
            ping_handler(self.push, self.monitor.observe, monotonic=monotonic)
            if self.push is not None
            else None
        )
        subjects: list[Subject] = [*config.devices, *config.integrations]
        for subject in subjects:
            self.monitor.configure(subject.key, subject.name, windows_for(defaults, subject))

    async def run(self, stop: asyncio.Event) -> None:
        """Start the probes and the monitor; return once `stop` is set and all is closed."""
        config = self.settings.config
        self.context.resources[HTTP_RESOURCE] = make_http_session(
            limit=config.monitor.max_concurrency, limit_per_host=config.monitor.per_host_concurrency
        )
        try:
            await self.monitor.restore()
            brokers = self._build_probes()
            log.info(
                "health monitor started",
                subjects=len(self.monitor.subjects()),
                pull=len(self.scheduler),
                brokers=len(brokers),
                push=len(self.push.subjects()) if self.push else 0,
            )
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.monitor.run(), name="tocsin-monitor"),
                    group.create_task(self.scheduler.run(), name="tocsin-scheduler"),
                    *(
                        group.create_task(b.run(), name=f"tocsin-mqtt-{b.broker.name}")
                        for b in brokers
                    ),
                ]
                if self.push is not None:
                    tasks.append(group.create_task(self._expire_push(), name="tocsin-push"))
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            session = self.context.resources.pop(HTTP_RESOURCE, None)
            if session is not None:
                await session.close()
            await close_snmp_engine(self.context)

    def _build_probes(self) -> list[BrokerMonitor]:
        config = self.settings.config
        defaults = config.monitor
        by_broker: dict[str, dict[SubjectKey, MqttProbeSpec]] = {}
        for device in config.devices:
            probe = device.probe
            interval = interval_for(defaults, device).total_seconds()
            if isinstance(probe, HttpSpec):
                self.scheduler.add(
                    device.key,
                    HttpProbe(probe, self.context),
                    timeout=probe.timeout.total_seconds(),
                    interval=interval,
                    host=_host(probe.url),
                )
            elif isinstance(probe, SnmpSpec):
                self.scheduler.add(
                    device.key,
                    SnmpProbe(probe, self.context),
                    timeout=probe.deadline,
                    interval=interval,
                    host=probe.host,
                )
            elif isinstance(probe, MqttProbeSpec):
                by_broker.setdefault(probe.broker, {})[device.key] = probe
            elif isinstance(probe, PushSpec) and self.push is not None:
                key = self.push.register(
                    device.key,
                    probe,
                    now_mono=self.context.monotonic(),
                    base_dir=self.context.base_dir,
                    environ=self.context.environ,
                )
                log.info(
                    "push heartbeat url",
                    org=device.org,
                    subject=f"device:{device.id}",
                    path=f"/ping/{key[:4]}…",
                )  # the full key is a secret
        for integration in config.integrations:
            check = integration.check
            cron = check.cron
            self.scheduler.add(
                integration.key,
                CredentialCheck(check, self.context),
                timeout=check.timeout.total_seconds(),
                interval=None if cron else interval_for(defaults, integration).total_seconds(),
                cron=cron,
                host=_host(check.url),
            )
        brokers = []
        for broker in config.mqtt.brokers:
            subjects = by_broker.get(broker.name, {})
            if not subjects and not broker.discovery:
                continue
            monitor = BrokerMonitor(
                broker,
                subjects,
                self.monitor.observe,
                self.context,
                on_discovered=self.monitor.discovered,
            )
            for broker_key in monitor.broker_keys:
                self.monitor.discovered(broker_key, f"MQTT broker {broker.name}")
            brokers.append(monitor)
        return brokers

    async def _expire_push(self) -> None:
        assert self.push is not None
        while True:
            for key, observation in self.push.expired(self.context.monotonic()):
                self.monitor.observe(key, observation)
            await asyncio.sleep(1.0)


def _host(url: str) -> str | None:
    with contextlib.suppress(ValueError):
        return URL(url).host
    return None


def _has_push(settings: Settings) -> bool:
    return any(isinstance(d.probe, PushSpec) for d in settings.config.devices)


def push_secret(settings: Settings) -> bytes:
    """The site secret push keys derive from: configured, or kept beside the SQLite file."""
    monitor = settings.config.monitor
    if monitor.push_secret_file or monitor.push_secret_env:
        return read_secret(
            file=monitor.push_secret_file,
            env=monitor.push_secret_env,
            base_dir=settings.base_dir,
            environ=settings.environ,
        ).encode()
    url = make_url(settings.store_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise ValueError("push probes need monitor.push_secret_file or monitor.push_secret_env")
    path = Path(url.database).with_name("push-secret")
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()
