"""The store when its PostgreSQL server goes away and comes back (a restart, a crash): writes
fail with the store's own error naming the cause, nothing half-written, the API answers 503 and
/readyz says not ready; once the server is back the next write and read succeed on fresh
connections. The server is this test's
own (tests/pg.py), so stopping it disturbs no other test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import pg
from tests.conftest import Api
from tocsin.db.health import Fault
from tocsin.db.writer import StoreUnavailable
from tocsin.tickets.model import Actor, Source, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore


def request(subject_id: str) -> OpenRequest:
    return OpenRequest(
        org="acme",
        source=Source.HEALTH_MONITOR,
        subject=Subject(SubjectType.DEVICE, subject_id, subject_id),
        kind="device_offline",
        description=f"{subject_id} is down",
        actor=Actor.health_monitor(),
    )


@pytest.fixture
def server() -> Iterator[pg.PostgresServer]:
    with pg.running(durable=True) as own:
        yield own


@pytest.fixture
def db_url(server: pg.PostgresServer) -> str:
    """The conftest's database, store, settings and api fixtures, on this test's server."""
    return server.url(server.new_database(template=None))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_writes_fail_plainly_while_the_server_is_down_and_work_once_it_is_back(
    server: pg.PostgresServer, store: TicketStore, mode: str
) -> None:
    await store.open(request("before"))
    assert len((await store.list_tickets("acme")).tickets) == 1  # the read pool holds a connection
    server.halt(mode)
    with pytest.raises(StoreUnavailable) as refused:
        await store.open(request("during"))
    fault = store.health.fault
    assert fault is not None
    assert fault.fault is Fault.UNREACHABLE
    assert str(refused.value) == fault.cause
    assert fault.cause.startswith("database server unreachable ("), fault.cause
    assert "postgres" not in fault.cause.lower().replace("postgresql", "")  # no user, no URL
    assert str(server.port) not in fault.cause

    server.resume()
    change = await store.open(request("after"))
    assert change.ticket.seq == 2  # "during" took no number: nothing of it was written
    assert store.health.fault is None
    page = await store.list_tickets("acme")
    assert [t.subject.id for t in page.tickets] == ["after", "before"]


async def test_the_api_answers_503_while_the_server_is_down_not_500(
    server: pg.PostgresServer, api: Api
) -> None:
    tickets = "/api/v1/orgs/acme/tickets"
    status, _ = await api.call("GET", tickets)
    assert status == 200
    server.halt("fast")
    status, body = await api.call("GET", tickets)
    assert (status, body["error"]["code"]) == (503, "store_unavailable")  # type: ignore[index]
    status, body = await api.call("GET", f"{tickets}/1")
    assert status == 503
    status, body = await api.call("GET", "/readyz", token=None)
    assert status == 503
    assert body["checks"]["store"].startswith("unreachable: "), body  # type: ignore[index]
    server.resume()
    status, body = await api.call("GET", tickets)
    assert (status, body["tickets"]) == (200, [])
    status, _ = await api.call("GET", "/readyz", token=None)
    assert status == 200
