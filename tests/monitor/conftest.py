"""The monitor tests' fake clocks and a real SQLite ticket store on them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.monitor.test_runtime import Clocks
from tocsin.db.engine import Database
from tocsin.tickets.store import TicketStore


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
async def tickets(database: Database, clocks: Clocks) -> AsyncIterator[TicketStore]:
    store = TicketStore(database, clock=lambda: clocks.wall)
    store.start()
    yield store
    await store.close()
