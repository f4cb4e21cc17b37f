"""Capacity loops: each probe type as fast as it goes, beside a bare library loop doing the same
requests with the same concurrency, alternately, in one process (`bench_fleet.py --role cap-*`).

Every loop prints one JSON line: per repetition the mode (bare / probe), the operations per
second over the timed part, errors, this process's CPU share and the peers' CPU shares (to show
whether the peer, not the client, was the limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fleet.peers import BENCH_SCRIPT, SNMP_COMMUNITY, SYS_UPTIME, _die_with_parent
from fleet.procstat import CpuMeter, MachineMeter
from fleet.sim import hb_topic, http_device_url


async def timed_workers(
    concurrency: int, warmup: float, duration: float, call: Callable[[int], Awaitable[bool]]
) -> dict[str, float]:
    """`concurrency` workers call `call(k)` (k = 0, 1, 2, ... spread over the workers) in a loop;
    what completes inside [warmup, warmup + duration] is counted."""
    loop_start = time.perf_counter()
    begin, end = loop_start + warmup, loop_start + warmup + duration
    done = {"ok": 0, "err": 0}

    async def worker(k: int) -> None:
        while True:
            ok = await call(k)
            now = time.perf_counter()
            if now >= end:
                return
            if now >= begin:
                done["ok" if ok else "err"] += 1
            k += concurrency

    await asyncio.sleep(0)
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"rate": done["ok"] / duration, "errors": done["err"]}


def peer_meters(pids: list[int]) -> list[CpuMeter]:
    return [CpuMeter(pid) for pid in pids]


async def measured(
    mode: str, args: dict[str, Any], call: Callable[[int], Awaitable[bool]]
) -> dict[str, Any]:
    """One repetition of `call` by args["concurrency"] workers; CPU shares are taken over the
    timed part only (after warm-up)."""
    pids, warmup = args["pids"], args["warmup"]
    me = CpuMeter(os.getpid())
    peers = peer_meters(pids)
    machine = MachineMeter()

    async def start_meters() -> None:
        await asyncio.sleep(warmup)
        now = time.perf_counter()
        machine.start()
        me.start(now)
        for meter in peers:
            meter.start(now)

    starter = asyncio.create_task(start_meters())
    result = await timed_workers(args["concurrency"], warmup, args["duration"], call)
    await starter
    now = time.perf_counter()
    return {
        "mode": mode,
        **result,
        "cpu": me.share(now),
        "peers_cpu": sum(m.share(now) for m in peers),
        "machine_cpu": machine.share(),
    }


# -- HTTP ------------------------------------------------------------------------------------


async def http_capacity(args: dict[str, Any]) -> list[dict[str, Any]]:
    import aiohttp

    from tocsin.probes.base import ProbeContext
    from tocsin.probes.http import HTTP_RESOURCE, HttpProbe, HttpSpec, make_http_session

    base, devices, conc = args["base"], args["devices"], args["concurrency"]
    urls = [http_device_url(base, n) for n in range(devices)]
    results = []
    for _rep in range(args["reps"]):
        async with aiohttp.ClientSession() as session:  # the library's defaults: limit 100

            async def bare(k: int, session: aiohttp.ClientSession = session) -> bool:
                async with session.get(urls[k % devices]) as response:
                    await response.read()
                    return response.status == 200

            results.append(await measured("bare", args, bare))
        context = ProbeContext()
        context.resources[HTTP_RESOURCE] = make_http_session(limit=conc, limit_per_host=conc)
        probes = [
            HttpProbe(HttpSpec.model_validate({"type": "http", "url": url}), context)
            for url in urls
        ]

        async def probe(k: int, probes: list[HttpProbe] = probes) -> bool:
            return (await probes[k % devices].check()).healthy

        try:
            results.append(await measured("probe", args, probe))
        finally:
            await context.resources[HTTP_RESOURCE].close()
    return results


# -- SNMP ------------------------------------------------------------------------------------


async def snmp_capacity(args: dict[str, Any]) -> list[dict[str, Any]]:
    from pysnmp.hlapi.v3arch.asyncio import (  # type: ignore[import-untyped]
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        get_cmd,
    )

    from tocsin.probes.base import ProbeContext
    from tocsin.probes.snmp import SnmpProbe, SnmpSpec, close_snmp_engine

    ports, devices = args["ports"], args["devices"]
    community = CommunityData(SNMP_COMMUNITY, mpModel=1)
    results = []
    for _rep in range(args["reps"]):
        engine = SnmpEngine()
        targets = [
            await UdpTransportTarget.create(("127.0.0.1", port), timeout=1, retries=1)
            for port in ports
        ]

        async def bare(k: int, engine: Any = engine, targets: list[Any] = targets) -> bool:
            error, status, _index, binds = await get_cmd(
                engine,
                community,
                targets[k % len(targets)],
                ContextData(),
                ObjectType(ObjectIdentity(SYS_UPTIME)),
                lookupMib=False,
            )
            return error is None and not status and len(binds) == 1

        try:
            results.append(await measured("bare", args, bare))
        finally:
            engine.close_dispatcher()
        context = ProbeContext()
        probes = [
            SnmpProbe(
                SnmpSpec.model_validate(
                    {
                        "type": "snmp",
                        "host": "127.0.0.1",
                        "port": ports[n % len(ports)],
                        "community": SNMP_COMMUNITY,
                    }
                ),
                context,
            )
            for n in range(devices)
        ]

        async def probe(k: int, probes: list[SnmpProbe] = probes) -> bool:
            return (await probes[k % devices].check()).healthy

        try:
            results.append(await measured("probe", args, probe))
        finally:
            await close_snmp_engine(context)
        # Informational: the bare loop creating a UdpTransportTarget per GET, as the probe
        # does (an executor getaddrinfo each time), to attribute part of the gap.
        engine = SnmpEngine()

        async def bare_create(k: int, engine: Any = engine) -> bool:
            target = await UdpTransportTarget.create(
                ("127.0.0.1", ports[k % len(ports)]), timeout=1, retries=1
            )
            error, status, _index, binds = await get_cmd(
                engine,
                community,
                target,
                ContextData(),
                ObjectType(ObjectIdentity(SYS_UPTIME)),
                lookupMib=False,
            )
            return error is None and not status and len(binds) == 1

        try:
            results.append(await measured("bare+create", args, bare_create))
        finally:
            engine.close_dispatcher()
    return results


# -- MQTT ------------------------------------------------------------------------------------

MARKER = "cap/marker/status"
PREFIX = "cap"


class Rounds:
    """What the subscriber saw of one flood: marker online -> marker offline."""

    def __init__(self) -> None:
        self.started = 0.0
        self.count = 0
        self.done = asyncio.Event()
        self.elapsed = 0.0

    def online(self) -> None:
        self.started = time.perf_counter()
        self.count = 0

    def offline(self) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.done.set()


async def run_flood(port: int, topics: int, count: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH_SCRIPT),
        "--role",
        "flood",
        *(str(port), str(topics), str(count), PREFIX, MARKER),
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    out, _ = await process.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def mqtt_round(args: dict[str, Any], rounds: Rounds, count: int, mode: str) -> dict[str, Any]:
    rounds.done.clear()
    peers = peer_meters(args["pids"])
    me = CpuMeter(os.getpid())
    machine = MachineMeter()
    now = time.perf_counter()
    machine.start()
    me.start(now)
    for meter in peers:
        meter.start(now)
    flood = await run_flood(args["port"], args["topics"], count)
    try:
        await asyncio.wait_for(rounds.done.wait(), timeout=60 + count / 1000)
    except TimeoutError:
        return {"mode": mode, "rate": 0.0, "errors": count, "note": "marker never arrived"}
    now = time.perf_counter()
    return {
        "mode": mode,
        "rate": count / rounds.elapsed,
        "received": rounds.count,
        "errors": 0,
        "drain_s": rounds.elapsed,
        "flood_written_s": flood["send_s"],
        "cpu": me.share(now),
        "peers_cpu": sum(m.share(now) for m in peers),
        "machine_cpu": machine.share(),
    }


async def mqtt_bare(args: dict[str, Any], reps: int) -> list[dict[str, Any]]:
    import aiomqtt

    topics = [hb_topic(PREFIX, n) for n in range(args["topics"])] + [MARKER]
    rounds = Rounds()
    results = []
    async with aiomqtt.Client("127.0.0.1", args["port"], identifier="bench-bare-sub") as client:
        for start in range(0, len(topics), 200):
            await client.subscribe([(t, 0) for t in topics[start : start + 200]])

        async def consume() -> None:
            async for message in client.messages:
                if message.topic.value == MARKER:
                    if message.payload == b"online":
                        rounds.online()
                    else:
                        rounds.offline()
                else:
                    rounds.count += 1

        consumer = asyncio.create_task(consume())
        try:
            await mqtt_round(args, rounds, args["topics"], "bare")  # warm-up: each topic once
            for _ in range(reps):
                results.append(await mqtt_round(args, rounds, args["count"], "bare"))
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
    return results


async def mqtt_probe(args: dict[str, Any], reps: int) -> list[dict[str, Any]]:
    from tocsin.probes.base import ProbeContext
    from tocsin.probes.mqtt import BrokerMonitor, BrokerSpec, MqttProbeSpec
    from tocsin.probes.observation import Observation, SubjectKey

    broker = BrokerSpec.model_validate({"name": "cap", "host": "127.0.0.1", "port": args["port"]})
    subjects = {
        SubjectKey("cap", "device", f"mqtt-{n:05d}"): MqttProbeSpec.model_validate(
            {
                "type": "mqtt",
                "broker": "cap",
                "heartbeat_topic": hb_topic(PREFIX, n),
                "heartbeat_timeout": "1h",
            }
        )
        for n in range(args["topics"])
    }
    marker_key = SubjectKey("cap", "device", "marker")
    subjects[marker_key] = MqttProbeSpec.model_validate(
        {"type": "mqtt", "broker": "cap", "status_topic": MARKER}
    )
    rounds = Rounds()
    subscribed = asyncio.Event()
    observations = {"n": 0}

    def sink(key: SubjectKey, observation: Observation) -> None:
        if key == marker_key:
            if observation.healthy:
                rounds.online()
            else:
                rounds.offline()
        elif key.type == "integration":
            if observation.healthy:
                subscribed.set()
        else:
            observations["n"] += 1

    monitor = BrokerMonitor(broker, subjects, sink, ProbeContext())
    task = asyncio.create_task(monitor.run())
    results = []
    try:
        await asyncio.wait_for(subscribed.wait(), 60)
        await mqtt_round(args, rounds, args["topics"], "probe")  # warm-up: every device's edge
        for _ in range(reps):
            result = await mqtt_round(args, rounds, args["count"], "probe")
            result["received"] = args["count"]  # ordered delivery: the marker comes last
            result["edges"] = observations["n"]
            results.append(result)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return results


async def mqtt_capacity(args: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for _rep in range(args["reps"]):
        results += await mqtt_bare(args, 1)
        results += await mqtt_probe(args, 1)
    return results


# -- the PullScheduler -----------------------------------------------------------------------


async def scheduler_capacity(args: dict[str, Any]) -> list[dict[str, Any]]:
    from tocsin.monitor.scheduler import PullScheduler
    from tocsin.probes.observation import Health, Observation, SubjectKey

    subjects, interval = args["subjects"], args["interval"]
    duration, seed = args["duration"], 1234
    healthy = Observation(Health.HEALTHY, "ok")
    calls: list[list[float]] = [[] for _ in range(subjects)]
    sunk = {"n": 0}

    class Trivial:
        def __init__(self, n: int) -> None:
            self.n = n

        async def check(self) -> Observation:
            calls[self.n].append(time.monotonic())
            return healthy

    def sink(key: SubjectKey, observation: Observation, started: float) -> None:
        sunk["n"] += 1

    scheduler = PullScheduler(sink, max_concurrency=256, per_host=256, rng=random.Random(seed))
    expected_rng = random.Random(seed)
    first: list[float] = []
    for n in range(subjects):
        added = time.monotonic()
        scheduler.add(
            SubjectKey("cap", "device", f"s{n}"), Trivial(n), timeout=5, interval=interval
        )
        first.append(added + expected_rng.uniform(0, interval))
    me = CpuMeter(os.getpid())
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(interval)  # every subject has started once
    measure_from = time.monotonic()
    me.start(time.perf_counter())
    await asyncio.sleep(duration)
    measure_to = time.monotonic()
    cpu = me.share(time.perf_counter())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    lateness: list[float] = []
    runs = 0
    for n in range(subjects):
        for at in calls[n]:
            if measure_from <= at < measure_to:
                runs += 1
                k = round((at - first[n]) / interval)
                lateness.append(at - (first[n] + k * interval))
    lateness.sort()
    expected = subjects * duration / interval

    def pct(q: float) -> float:
        return lateness[min(len(lateness) - 1, int(q * len(lateness)))] * 1000 if lateness else 0

    return [
        {
            "mode": "scheduler",
            "subjects": subjects,
            "interval": interval,
            "rate": runs / duration,
            "expected_rate": expected / duration,
            "late_p50_ms": pct(0.50),
            "late_p99_ms": pct(0.99),
            "late_max_ms": lateness[-1] * 1000 if lateness else 0,
            "cpu": cpu,
            "errors": 0,
        }
    ]


ROLES: dict[str, Callable[[dict[str, Any]], Awaitable[list[dict[str, Any]]]]] = {
    "cap-http": http_capacity,
    "cap-snmp": snmp_capacity,
    "cap-mqtt": mqtt_capacity,
    "cap-scheduler": scheduler_capacity,
}


def run_role(role: str, spec: str) -> None:
    args = json.loads(spec)
    results = asyncio.run(ROLES[role](args))
    print(json.dumps(results), flush=True)
