"""The composition root: a `Daemon` wires store, API, health monitor and webhook delivery and
runs them under one TaskGroup until `stop` is set. Signals are the CLI's business, so a test
embeds the daemon with `run(settings, stop)` and reloads it through the `reloads` queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web

from tocsin import sdnotify
from tocsin.api.app import make_app
from tocsin.api.context import API_CONTEXT
from tocsin.config import Settings, split_host_port
from tocsin.db import migrate, retention
from tocsin.db.engine import open_database
from tocsin.db.probing_lock import ProbingLock
from tocsin.delivery import ops
from tocsin.delivery.endpoints import delivery_settings, endpoints_from
from tocsin.delivery.process import DeliveryProcess
from tocsin.delivery.worker import DeliveryWorker
from tocsin.metrics import Metrics
from tocsin.monitor import states
from tocsin.monitor.lag import LoopWatch
from tocsin.monitor.service import MonitorService
from tocsin.monitor.worker import WorkerProcess, cpus
from tocsin.tickets.store import TicketStore
from tocsin.tracker import SubjectHealth
from tocsin.waits import first
from tocsin.web.app import add_pages
from tocsin.web.context import WEB_CONTEXT

log = structlog.get_logger("tocsin")


class ProbingLockLost(RuntimeError):
    """Another daemon may probe now: this one stops (see Daemon._probe)."""


ReadyCallback = Callable[[list[tuple[str, int]]], None]
STATUS_EVERY = 10.0  # seconds between STATUS= summaries to systemd
FILE_CHECK_EVERY = 5.0  # seconds between checks that the SQLite file is still there


class Daemon:
    def __init__(self, settings: Settings, *, spare: WorkerProcess | None = None) -> None:
        """`spare`: a probe worker the CLI started before parsing (see `worker.spare`)."""
        self.settings = settings
        self._spare = spare
        self.db = open_database(settings.store_url)
        self.store = TicketStore(self.db)
        self.metrics = Metrics()
        self.loop_watch = LoopWatch(on_lag=self.metrics.loop_lag.observe)
        self.monitor = MonitorService(
            settings, self.store, metrics=self.metrics, loop_watch=self.loop_watch, spare=spare
        )
        self.store.health.on_change = self._store_health_changed
        self.app = make_app(
            settings,
            self.store,
            ping=self._ping,
            subjects=self._subject_rows,
            maintenance=self.monitor.monitor.maintenance.windows,
            maintenance_changed=self.monitor.monitor.reload_maintenance,
            metrics=self.render_metrics,
            readiness=self.readiness,
        )
        # The web pages, beside the API: they read through its context (the store, the
        # monitor's views) and hear of the monitor's health changes for live pages.
        add_pages(self.app, self.settings, subjects_changed=self.monitor.monitor.changed_at)
        self._webhooks: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        self._webhooks_pending = 0
        # On PostgreSQL several daemons may share the store with the same config (a hot
        # standby): the one holding the probing lock probes (see db/probing_lock.py).
        self.probing_lock = ProbingLock(settings.store_url) if self.db.sqlite_path is None else None
        self.standing_by = asyncio.Event()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_ready: ReadyCallback | None = None,
        reloads: asyncio.Queue[Settings] | None = None,
    ) -> None:
        runner: web.AppRunner | None = None
        try:
            await migrate.upgrade(self.db)
            self.store.start()
            runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
            await runner.setup()
            host, port = split_host_port(self.settings.config.server.listen)
            await web.TCPSite(runner, host, port).start()
            addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
            async with asyncio.TaskGroup() as group:
                self._start_webhooks(group)
                group.create_task(self._probe(stop), name="tocsin-health-monitor")
                group.create_task(
                    sdnotify.watchdog(
                        sdnotify.watchdog_interval(), self.status, every=STATUS_EVERY, stop=stop
                    ),
                    name="tocsin-watchdog",
                )
                counter = group.create_task(self._count_pending_webhooks(), name="status")
                lag = group.create_task(self.loop_watch.run(), name="loop-lag")
                pruner = group.create_task(self._prune_periodically(), name="retention")
                files = group.create_task(self._check_store_file(), name="store-file")
                if reloads is not None:
                    reloader = group.create_task(self._reloads(reloads, group), name="reload")
                # Ready means watching: the API is up and every probe has started (or, on
                # a standby, the API is up and another daemon probes).
                await first(self.monitor.watching.wait(), self.standing_by.wait(), stop.wait())
                # What exists now (the config, a million objects at 100,000 subjects) lives as
                # long as the process: keep the cyclic garbage collector from walking it again,
                # and turn it on if the CLI kept it off through the start.
                gc.freeze()
                gc.enable()
                log.info(
                    "tocsin ready",
                    listen=[f"{h}:{p}" for h, p in addresses],
                    orgs=[o.slug for o in self.settings.config.orgs],
                )
                sdnotify.notify("READY=1", f"STATUS={self.status()}")
                if on_ready is not None:
                    on_ready(addresses)
                await stop.wait()
                sdnotify.notify("STOPPING=1")
                counter.cancel()
                lag.cancel()
                pruner.cancel()
                files.cancel()
                if reloads is not None:
                    reloader.cancel()
                await self._stop_webhooks()
        finally:
            log.info("tocsin stopping")
            if runner is not None:
                await runner.cleanup()
            await self.store.close()
            await self.db.dispose()
            if self._spare is not None:
                self._spare.close()  # a no-op once the monitor took and ended it
            log.info("tocsin stopped")

    def _subject_rows(self, org: str) -> list[states.StateRow] | None:
        """The monitor's live rows; None on a standby, whose API then reads the saved state
        the probing daemon keeps writing."""
        return None if self.standing_by.is_set() else self.monitor.monitor.rows(org)

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        """Push heartbeats: the monitor's, or on a standby a 503 that says where they belong
        (a sender or a load balancer tries the other daemon)."""
        if self.standing_by.is_set():
            return web.Response(
                status=503,
                text="standby: another tocsin instance probes; send heartbeats to it\n",
                headers={"Retry-After": "5"},
            )
        return await self.monitor.handle_ping(request)

    async def _probe(self, stop: asyncio.Event) -> None:
        """Run the health monitor; on PostgreSQL, only while this daemon holds the probing
        lock. Losing the lock stops the daemon (ProbingLockLost): two daemons must never probe
        the same subjects, and a restart comes back as the standby."""
        lock = self.probing_lock
        if lock is None:
            await self.monitor.run(stop)
            return

        def waiting() -> None:
            self.standing_by.set()
            sdnotify.notify(f"STATUS={self.status()}")
            log.info("standby: another instance probes; taking over when it stops")

        try:
            if not await lock.acquire(stop, on_wait=waiting):
                return  # stopped while standing by
            if self.standing_by.is_set():
                log.warning("taking over probing: the other instance stopped holding the lock")
            self.standing_by.clear()
            monitor = asyncio.create_task(self.monitor.run(stop), name="tocsin-monitor-run")
            held = asyncio.create_task(lock.hold(), name="tocsin-probing-lock")
            try:
                await asyncio.wait({monitor, held}, return_when=asyncio.FIRST_COMPLETED)
                lost = not monitor.done()
            finally:  # the lock lost, or this task cancelled (the daemon's group failing)
                held.cancel()
                if not monitor.done():
                    monitor.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await monitor
            if lost:
                log.error(
                    "probing lock lost (its database connection failed): stopping, so that"
                    " only one instance probes; a restart comes back as the standby"
                )
                raise ProbingLockLost("the probing lock was lost")
            await monitor
        finally:
            await lock.close()

    async def render_metrics(self) -> bytes:
        def health() -> list[tuple[str, bool]]:
            subjects = self.monitor.monitor.subjects().values()
            return [(s.state.health.value, s.state.flapping) for s in subjects]

        failures = {fault.value: n for fault, n in self.store.health.failures.items()}
        return await self.metrics.render(self.db.read, health, failures)

    def readiness(self) -> dict[str, str]:
        """Besides the store (the API checks it): the monitor watching, every MQTT broker
        connected. Each check is "ok" or what is wrong."""
        if self.standing_by.is_set():  # another daemon probes: its brokers, not ours
            return {"monitor": "ok"}
        checks = {"monitor": "ok" if self.monitor.watching.is_set() else "starting"}
        for name, up in self.monitor.brokers_connected().items():
            checks[f"mqtt:{name}"] = "ok" if up else "disconnected"
        return checks

    def _store_health_changed(self) -> None:
        sdnotify.notify(f"STATUS={self.status()}")

    async def _check_store_file(self) -> None:
        while True:
            await asyncio.sleep(FILE_CHECK_EVERY)
            self.store.health.check_file()

    async def prune(self) -> retention.Pruned:
        """Apply [retention] once: batch after batch until nothing old is left."""
        config = self.settings.config.retention
        now = datetime.now(UTC)
        total = retention.Pruned()
        for kept, prune in (
            (config.resolved_tickets, retention.prune_tickets),
            (config.delivered_webhooks, retention.prune_deliveries),
        ):
            if kept is None:
                continue
            cutoff = now - kept
            while True:
                pruned = await self.store.writer.run(functools.partial(prune, before=cutoff))
                total += pruned
                if not (pruned.tickets or pruned.deliveries):
                    break
        if total.tickets or total.deliveries:
            log.info("retention pruned", tickets=total.tickets, deliveries=total.deliveries)
        return total

    async def _prune_periodically(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # pruning is housekeeping: never worth stopping the daemon
                log.exception("retention pruning failed; will try again")
            await asyncio.sleep(self.settings.config.retention.every.total_seconds())

    def status(self) -> str:
        """One line for systemd's STATUS=: subjects, how many down, webhooks in flight."""
        subjects = self.monitor.monitor.subjects().values()
        down = sum(1 for s in subjects if s.state.health is SubjectHealth.DOWN)
        line = sdnotify.status_line(len(subjects), down, self._webhooks_pending)
        if self.standing_by.is_set():
            line = f"standby (another instance probes); {line}"
        cause = self.store.health.cause
        return line if cause is None else f"store unavailable: {cause}; {line}"

    async def _count_pending_webhooks(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a summary is not worth a crash
                self._webhooks_pending = await ops.pending_count(self.db.read)
            await asyncio.sleep(STATUS_EVERY)

    async def reload(self, settings: Settings, group: asyncio.TaskGroup) -> None:
        """Apply a new, already validated config without a restart."""
        old = self.settings
        settings = _keep_what_needs_a_restart(old, settings)
        self.settings = settings
        self.app[API_CONTEXT].reload(settings)
        self.app[WEB_CONTEXT].reload(settings)
        changes = await self.monitor.apply(settings)
        webhooks_changed = (
            endpoints_from(old) != endpoints_from(settings)
            or delivery_settings(old) != delivery_settings(settings)
            or delivery_in_worker(old) != delivery_in_worker(settings)
        )
        if webhooks_changed:
            await self._stop_webhooks()
            self._start_webhooks(group)
        log.info("config reloaded", webhooks_restarted=webhooks_changed, **changes)

    async def _reloads(self, queue: asyncio.Queue[Settings], group: asyncio.TaskGroup) -> None:
        while True:
            settings = await queue.get()
            try:
                await self.reload(settings, group)
            except Exception:  # a reload must never take the running daemon down
                log.exception("config reload failed; the daemon keeps running")

    def _start_webhooks(self, group: asyncio.TaskGroup) -> None:
        settings = self.settings
        endpoints, delivery = endpoints_from(settings), delivery_settings(settings)
        delivery_runner: DeliveryWorker | DeliveryProcess
        if delivery_in_worker(settings):
            delivery_runner = DeliveryProcess(
                settings.store_url,
                endpoints,
                delivery,
                log_level=settings.config.log.level,
                log_format=settings.config.log.format,
                nudged_by=self.store,
            )
        else:
            delivery_runner = DeliveryWorker(self.store, endpoints, delivery)
        stop = asyncio.Event()
        task = group.create_task(delivery_runner.run(stop), name="tocsin-webhooks")
        self._webhooks = (stop, task)

    async def _stop_webhooks(self) -> None:
        """Attempts in flight finish or are given back (they are leased, never lost)."""
        if self._webhooks is not None:
            stop, task = self._webhooks
            self._webhooks = None
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# Subjects from which [webhook_delivery] process = "auto" means a process of its own. Measured
# (bench_storm): a 20,000-ticket storm saturated the daemon's core inline (100 %) and left it
# 59 % with the child, webhooks 18 % sooner; at 5,000 the child's gain (last webhook 9.6 -> 8.3
# s) is not worth its ~100 MB on a small box.
DELIVERY_WORKER_FROM = 20_000


def delivery_in_worker(settings: Settings) -> bool:
    """Whether webhook delivery runs in a process of its own ([webhook_delivery] process)."""
    where = settings.config.webhook_delivery.process
    if where != "auto":
        return where == "worker"
    config = settings.config
    subjects = len(config.devices) + len(config.integrations)
    return bool(config.webhooks) and subjects >= DELIVERY_WORKER_FROM and cpus() > 1


def _keep_what_needs_a_restart(old: Settings, new: Settings) -> Settings:
    """The new settings, but with the store URL and listen address the process runs on: those
    change only with a restart (a warning says so), so later reloads compare against reality."""
    kept = new
    if new.store_url != old.store_url:
        log.warning("config reload: store.url needs a restart; keeping the running one")
        kept = dataclasses.replace(kept, store_url=old.store_url)
    listen = old.config.server.listen
    if new.config.server.listen != listen:
        log.warning("config reload: server.listen needs a restart; keeping the running one")
        server = kept.config.server.model_copy(update={"listen": listen})
        kept = dataclasses.replace(kept, config=kept.config.model_copy(update={"server": server}))
    return kept


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: ReadyCallback | None = None,
    reloads: asyncio.Queue[Settings] | None = None,
    spare: WorkerProcess | None = None,
) -> None:
    """Run the daemon until `stop` is set; `on_ready` gets the bound API addresses; settings
    put on `reloads` are applied in place."""
    await Daemon(settings, spare=spare).run(stop, on_ready=on_ready, reloads=reloads)
