"""A webhook receiver for the storm and soak benchmarks, run as a process of its own.

POST /hook records every delivery (arrival wall time, webhook-id, the body's type, ticket seq,
subject id, timeline event id, body size) and answers 204; it does not check signatures (the
delivery benchmark and the tests do). Control routes, for the benchmark only:

- GET /control/arrivals?since=N: the deliveries answered 2xx, from the N-th on, and `next`;
- POST /control/hang {"seconds": S}: for S seconds every delivery is accepted and read but never
  answered (the connection is closed when the hang ends), as a receiver stuck behind a dead
  backend; answers with the wall time the hang ends;
- POST /bare: a baseline target (counted, not recorded) for a bare client loop;
- GET /control/stats: counts.

Arrival times are taken when the handler starts, before the body is read: a receiver in its own
process, so the benchmark's work does not delay them.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web


async def receiver(port: int) -> None:
    arrivals: list[dict[str, Any]] = []
    stats = {"answered": 0, "hung": 0, "bare": 0, "bad_body": 0}
    hang_until = 0.0

    async def hook(request: web.Request) -> web.StreamResponse:
        at = time.time()
        body = await request.read()
        if at < hang_until or time.time() < hang_until:
            stats["hung"] += 1
            await asyncio.sleep(max(0.0, hang_until - time.time()))
            # Never answered: the client has long given up; drop the connection.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        try:
            event = json.loads(body)
            data = event.get("data", {})
            ticket = data.get("ticket", {})
            arrivals.append(
                {
                    "at": at,
                    "id": request.headers.get("webhook-id", ""),
                    "type": event.get("type"),
                    "org": data.get("org"),
                    "seq": ticket.get("seq"),
                    "subject": ticket.get("subject", {}).get("id"),
                    "event": data.get("event", {}).get("id"),
                    "bytes": len(body),
                }
            )
        except (ValueError, AttributeError):
            stats["bad_body"] += 1
        stats["answered"] += 1
        return web.Response(status=204)

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        stats["bare"] += 1
        return web.Response(status=204)

    async def list_arrivals(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"arrivals": arrivals[since:], "next": len(arrivals)})

    async def hang(request: web.Request) -> web.Response:
        nonlocal hang_until
        seconds = float((await request.json())["seconds"])
        hang_until = time.time() + seconds
        return web.json_response({"at": time.time(), "until": hang_until})

    async def report(request: web.Request) -> web.Response:
        return web.json_response({**stats, "hanging": time.time() < hang_until})

    app = web.Application(client_max_size=4 * 2**20)
    app.router.add_post("/hook", hook)
    app.router.add_post("/bare", bare)
    app.router.add_get("/control/arrivals", list_arrivals)
    app.router.add_post("/control/hang", hang)
    app.router.add_get("/control/stats", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def bare_posts(url: str, count: int, concurrency: int, body: bytes) -> float:
    """Seconds a bare aiohttp client takes to POST `count` bodies with `concurrency` workers:
    what this receiver and machine allow, the baseline for webhook delivery."""
    import aiohttp

    left = count

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(
                url, data=body, headers={"content-type": "application/json"}
            ) as response:
                await response.read()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit("run through bench/bench_storm.py or bench/bench_soak.py --role receiver")
