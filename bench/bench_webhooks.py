"""Benchmark: webhook delivery from the outbox to a local receiver, beside a bare aiohttp loop.

The receiver is a separate process (an aiohttp server answering 204 and counting webhook-ids),
so the client side owns one of the two cores as the daemon would. In one run, on fresh SQLite
files in one temporary folder:

1. bare     - a bare aiohttp client loop POSTing the same signed bodies to the same receiver,
              with the worker's per-endpoint concurrency: the ceiling for one endpoint.
2. burst    - --triggers tickets opened through TicketStore (one ticket.opened trigger each)
              before the worker starts; then DeliveryWorker.run until the receiver has seen every
              webhook-id. Deliveries/s = the outbox drained end to end (fan-out, claim, sign,
              POST, record), every state change committed (WAL, synchronous=FULL), sustained
              over the whole drain (each second's count is printed too).
3. mixed    - the worker running while a producer in the same process opens tickets at --rate
              per second for --seconds (its writes share the one writer thread and the GIL
              with delivery); deliveries in each second and the backlog left at the end.
4. down     - the endpoint refuses connections (nothing listens) while --triggers tickets are
              opened; RSS sampled every 0.25 s: the backlog lives in the database, not in RAM.

Logging: the daemon's own configuration (JSON, level info: one line per delivery) written to
/dev/null, so its cost is counted; --quiet sets level warning instead.

Run: .venv/bin/python bench/bench_webhooks.py [--triggers 10000] [--rate 500] [--seconds 10]
Exit status 1 if the drain is under --target deliveries/s or the mixed run falls more than one
second behind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import func, select

from tocsin import logs
from tocsin.config import Settings, parse
from tocsin.db import migrate, schema
from tocsin.db.engine import open_database
from tocsin.delivery.endpoints import delivery_settings, endpoints_from
from tocsin.delivery.payload import TriggerRow, build_body, signed_headers
from tocsin.delivery.worker import DeliveryWorker
from tocsin.tickets.model import Actor, Kind, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore

SECRET = "whsec_" + base64.b64encode(b"bench secret: 32 bytes, no more.").decode()
ORG = "bench"


# -- the receiver (its own process) --------------------------------------------------------------


def serve_receiver(port: int) -> None:
    seen: set[str] = set()
    total = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal total
        await request.read()
        seen.add(request.headers["webhook-id"])
        total += 1
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"distinct": len(seen), "total": total})

    async def reset(request: web.Request) -> web.Response:
        nonlocal total
        seen.clear()
        total = 0
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class ReceiverProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port)],
            stdin=subprocess.DEVNULL,
        )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                await self.count(session)
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    async def count(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"http://127.0.0.1:{self.port}/count") as answer:
            return int((await answer.json())["distinct"])

    async def reset(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"http://127.0.0.1:{self.port}/reset") as answer:
            await answer.read()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- helpers -------------------------------------------------------------------------------------


def settings_for(db_path: Path, url: str) -> Settings:
    text = f"""
[server]
public_url = "http://tocsin.bench"
[store]
url = "sqlite+aiosqlite:///{db_path}"
[[orgs]]
slug = "{ORG}"
name = "Bench"
[[webhooks]]
name = "bench"
url = "{url}"
secret_env = "BENCH_SECRET"
[webhook_delivery]
poll_interval = "100ms"
ticket_after = "1h"
"""
    return parse(text, env={"BENCH_SECRET": SECRET})


def open_request(i: int) -> OpenRequest:
    return OpenRequest(
        org=ORG,
        source=Source.HEALTH_MONITOR,
        subject=Subject(SubjectType.DEVICE, f"dev-{i}", f"Device {i}"),
        kind=Kind.DEVICE_OFFLINE.value,
        description=f"Device dev-{i} stopped answering SNMP GET for 2m",
        actor=Actor.health_monitor(),
    )


async def open_many(store: TicketStore, first: int, count: int, callers: int = 100) -> None:
    async def caller(offset: int) -> None:
        for i in range(first + offset, first + count, callers):
            await store.open(open_request(i))

    await asyncio.gather(*(caller(c) for c in range(min(callers, count))))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def until(condition: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Poll `condition` (the receiver's count, the database) until it holds."""
    async with asyncio.timeout(seconds):
        for _ in itertools.count():
            if await condition():
                return
            await asyncio.sleep(0.02)


class Daemon:
    """A store and a delivery worker in this process, as `tocsin run` wires them."""

    def __init__(self, settings: Settings) -> None:
        self.db = open_database(settings.store_url)
        self.store = TicketStore(self.db)
        self.worker = DeliveryWorker(
            self.store, endpoints_from(settings), delivery_settings(settings)
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await migrate.upgrade(self.db)
        self.store.start()

    def start_worker(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.store.close()
        await self.db.dispose()

    async def backlog(self) -> int:
        d = schema.deliveries
        async with self.db.read.connect() as conn:
            statement = select(func.count()).select_from(d).where(d.c.status != "delivered")
            return int((await conn.execute(statement)).scalar_one())


# -- 1. bare aiohttp loop ----------------------------------------------------------------------


async def run_bare(url: str, count: int, concurrency: int) -> float:
    now = datetime.now(UTC)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    bodies = [
        build_body(
            TriggerRow(
                "ticket.opened",
                now,
                {
                    "org": ORG,
                    "ticket": {"seq": i, "subject": {"type": "device", "id": "d", "name": "D"}},
                    "event": {"id": i, "type": "opened"},
                },
            ),
            "http://tocsin.bench",
            "standard",
        )
        for i in range(count)
    ]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(range(count))

        async def loop() -> None:
            while queue:
                i = queue.pop()
                body = bodies[i]
                headers = signed_headers([key], f"msg_bare_{i}", datetime.now(UTC), body)
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    assert answer.status == 204

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


# -- 2. burst ------------------------------------------------------------------------------------


async def run_burst(
    folder: Path, receiver: ReceiverProcess, session: aiohttp.ClientSession, triggers: int
) -> tuple[float, float, list[int], float]:
    """(deliveries/s draining a full outbox, seconds to fill it, deliveries in each whole
    second of the drain, CPU microseconds per delivery)."""
    daemon = Daemon(settings_for(folder / "burst.db", receiver.url))
    await daemon.open()
    started = time.perf_counter()
    await open_many(daemon.store, 0, triggers)
    filled = time.perf_counter() - started
    await receiver.reset(session)
    started = time.perf_counter()
    cpu = _cpu()
    daemon.start_worker()

    per_second: list[int] = []
    last, mark = 0, started + 1.0

    async def done() -> bool:
        nonlocal last, mark
        count = await receiver.count(session)
        if time.perf_counter() >= mark:
            per_second.append(count - last)
            last, mark = count, mark + 1.0
        return count >= triggers

    await until(done, seconds=300)
    rate = triggers / (time.perf_counter() - started)
    await until(lambda: _zero(daemon.backlog()), seconds=30)
    cpu_us = (_cpu() - cpu) / triggers * 1e6
    await daemon.close()
    return rate, filled, per_second, cpu_us


def _cpu() -> float:
    """This process's CPU seconds (the worker's loop and its writer thread; the receiver is
    another process): noise on a shared machine moves the rate, much less the CPU it took."""
    times = os.times()
    return times.user + times.system


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


# -- 3. sustained ------------------------------------------------------------------------------


async def run_sustained(
    folder: Path,
    receiver: ReceiverProcess,
    session: aiohttp.ClientSession,
    rate: int,
    seconds: int,
) -> tuple[list[int], int, float, float]:
    """(deliveries in each second, backlog at the end, seconds to drain it afterwards, the
    producer's achieved rate)."""
    daemon = Daemon(settings_for(folder / "sustain.db", receiver.url))
    await daemon.open()
    await receiver.reset(session)
    daemon.start_worker()
    per_second: list[int] = []
    produced = 0
    last = 0
    tick = 0.1
    started = time.perf_counter()
    for step in range(int(seconds / tick)):
        target = int(rate * tick * (step + 1))
        await open_many(daemon.store, produced, target - produced, callers=50)
        produced = target
        await asyncio.sleep(max(0.0, started + tick * (step + 1) - time.perf_counter()))
        if (step + 1) % int(1 / tick) == 0:
            now = await receiver.count(session)
            per_second.append(now - last)
            last = now
    achieved = produced / (time.perf_counter() - started)
    backlog = produced - await receiver.count(session)
    drain_started = time.perf_counter()

    async def done() -> bool:
        return await receiver.count(session) >= produced

    await until(done, seconds=120)
    drained = time.perf_counter() - drain_started
    await daemon.close()
    return per_second, backlog, drained, achieved


# -- 4. endpoint down --------------------------------------------------------------------------


async def run_down(folder: Path, triggers: int) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    daemon = Daemon(settings_for(folder / "down.db", dead))
    await daemon.open()
    daemon.start_worker()
    samples: list[float] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            samples.append(rss_mib())
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(1.0)  # warm: the worker running, its first attempts failed
    before = rss_mib()
    chunk = max(1, triggers // 10)
    for first in range(0, triggers, chunk):
        await open_many(daemon.store, first, min(chunk, triggers - first))
    await asyncio.sleep(2.0)  # fan-out catches up; the endpoint is probed, paused, probed
    after = rss_mib()
    backlog = await daemon.backlog()
    sampling = False
    await sampler
    await daemon.close()
    return {
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_peak_mib": round(max(samples), 1),
        "backlog_in_db": backlog,
        "attempts_made": daemon.worker.stats.failed_attempts,
    }


# -- main --------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    receiver = ReceiverProcess()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    try:
        async with aiohttp.ClientSession() as session:
            await receiver.ready(session)
            with tempfile.TemporaryDirectory(prefix="tocsin-bench-") as tmp:
                folder = Path(tmp)
                per_endpoint = settings_for(folder / "x.db", receiver.url)
                concurrency = per_endpoint.config.webhook_delivery.per_endpoint_concurrency
                results["per_endpoint_concurrency"] = concurrency
                await receiver.reset(session)
                results["bare_aiohttp_posts_per_s"] = round(
                    await run_bare(receiver.url, args.triggers, concurrency)
                )
                await receiver.reset(session)
                results["bare_aiohttp_posts_per_s_100_concurrent"] = round(
                    await run_bare(receiver.url, args.triggers, 100)
                )
                burst, filled, seconds, cpu_us = await run_burst(
                    folder, receiver, session, args.triggers
                )
                results["burst_triggers"] = args.triggers
                results["burst_deliveries_per_s"] = round(burst)
                results["burst_cpu_us_per_delivery"] = round(cpu_us)
                results["burst_each_second"] = seconds
                results["burst_fill_opens_per_s"] = round(args.triggers / filled)
                per_second, backlog, drained, achieved = await run_sustained(
                    folder, receiver, session, args.rate, args.seconds
                )
                results["mixed_offered_per_s"] = args.rate
                results["mixed_produced_per_s"] = round(achieved)
                results["mixed_delivered_per_s"] = per_second
                results["mixed_median_per_s"] = round(statistics.median(per_second))
                results["mixed_backlog_at_end"] = backlog
                results["mixed_drain_s"] = round(drained, 2)
                results["endpoint_down"] = await run_down(folder, args.triggers)
    finally:
        receiver.close()
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    # The drain is the sustained figure; the mixed run must keep up (less than 1 s behind).
    ok = (
        results["burst_deliveries_per_s"] >= args.target
        and results["mixed_backlog_at_end"] <= args.rate
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve_receiver(int(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=500, help="mixed: tickets opened per second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--target", type=int, default=1_000)
    parser.add_argument("--quiet", action="store_true", help="log at warning, not info")
    arguments = parser.parse_args()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the loggers write to it until exit
    with contextlib.redirect_stderr(devnull):
        logs.configure("warning" if arguments.quiet else "info", "json")
    sys.exit(asyncio.run(main(arguments)))
