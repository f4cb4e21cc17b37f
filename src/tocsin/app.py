"""The composition root: `run(settings, stop)` wires store, API and (as they arrive) probes,
tracker and webhook delivery, and runs them until `stop` is set. Signals are the CLI's business,
so a test can embed the daemon and stop it with an event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from tocsin.api.app import make_app
from tocsin.config import Settings, split_host_port
from tocsin.db import migrate
from tocsin.db.engine import open_database
from tocsin.delivery.endpoints import delivery_settings, endpoints_from
from tocsin.delivery.worker import DeliveryWorker
from tocsin.monitor.service import MonitorService
from tocsin.tickets.store import TicketStore

log = structlog.get_logger("tocsin")

ReadyCallback = Callable[[list[tuple[str, int]]], None]


async def run(
    settings: Settings, stop: asyncio.Event, *, on_ready: ReadyCallback | None = None
) -> None:
    """Run the daemon until `stop` is set; `on_ready` gets the bound API addresses."""
    db = open_database(settings.store_url)
    store = TicketStore(db)
    runner: web.AppRunner | None = None
    try:
        await migrate.upgrade(db)
        store.start()
        # Webhooks: triggers the store wrote (also before a crash) go out from the outbox.
        webhooks = DeliveryWorker(store, endpoints_from(settings), delivery_settings(settings))
        # The health monitor: probes -> tracker -> tickets; push heartbeats arrive over the API.
        monitor = MonitorService(settings, store)
        runner = web.AppRunner(
            make_app(settings, store, ping=monitor.ping), access_log=None, shutdown_timeout=5
        )
        await runner.setup()
        host, port = split_host_port(settings.config.server.listen)
        await web.TCPSite(runner, host, port).start()
        addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
        log.info(
            "tocsin ready",
            listen=[f"{h}:{p}" for h, p in addresses],
            orgs=[o.slug for o in settings.config.orgs],
        )
        if on_ready is not None:
            on_ready(addresses)
        async with asyncio.TaskGroup() as group:
            group.create_task(stop.wait(), name="tocsin-stop")
            # On stop it finishes its attempts in flight (or gives them back) before the store
            # closes below.
            group.create_task(webhooks.run(stop), name="tocsin-webhooks")
            group.create_task(monitor.run(stop), name="tocsin-health-monitor")
    finally:
        log.info("tocsin stopping")
        if runner is not None:
            await runner.cleanup()
        await store.close()
        await db.dispose()
        log.info("tocsin stopped")
