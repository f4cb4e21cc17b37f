"""Builds the health monitor and its probes from the config and runs them until stopped."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from sqlalchemy.engine import make_url

from tocsin.config import Settings
from tocsin.metrics import Metrics
from tocsin.monitor import parents
from tocsin.monitor.config import (
    DeviceConfig,
    Subject,
    WindowOverrides,
    config_windows,
    interval_for,
    maintenance_subjects,
    members_of,
    spaces_of,
    windows_for,
)
from tocsin.monitor.groups import GroupRules
from tocsin.monitor.lag import LoopWatch
from tocsin.monitor.pulls import InlinePulls, PullRunner, PullSpec
from tocsin.monitor.runtime import HealthMonitor
from tocsin.monitor.worker import WorkerProcess, WorkerPulls, cpus
from tocsin.probes.base import ProbeContext, Sink
from tocsin.probes.mqtt import BrokerMonitor, BrokerSpec, MqttProbeSpec
from tocsin.probes.observation import Observation, SubjectKey
from tocsin.probes.push import PushRegistry, PushSpec, ping_handler
from tocsin.secrets import read_secret
from tocsin.tickets.store import TicketStore
from tocsin.tracker import SubjectHealth, Windows
from tocsin.waits import first

log = structlog.get_logger("tocsin.monitor")

_WINDOW_KEYS = tuple(WindowOverrides.model_fields)
_WINDOW_KEY_SET = frozenset(_WINDOW_KEYS)
WORKER_FROM = 2_000  # pull subjects from which pull_probes = "auto" means a worker process


@dataclass
class _Broker:
    spec: BrokerSpec
    devices: dict[SubjectKey, MqttProbeSpec]
    monitor: BrokerMonitor
    task: asyncio.Task[None] | None = None


class MonitorService:
    """The monitor, the pull scheduler, one BrokerMonitor per MQTT broker and push heartbeats.

    `run` starts them from the settings; `apply` moves a running service to new settings in
    place: added subjects start, removed ones stop (their saved state dropped), changed probes
    are replaced, and every subject keeps its tracker state, windows included.
    """

    def __init__(
        self,
        settings: Settings,
        store: TicketStore,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
        loop_watch: LoopWatch | None = None,
        spare: WorkerProcess | None = None,
    ) -> None:
        """`spare`: a probe worker started ahead (the CLI's guess); closed if not wanted."""
        self.settings = settings
        self.metrics = metrics
        self.loop_watch = loop_watch or LoopWatch(monotonic=monotonic)
        self.watching = asyncio.Event()  # set once every probe has started
        self.context = ProbeContext(
            base_dir=settings.base_dir, environ=settings.environ, monotonic=monotonic, wall=wall
        )
        defaults = settings.config.monitor
        self.monitor = HealthMonitor(
            store,
            monotonic=monotonic,
            wall=wall,
            default_windows=windows_for(defaults, WindowOverrides()),
        )
        self.pulls: PullRunner
        if _in_worker(settings):
            self.pulls = WorkerPulls(
                self.monitor.observe,
                base_dir=settings.base_dir,
                environ=settings.environ,
                max_concurrency=defaults.max_concurrency,
                per_host=defaults.per_host_concurrency,
                log_level=settings.config.log.level,
                log_format=settings.config.log.format,
                metrics=metrics,
                spare=spare,
            )
        else:
            if spare is not None:
                spare.close()
            self.pulls = InlinePulls(
                self.monitor.observe,
                self.context,
                max_concurrency=defaults.max_concurrency,
                per_host=defaults.per_host_concurrency,
                metrics=metrics,
                monotonic=monotonic,
                wall=wall,
                lag=self.loop_watch.lost_since,
            )
        self.monitor.on_health = self._health_changed
        self._retry: dict[SubjectKey, float] = {}  # a failing subject's check interval
        self._push: PushRegistry | None = None
        self._ping: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        self._subjects: dict[SubjectKey, Subject] = {}
        self._spaces: set[SubjectKey] = set()
        self._probes: dict[SubjectKey, object] = {}
        self._intervals: dict[SubjectKey, float] = {}
        self._brokers: dict[str, _Broker] = {}
        self._group: asyncio.TaskGroup | None = None
        subjects = _subjects(settings)
        # The probe worker's schedule first: a worker started ahead reads it while the rest
        # (the tracker's 100,000 subjects, the store, the MQTT brokers) is set up here.
        self._early: dict[str, dict[SubjectKey, MqttProbeSpec]] | None = None
        if isinstance(self.pulls, WorkerPulls):
            self._subjects = subjects
            self._early = self._sync_pulls(settings)
            self.pulls.preload()
        self._configure_subjects(settings, subjects)

    async def handle_ping(self, request: web.Request) -> web.StreamResponse:
        """GET|POST /ping/{key}: a push heartbeat (404 until a push subject is configured)."""
        if self._ping is None:
            return web.Response(status=404, text="not found")
        return await self._ping(request)

    async def run(self, stop: asyncio.Event) -> None:
        """Start the probes and the monitor; return once `stop` is set and all is closed."""
        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            pulls_started = asyncio.Event()
            tasks = [group.create_task(self.pulls.run(pulls_started), name="tocsin-pulls")]
            await self.monitor.restore()
            self._group = group
            devices = self._early if self._early is not None else self._sync_pulls(self.settings)
            self._early = None
            self.pulls.go()
            # The worker reads its schedule while the brokers are built here.
            await first(self.pulls.handed_over.wait(), stop.wait())
            self._sync_brokers(self.settings, devices)
            tasks += [
                group.create_task(self.monitor.run(), name="tocsin-monitor"),
                group.create_task(self._expire_push(), name="tocsin-push"),
            ]
            await first(pulls_started.wait(), stop.wait())
            if not stop.is_set():
                self.watching.set()
                log.info(
                    "health monitor started",
                    subjects=len(self.monitor.subjects()),
                    pull=len(self.pulls),
                    pull_probes_in=(
                        f"worker process {self.pulls.pid}"
                        if isinstance(self.pulls, WorkerPulls)
                        else "the daemon"
                    ),
                    brokers=len(self._brokers),
                    push=len(self._push.subjects()) if self._push else 0,
                    restore_seconds=round(time.monotonic() - began, 2),
                )
            await stop.wait()
            self._group = None
            for task in tasks + [b.task for b in self._brokers.values() if b.task]:
                task.cancel()

    async def apply(self, settings: Settings) -> dict[str, list[str]]:
        """Move the running service to `settings`; return what changed, by subject."""
        old, old_spaces = self._subjects, self._spaces
        self.settings = settings
        self.context.base_dir, self.context.environ = settings.base_dir, settings.environ
        wanted = _subjects(settings)
        removed = [key for key in old if key not in wanted]
        for key in removed:
            self.pulls.remove(key)
            if self._push is not None:
                self._push.unregister(key)
        config = settings.config
        spaces = spaces_of(config.spaces, config.devices)
        removed += [key for key in old_spaces if key not in spaces]
        await self.monitor.remove(*removed)
        self._configure_subjects(settings, wanted)
        changed = self._sync_probes(settings)
        added = [
            k for k in [*self._subjects, *self._spaces] if k not in old and k not in old_spaces
        ]
        return {
            "added": sorted(map(str, added)),
            "removed": sorted(map(str, removed)),
            "changed": sorted(str(k) for k in changed if k in old),
        }

    def _configure_subjects(
        self, settings: Settings, subjects: dict[SubjectKey, Subject] | None = None
    ) -> None:
        defaults = settings.config.monitor
        self.monitor.default_windows = windows_for(defaults, WindowOverrides())
        self._subjects = _subjects(settings) if subjects is None else subjects
        self._retry.clear()
        shared: dict[tuple[object, ...], Windows] = {}  # 100,000 subjects, a few distinct windows
        for key, subject in self._subjects.items():
            spec = _spec(subject)
            looks = not isinstance(spec, MqttProbeSpec | PushSpec)  # pulls, not time-based
            if subject.model_fields_set.isdisjoint(_WINDOW_KEY_SET):
                own: tuple[object, ...] = (looks,)  # the defaults: nearly every subject
            else:
                own = (looks, *(getattr(subject, name) for name in _WINDOW_KEYS))
            windows = shared.get(own)
            if windows is None:
                windows = shared[own] = windows_for(defaults, subject, confirm_by_checks=looks)
            self.monitor.configure(key, subject.name, windows)
            if looks:
                interval = interval_for(defaults, subject).total_seconds()
                debounce = windows.debounce.total_seconds()
                self._retry[key] = max(0.1, min(interval, debounce / 3 if debounce else interval))
        # Spaces are subjects too: each the parent of its devices (their group holds them) and
        # a dependant of its parent space.
        config = settings.config
        spaces = spaces_of(config.spaces, config.devices)
        self._spaces = set(spaces)
        window = defaults.group_window.total_seconds() if defaults.group_window else None
        rules = GroupRules(defaults.group_threshold, defaults.group_threshold_percent, window)
        members = members_of(config.devices)
        self.monitor.set_spaces({k: s.name for k, s in spaces.items()}, members, rules)
        self.monitor.set_storm(defaults.storm_limit, [org.slug for org in config.orgs])
        depends_on = {key: s.depends_on for key, s in self._subjects.items() if s.depends_on}
        known = {**self._subjects, **spaces}
        wiring = parents.resolve(depends_on, known)
        for space, devices in members.items():
            for device in devices:
                wiring.setdefault(device, []).append(space)
        for key, info in spaces.items():
            if info.parent is not None:
                wiring[key] = [info.parent]
        self.monitor.set_parents(wiring)
        matched = functools.partial(
            maintenance_subjects, config.devices, config.integrations, spaces
        )
        self.monitor.set_maintenance(matched, config_windows(config))

    def _health_changed(self, key: SubjectKey, health: SubjectHealth) -> None:
        """A failing subject is looked at more often, until it is up or ticketed."""
        retry = self._retry.get(key)
        if retry is not None:
            self.pulls.retry(key, retry if health is SubjectHealth.FAILING else None)

    def _sync_probes(self, settings: Settings) -> set[SubjectKey]:
        """Start what is new or changed since the last sync; return the subjects touched."""
        touched: set[SubjectKey] = set()
        devices = self._sync_pulls(settings, touched)
        return touched | self._sync_brokers(settings, devices)

    def _sync_pulls(
        self, settings: Settings, touched: set[SubjectKey] | None = None
    ) -> dict[str, dict[SubjectKey, MqttProbeSpec]]:
        """Sync the pull and push probes (adding what changed to `touched`); return the MQTT
        devices by broker, for `_sync_brokers`."""
        defaults = settings.config.monitor
        touched = set() if touched is None else touched
        devices: dict[str, dict[SubjectKey, MqttProbeSpec]] = {}
        for key, subject in self._subjects.items():
            spec = _spec(subject)
            if isinstance(spec, MqttProbeSpec):
                devices.setdefault(spec.broker, {})[key] = spec
                continue
            interval = interval_for(defaults, subject).total_seconds()
            if self._probes.get(key) == spec and self._intervals.get(key) == interval:
                self._probes[key] = spec  # the new config's equal object: the old one can go
                continue
            touched.add(key)
            self._probes[key] = spec
            self._intervals[key] = interval
            if isinstance(spec, PushSpec):
                self.pulls.remove(key)
                self._register_push(key, spec)
            else:
                if self._push is not None:
                    self._push.unregister(key)
                self.pulls.add(key, spec, interval)
        for key in [k for k in self._probes if k not in self._subjects]:
            del self._probes[key]
            self._intervals.pop(key, None)
        return devices

    def _counted(self, probe_type: str) -> Sink:
        """The monitor's sink, counting push-style observations (MQTT, push) on the way."""
        if self.metrics is None:
            return self.monitor.observe
        metrics = self.metrics

        def sink(key: SubjectKey, observation: Observation, at: float | None = None, /) -> None:
            metrics.observed(probe_type, observation)
            self.monitor.observe(key, observation, at)

        return sink

    def brokers_connected(self) -> dict[str, bool]:
        return {name: b.monitor.connected for name, b in self._brokers.items()}

    def _register_push(self, key: SubjectKey, spec: PushSpec) -> None:
        if self._push is None:
            self._push = PushRegistry(push_secret(self.settings))
            self._ping = ping_handler(
                self._push, self._counted("push"), monotonic=self.context.monotonic
            )
        self._push.register(
            key,
            spec,
            now_mono=self.context.monotonic(),
            base_dir=self.context.base_dir,
            environ=self.context.environ,
        )

    def _sync_brokers(
        self, settings: Settings, devices: dict[str, dict[SubjectKey, MqttProbeSpec]]
    ) -> set[SubjectKey]:
        touched: set[SubjectKey] = set()
        wanted = {
            b.name: b for b in settings.config.mqtt.brokers if devices.get(b.name) or b.discovery
        }
        for name in list(self._brokers):
            current = self._brokers[name]
            spec = wanted.get(name)
            if (
                spec is not None
                and spec == current.spec
                and devices.get(name, {}) == current.devices
            ):
                continue
            if current.task is not None:
                current.task.cancel()
            del self._brokers[name]
            touched |= set(current.devices)
            if spec is None:
                for key in current.monitor.broker_keys:
                    self._forget_later(key)
        for name, spec in wanted.items():
            if name in self._brokers:
                continue
            broker = _Broker(
                spec,
                devices.get(name, {}),
                BrokerMonitor(
                    spec,
                    devices.get(name, {}),
                    self._counted("mqtt"),
                    self.context,
                    on_discovered=self.monitor.discovered,
                ),
            )
            for key in broker.monitor.broker_keys:
                self.monitor.discovered(key, f"MQTT broker {name}")
            if self._group is not None:
                broker.task = self._group.create_task(
                    self._run_broker(broker.monitor), name=f"tocsin-mqtt-{name}"
                )
            self._brokers[name] = broker
            touched |= set(broker.devices)
        return touched

    async def _run_broker(self, monitor: BrokerMonitor) -> None:
        # The pull probes' schedule goes out first: at start 80,000 MQTT devices' messages kept
        # the 20,000 specs for the probe worker waiting in the daemon's buffer for 2.5 s.
        await self.pulls.handed_over.wait()
        await monitor.run()

    def _forget_later(self, key: SubjectKey) -> None:
        if self._group is not None:
            self._group.create_task(self.monitor.remove(key))

    async def _expire_push(self) -> None:
        while True:
            if self._push is not None:
                sink = self._counted("push")
                for key, observation in self._push.expired(self.context.monotonic()):
                    sink(key, observation)
            await asyncio.sleep(1.0)


def _subjects(settings: Settings) -> dict[SubjectKey, Subject]:
    config = settings.config
    subjects: list[Subject] = [*config.devices, *config.integrations]
    return {s.key: s for s in subjects}


def _spec(subject: Subject) -> PullSpec | MqttProbeSpec | PushSpec:
    return subject.probe if isinstance(subject, DeviceConfig) else subject.check


def _in_worker(settings: Settings) -> bool:
    """Whether the pull probes run in a worker process ([monitor] pull_probes)."""
    where = settings.config.monitor.pull_probes
    if where != "auto":
        return where == "worker"
    subjects: list[Subject] = [*settings.config.devices, *settings.config.integrations]
    pulls = sum(not isinstance(_spec(s), MqttProbeSpec | PushSpec) for s in subjects)
    return pulls >= WORKER_FROM and cpus() > 1


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
