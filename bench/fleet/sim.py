"""The simulated fleet, each part run as its own process (`bench_fleet.py --role ...`).

- `http_devices`: the demo's `SimulatedSite` (`tocsin demo`'s simulator) with one device per
  HTTP subject, answering GET /devices/http-NNNNN/health with 200, or 503 for the devices
  switched to failing by POST /control/fail {"ids": [n, ...]} (`site.fail`; the answer holds
  the server's wall time of the switch). POST /control/connections {"close": true} makes every
  health answer close its connection (`site.close_connections`), as a real fleet of 2,000 hosts
  probed every 30 s would (no keep-alive connection lives that long); GET /control/stats gives
  `site.requests` totals.
- `heartbeats`: one aiomqtt client publishing `fleet/mqtt-N/hb` for each device once per
  interval at a random phase (QoS 0); POST /control/stop {"ids": [...]} on its control port
  stops those devices and answers with the wall time each last heartbeat was sent.
- `flood`: a raw-socket MQTT 3.1.1 publisher, pre-encoded packets written in bulk, so that
  publishing costs far less than subscribing: marker `online`, N heartbeats round-robin
  over the topics, marker `offline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import random
import socket
import sys
import time

from aiohttp import web


def hb_topic(prefix: str, n: int) -> str:
    return f"{prefix}/mqtt-{n:05d}/hb"


def http_id(n: int) -> str:
    """HTTP device n: its subject id in the daemon's config and its id on the simulated site."""
    return f"http-{n:05d}"


# -- HTTP devices ----------------------------------------------------------------------------
# tocsin.demo is imported where it is used: importing it takes ~1.5 s, and every role process
# (the flood publisher among them) imports this module.


def http_device_url(base: str, n: int) -> str:
    from tocsin.demo.site import DEVICE_PATH

    return base + DEVICE_PATH.format(id=http_id(n))


async def http_devices(port: int, count: int) -> None:
    from tocsin.demo.site import SimDevice, SimulatedSite

    async def fail(request: web.Request) -> web.Response:
        ids = [http_id(int(n)) for n in (await request.json())["ids"]]
        site.fail(ids)  # mode "error": 503
        failing = sum(mode != "ok" for mode in site.modes.values())
        return web.json_response({"at": time.time(), "failing": failing})

    async def connections(request: web.Request) -> web.Response:
        site.close_connections = bool((await request.json())["close"])
        return web.json_response({"close": site.close_connections})

    async def stats(request: web.Request) -> web.Response:
        failing = sum(mode != "ok" for mode in site.modes.values())
        return web.json_response({"answers": site.requests.total(), "failing": failing})

    site = SimulatedSite(
        [SimDevice(http_id(n), f"HTTP device {n}") for n in range(count)],
        port=port,
        extra_routes=[
            web.post("/control/fail", fail),
            web.post("/control/connections", connections),
            web.get("/control/stats", stats),
        ],
    )
    async with site:
        await asyncio.Event().wait()


# -- MQTT heartbeats -------------------------------------------------------------------------


async def heartbeats(
    broker_port: int, control_port: int, devices: int, interval: float, prefix: str, seed: int
) -> None:
    import aiomqtt

    rng = random.Random(seed)
    start = time.monotonic()
    due = [(start + rng.uniform(0, interval), n) for n in range(devices)]
    heapq.heapify(due)
    stopped: set[int] = set()
    last_sent: dict[int, float] = {}
    stats = {"sent": 0, "max_late_s": 0.0}

    async def stop(request: web.Request) -> web.Response:
        ids = [int(i) for i in (await request.json())["ids"]]
        stopped.update(ids)
        # last_sent is set before each publish is awaited: what it holds now is final.
        return web.json_response(
            {"at": time.time(), "last_sent": {str(i): last_sent.get(i) for i in ids}}
        )

    async def report(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/control/stop", stop)
    app.router.add_get("/control/stats", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()

    async with aiomqtt.Client("127.0.0.1", broker_port, identifier="bench-heartbeats") as client:
        print("READY", flush=True)
        while True:
            at, n = due[0]
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            heapq.heapreplace(due, (at + interval, n))
            if n in stopped:
                continue
            stats["max_late_s"] = max(stats["max_late_s"], -delay)
            last_sent[n] = time.time()
            await client.publish(hb_topic(prefix, n), b"1", qos=0)
            stats["sent"] += 1


# -- the raw flood publisher -----------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + payload
    return b"\x30" + _varint(len(body)) + body  # PUBLISH, QoS 0, no retain


def connect_packet(client_id: str) -> bytes:
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # MQTT 3.1.1, clean session, keepalive 60 s
    body = variable + len(ident).to_bytes(2, "big") + ident
    return b"\x10" + _varint(len(body)) + body


def flood(broker_port: int, topics: int, count: int, prefix: str, marker: str) -> None:
    packets = [publish_packet(hb_topic(prefix, n), b"1") for n in range(topics)]
    payload = b"".join(packets[i % topics] for i in range(count))
    with socket.create_connection(("127.0.0.1", broker_port)) as sock:
        sock.sendall(connect_packet(f"bench-flood-{time.monotonic_ns()}"))
        connack = sock.recv(4)
        if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
            raise SystemExit(f"CONNACK refused: {connack!r}")
        started = time.perf_counter()
        sock.sendall(publish_packet(marker, b"online"))
        view = memoryview(payload)
        for offset in range(0, len(payload), 1 << 20):
            sock.sendall(view[offset : offset + (1 << 20)])
        sock.sendall(publish_packet(marker, b"offline"))
        sent = time.perf_counter() - started
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
    print(json.dumps({"count": count, "send_s": sent, "send_rate": count / max(sent, 1e-9)}))


if __name__ == "__main__":
    sys.exit("run through bench/bench_fleet.py --role")
