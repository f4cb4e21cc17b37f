"""A hot standby: two `tocsin run` processes with the same config on one PostgreSQL store. One
probes; the other serves the API and, when the first is killed (SIGKILL), takes over probing
within 30 s from the state in the database: the outage the first one ticketed keeps its one
ticket and is resolved by the second, and an outage that begins after the takeover is
ticketed."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp

from tests.e2e.daemon import TOKEN, Daemon, eventually, free_port
from tests.e2e.test_lifecycle import Devices, devices
from tests.e2e.test_lifecycle import config as lifecycle_config
from tests.pg import PostgresServer
from tocsin.db.probing_lock import lock_key

__all__ = ["devices"]  # the fixture, shared with the lifecycle test


def config(port: int, store_url: str, base: str) -> str:
    """Two HTTP devices, pump and fan, on the store at `store_url`."""
    text = lifecycle_config(port, base, ["pump", "fan"])
    return text.replace("sqlite+aiosqlite:///state/tocsin.db", store_url)


def pair(tmp_path: Path, store_url: str, base: str) -> tuple[Daemon, Daemon]:
    """Two daemons with the same config (but for the port) on one store."""
    daemons = []
    for name in ("a", "b"):
        port = free_port()
        path = tmp_path / f"{name}.toml"
        path.write_text(config(port, store_url, base), encoding="utf-8")
        daemons.append(Daemon(path, port))
    return daemons[0], daemons[1]


def logged(daemon: Daemon, event: str) -> bool:
    for line in daemon.log.read_text().splitlines():
        try:
            if json.loads(line).get("event", "").startswith(event):
                return True
        except ValueError:
            continue
    return False


async def test_the_standby_takes_over_probing_within_30_s_with_no_duplicate_ticket(
    tmp_path: Path, postgres: PostgresServer, devices: tuple[Devices, str]
) -> None:
    state, base = devices
    store_url = postgres.url(postgres.new_database())
    first, second = daemons = pair(tmp_path, store_url, base)
    try:
        await first.start()
        assert logged(first, "health monitor started")
        await second.start()  # ready: its API is up while the other probes
        assert logged(second, "standby")
        assert not logged(second, "health monitor started")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{second.base}/ping/some-key") as answer,
        ):
            assert answer.status == 503  # heartbeats belong to the daemon that probes
            assert "standby" in await answer.text()

        state.failing.add("pump")
        opened = await eventually(
            first.tickets, lambda ts: len(ts) == 1, what="the pump's ticket from the first"
        )
        assert opened[0]["subject"]["id"] == "pump"
        # The standby answers the API for the desk (links aside, which name its own port).
        assert [(t["seq"], t["state"]) for t in await second.tickets()] == [(1, "open")]
        # ... and its subjects from the state the prober saves, not an empty monitor's.
        await eventually(
            lambda: second.get("/api/v1/orgs/acme/subjects"),
            lambda body: any(
                s["subject"]["id"] == "pump" and s["ticket_seq"] == 1 for s in body["subjects"]
            ),
            what="the pump's saved state on the standby",
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{second.base}/api/v1/orgs/acme/maintenance",
                json={"subject": "fan", "for": "1m", "reason": "filter change"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as answer,
        ):
            assert answer.status == 201, await answer.text()  # not "no subject fan"
            window = await answer.json()
        async with (
            aiohttp.ClientSession() as session,
            session.delete(
                f"{second.base}/api/v1/orgs/acme/maintenance/{window['id']}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as answer,
        ):
            assert answer.status in (200, 204), await answer.text()

        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        await eventually(
            lambda: _async(logged(second, "health monitor started")),
            bool,
            within=30,
            what="the standby probing",
        )
        took = time.monotonic() - killed
        assert took < 30
        assert logged(second, "taking over probing")

        state.failing.add("fan")  # an outage that starts after the takeover
        tickets = await eventually(
            second.tickets, lambda ts: len(ts) == 2, what="the fan's ticket from the standby"
        )
        assert [t["subject"]["id"] for t in tickets] == ["pump", "fan"]  # no second pump one
        state.failing.discard("pump")
        resolved = await eventually(
            lambda: second.ticket(opened[0]["seq"]),
            lambda t: t["state"] == "resolved",
            what="the first's ticket resolved by the standby",
        )
        assert resolved["state"] == "resolved"
        assert len(await second.tickets()) == 2
    finally:
        for daemon in daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


async def _async(value: bool) -> bool:
    return value


def lock_holder(postgres: PostgresServer, database: str) -> int | None:
    """The backend pid holding the probing lock on `database`, if any."""
    import psycopg

    key = lock_key() & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows the 64-bit key as two oids
    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user=postgres.user, dbname=database
    ) as conn:
        row = conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s"
            " AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
            (database, key >> 32, key & 0xFFFF_FFFF),
        ).fetchone()
        return None if row is None else int(row[0])


async def test_a_daemon_whose_lock_connection_dies_stops_and_the_standby_probes(
    tmp_path: Path, postgres: PostgresServer, devices: tuple[Devices, str]
) -> None:
    _, base = devices
    database = postgres.new_database()
    store_url = postgres.url(database)
    first, second = daemons = pair(tmp_path, store_url, base)
    try:
        await first.start()
        await second.start()
        assert logged(second, "standby")
        holder = lock_holder(postgres, database)
        assert holder is not None
        postgres.sql(f"SELECT pg_terminate_backend({holder})")  # as a lost network would

        process = first.process
        assert process is not None
        code = await asyncio.to_thread(process.wait, 20)
        assert code == 1  # it stopped probing, and says why
        assert logged(first, "probing lock lost")
        assert "the probing lock was lost" in first.log.read_text()
        await eventually(
            lambda: _async(logged(second, "taking over probing")),
            bool,
            within=30,
            what="the standby taking over",
        )
    finally:
        for daemon in daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()
