"""The probing lock on a real PostgreSQL server: one holder at a time, the next one takes it
when the holder lets go, and a holder whose connection dies hears of it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text

from tests.pg import PostgresServer
from tocsin.db.probing_lock import ProbingLock, lock_key


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    return postgres.url(postgres.new_database())


async def test_one_holds_it_the_other_waits_and_takes_it_when_it_is_given_back(url: str) -> None:
    key = lock_key(f"test-{uuid.uuid4()}")
    first = ProbingLock(url, key, try_every=0.05)
    second = ProbingLock(url, key, try_every=0.05)
    stop = asyncio.Event()
    waited: list[str] = []
    try:
        assert await first.acquire(stop, on_wait=lambda: waited.append("first"))
        taking = asyncio.create_task(second.acquire(stop, on_wait=lambda: waited.append("2nd")))
        await asyncio.sleep(0.5)
        assert not taking.done()
        assert waited == ["2nd"]  # told once, not at every try
        await first.close()
        async with asyncio.timeout(5):
            assert await taking
    finally:
        stop.set()
        await first.close()
        await second.close()


async def test_a_standby_stopped_while_waiting_says_so(url: str) -> None:
    key = lock_key(f"test-{uuid.uuid4()}")
    holder, standby = ProbingLock(url, key), ProbingLock(url, key, try_every=0.05)
    stop = asyncio.Event()
    try:
        assert await holder.acquire(stop, on_wait=lambda: None)
        waiting = asyncio.create_task(standby.acquire(stop, on_wait=lambda: None))
        await asyncio.sleep(0.2)
        stop.set()
        async with asyncio.timeout(5):
            assert await waiting is False
    finally:
        await holder.close()
        await standby.close()


async def test_the_holder_hears_when_its_connection_is_gone(url: str) -> None:
    key = lock_key(f"test-{uuid.uuid4()}")
    holder = ProbingLock(url, key, check_every=0.05)
    other = ProbingLock(url, key, try_every=0.05)
    stop = asyncio.Event()
    try:
        assert await holder.acquire(stop, on_wait=lambda: None)
        assert holder._conn is not None
        pid = (await holder._conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        holding = asyncio.create_task(holder.hold())
        await asyncio.sleep(0.2)
        assert not holding.done()  # a healthy connection keeps it
        killer = ProbingLock(url, lock_key("unused"))
        try:
            assert await killer.acquire(stop, on_wait=lambda: None)
            assert killer._conn is not None
            await killer._conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await killer.close()
        async with asyncio.timeout(5):
            await holding  # returns: the lock may be someone else's now
        async with asyncio.timeout(5):
            assert await other.acquire(stop, on_wait=lambda: None)
    finally:
        stop.set()
        await holder.close()
        await other.close()
