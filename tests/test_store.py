"""The ticket store against a real SQLite file and a real PostgreSQL server: transitions,
sequence numbers, the outbox, the timeline, dedup keys, user reports, validation, listing and the
migrated schema."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, event, select, text

from tocsin.db import migrate, schema
from tocsin.db.engine import Database, open_database
from tocsin.tickets.errors import DedupConflict, InvalidTicket, TicketNotFound
from tocsin.tickets.model import (
    MAX_DEDUP_KEY_LENGTH,
    MAX_KIND_LENGTH,
    MAX_TEXT_LENGTH,
    Actor,
    ActorType,
    EventType,
    Kind,
    Source,
    State,
    Subject,
    SubjectType,
    Ticket,
    TriggerType,
)
from tocsin.tickets.store import OpenOutcome, OpenRequest, TicketFilter, TicketStore
from tocsin.tickets.transitions import Action, IllegalTransition

pytestmark = pytest.mark.engines

ADA = Actor(ActorType.USER, "Ada Lovelace")
FLOW = Actor(ActorType.WORKFLOW, "door-check")
MONITOR = Actor.health_monitor()

# (action, from state) -> (to state, timeline event, trigger); every other pair is illegal.
LEGAL: dict[tuple[Action, State], tuple[State, EventType, TriggerType]] = {
    (Action.START, State.OPEN): (State.IN_PROGRESS, EventType.STARTED, TriggerType.STARTED),
    (Action.RESOLVE, State.OPEN): (State.RESOLVED, EventType.RESOLVED, TriggerType.RESOLVED),
    (Action.RESOLVE, State.IN_PROGRESS): (
        State.RESOLVED,
        EventType.RESOLVED,
        TriggerType.RESOLVED,
    ),
    (Action.REOPEN, State.RESOLVED): (State.OPEN, EventType.REOPENED, TriggerType.REOPENED),
}
ILLEGAL = [(a, s) for a in Action for s in State if (a, s) not in LEGAL]


def pair_id(pair: tuple[Action, State]) -> str:
    return f"{pair[0].value}-from-{pair[1].value}"


# -- helpers ---------------------------------------------------------------------------------


def workflow_open(
    org: str = "acme",
    *,
    subject_id: str = "d1",
    subject_type: SubjectType = SubjectType.DEVICE,
    subject_name: str | None = None,
    kind: str = "door_ajar",
    description: str = "",
    dedup_key: str | None = None,
) -> OpenRequest:
    subject = Subject(subject_type, subject_id, subject_name or subject_id.title())
    return OpenRequest(org, Source.WORKFLOW, subject, kind, description, FLOW, dedup_key)


def user_report(
    org: str = "acme",
    *,
    subject_id: str = "d1",
    subject_type: SubjectType = SubjectType.DEVICE,
    subject_name: str | None = None,
    kind: str = Kind.USER_REPORT.value,
    description: str = "It does not work",
    dedup_key: str | None = None,
) -> OpenRequest:
    subject = Subject(subject_type, subject_id, subject_name or subject_id.title())
    return OpenRequest(org, Source.USER, subject, kind, description, ADA, dedup_key)


def monitor_open(
    org: str = "acme",
    *,
    subject_id: str = "d1",
    subject_type: SubjectType = SubjectType.DEVICE,
    subject_name: str | None = None,
    kind: str = Kind.DEVICE_OFFLINE.value,
    description: str = "",
) -> OpenRequest:
    subject = Subject(subject_type, subject_id, subject_name or subject_id.title())
    return OpenRequest(org, Source.HEALTH_MONITOR, subject, kind, description, MONITOR)


async def open_in_state(
    store: TicketStore, state: State, request: OpenRequest | None = None
) -> Ticket:
    """A new ticket, driven to `state` through the store."""
    change = await store.open(request or workflow_open())
    ticket = change.ticket
    if state is State.IN_PROGRESS:
        ticket = (await store.start_work(ticket.org, ticket.seq, ADA)).ticket
    elif state is State.RESOLVED:
        ticket = (await store.resolve(ticket.org, ticket.seq, ADA)).ticket
    assert ticket.state is state
    return ticket


async def table_rows(database: Database, table: Table) -> list[dict[str, Any]]:
    async with database.read.connect() as conn:
        result = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(row._mapping) for row in result]


async def snapshot(database: Database) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table: what "nothing changed" is checked against."""
    return {t.name: await table_rows(database, t) for t in schema.metadata.sorted_tables}


async def last_seq(database: Database, org: str) -> int | None:
    async with database.read.connect() as conn:
        statement = select(schema.org_sequences.c.last_seq).where(schema.org_sequences.c.org == org)
        return (await conn.execute(statement)).scalar_one_or_none()


class InjectedFault(Exception):
    """Raised by a test's event listener in place of the database."""


_INSERT_TRIGGER = re.compile(r"\s*INSERT\s+INTO\s+triggers\b", re.IGNORECASE)


@contextmanager
def failing_trigger_inserts(
    engine: Engine, when: Callable[[Any], bool] = lambda parameters: True
) -> Iterator[None]:
    """Make every INSERT INTO triggers whose parameters satisfy `when` fail."""

    def fail(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        # SQLite's driver takes a tuple of values, psycopg a dict of them by name.
        values = parameters.values() if isinstance(parameters, dict) else parameters
        if _INSERT_TRIGGER.match(statement) and when(values):
            raise InjectedFault("the disk ate the trigger row")

    event.listen(engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", fail)


@contextmanager
def counting_transactions(engine: Engine) -> Iterator[list[int]]:
    """Count the transactions the engine begins (one per group-commit batch)."""
    begun: list[int] = []

    def on_begin(conn: Any) -> None:
        begun.append(1)

    event.listen(engine, "begin", on_begin)
    try:
        yield begun
    finally:
        event.remove(engine, "begin", on_begin)


def cursor_for(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- transitions -----------------------------------------------------------------------------


@pytest.mark.parametrize("pair", list(LEGAL), ids=pair_id)
async def test_it_applies_a_legal_transition_with_its_timeline_event_and_trigger(
    store, database, clock, pair
):
    action, current = pair
    target, event_type, trigger_type = LEGAL[pair]
    ticket = await open_in_state(store, current)
    clock.advance(minutes=5)

    change = await store.transition("acme", ticket.seq, action, ADA)

    assert change.ticket.state is target
    assert change.ticket.updated_at == clock.now
    assert change.ticket.resolved_at == (clock.now if target is State.RESOLVED else None)
    assert change.event is not None
    assert (change.event.type, change.event.at, change.event.actor) == (event_type, clock.now, ADA)
    stored, timeline = await store.get("acme", ticket.seq)
    assert stored == change.ticket
    assert timeline[-1] == change.event
    trigger = (await table_rows(database, schema.triggers))[-1]
    assert trigger["type"] == trigger_type.value
    assert trigger["event_id"] == change.event.id


@pytest.mark.parametrize("pair", ILLEGAL, ids=pair_id)
async def test_it_refuses_an_illegal_transition_and_changes_nothing(store, database, clock, pair):
    action, current = pair
    ticket = await open_in_state(store, current)
    before = await snapshot(database)
    clock.advance(minutes=5)  # a touched updated_at would show

    with pytest.raises(IllegalTransition, match=current.value) as caught:
        await store.transition("acme", ticket.seq, action, ADA, comment="trying anyway")

    assert caught.value.current is current
    assert await snapshot(database) == before
    stored, _ = await store.get("acme", ticket.seq)
    assert stored.state is current
    assert stored.updated_at == ticket.updated_at


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: s.start_work("acme", 7, ADA), id="start"),
        pytest.param(lambda s: s.resolve("acme", 7, ADA), id="resolve"),
        pytest.param(lambda s: s.reopen("acme", 7, ADA), id="reopen"),
        pytest.param(lambda s: s.comment("acme", 7, ADA, "hello"), id="comment"),
        pytest.param(lambda s: s.edit_description("acme", 7, ADA, "new"), id="edit"),
        pytest.param(lambda s: s.start_work("beta", 1, ADA), id="another-orgs-number"),
    ],
)
async def test_it_refuses_to_change_a_ticket_that_does_not_exist(store, database, operation):
    await store.open(workflow_open())
    before = await snapshot(database)

    with pytest.raises(TicketNotFound):
        await operation(store)

    assert await snapshot(database) == before


async def test_it_changes_only_the_ticket_of_the_org_it_names(store):
    await store.open(workflow_open("acme"))
    await store.open(workflow_open("beta"))

    await store.start_work("acme", 1, ADA)

    assert (await store.get("acme", 1))[0].state is State.IN_PROGRESS
    assert (await store.get("beta", 1))[0].state is State.OPEN


async def test_it_clears_resolved_at_when_a_ticket_is_reopened(store, clock):
    ticket = await open_in_state(store, State.RESOLVED)
    clock.advance(hours=1)

    change = await store.reopen("acme", ticket.seq, ADA)

    assert change.ticket.resolved_at is None
    assert (await store.get("acme", ticket.seq))[0].resolved_at is None


# -- sequence numbers ------------------------------------------------------------------------


async def test_fifty_concurrent_opens_in_one_org_get_exactly_one_to_fifty(store, database):
    changes = await asyncio.gather(
        *(store.open(workflow_open(subject_id=f"d{i}")) for i in range(50))
    )

    assert sorted(c.ticket.seq for c in changes) == list(range(1, 51))
    assert [t["seq"] for t in await table_rows(database, schema.tickets)] == list(range(1, 51))
    assert await last_seq(database, "acme") == 50


async def test_interleaved_opens_in_two_orgs_give_each_org_its_own_gap_free_numbers(store):
    orgs = ["acme", "beta", "beta", "acme", "beta"] * 8  # 16 for acme, 24 for beta

    changes = await asyncio.gather(*(store.open(workflow_open(org)) for org in orgs))

    for org, expected in (("acme", 16), ("beta", 24)):
        seqs = sorted(c.ticket.seq for c in changes if c.ticket.org == org)
        assert seqs == list(range(1, expected + 1))
        page = await store.list_tickets(org, limit=200)
        assert [t.seq for t in page.tickets] == list(range(expected, 0, -1))


async def test_a_second_writer_on_the_same_file_still_gets_unique_gap_free_numbers(
    database, db_url, clock
):
    # Two stores on two Database objects: two engines, two writer threads, two connections to
    # one file, as the daemon and a CLI would be. One op per transaction maximises contention.
    other_database = open_database(db_url)
    first = TicketStore(database, clock=clock, max_batch=1)
    second = TicketStore(other_database, clock=clock, max_batch=1)
    first.start()
    second.start()
    try:
        # Strict alternation: each writer must read the number the other one just took.
        for index in range(10):
            writer = (first, second)[index % 2]
            change = await writer.open(workflow_open(subject_id=f"alt{index}"))
            assert change.ticket.seq == index + 1

        # Both at once: BEGIN IMMEDIATE and the busy timeout serialise them.
        changes = await asyncio.gather(
            *(
                writer.open(workflow_open(subject_id=f"both{index}"))
                for index in range(30)
                for writer in (first, second)
            )
        )
    finally:
        await first.close()
        await second.close()
        await other_database.dispose()

    assert sorted(c.ticket.seq for c in changes) == list(range(11, 71))
    assert [t["seq"] for t in await table_rows(database, schema.tickets)] == list(range(1, 71))
    assert await last_seq(database, "acme") == 70


# -- the outbox: ticket, timeline event and trigger row commit together ---------------------


async def test_a_failed_trigger_insert_leaves_no_ticket_no_event_and_no_gap(store, database):
    await store.open(workflow_open(subject_id="first"))
    before = await snapshot(database)

    with failing_trigger_inserts(database.write), pytest.raises(InjectedFault):
        await store.open(workflow_open(subject_id="doomed"))

    assert await snapshot(database) == before
    assert await last_seq(database, "acme") == 1
    change = await store.open(workflow_open(subject_id="next"))
    assert change.ticket.seq == 2


async def test_a_failed_trigger_insert_leaves_the_transition_undone(store, database, clock):
    ticket = await open_in_state(store, State.IN_PROGRESS)
    before = await snapshot(database)
    clock.advance(minutes=1)

    with failing_trigger_inserts(database.write), pytest.raises(InjectedFault):
        await store.resolve("acme", ticket.seq, ADA, comment="done")

    assert await snapshot(database) == before
    change = await store.resolve("acme", ticket.seq, ADA, comment="done")
    assert change.ticket.state is State.RESOLVED


async def test_a_failed_operation_does_not_undo_the_others_in_its_batch(store, database):
    await store.open(workflow_open(subject_id="before"))
    subjects = ["ok-1", "ok-2", "doomed", "ok-3", "ok-4"]

    def is_doomed(parameters: Any) -> bool:
        # psycopg wraps a JSON value in its Json adapter, whose text is shortened: look inside.
        return any("doomed" in str(getattr(value, "obj", value)) for value in parameters)

    with (
        counting_transactions(database.write) as begun,
        failing_trigger_inserts(database.write, is_doomed),
    ):
        outcomes = await asyncio.gather(
            *(store.open(workflow_open(subject_id=s)) for s in subjects), return_exceptions=True
        )

    assert len(begun) == 1, "the five opens were meant to share one group-commit batch"
    assert isinstance(outcomes[2], InjectedFault)
    created = [o for i, o in enumerate(outcomes) if i != 2]
    assert sorted(c.ticket.seq for c in created) == [2, 3, 4, 5]  # no gap where #doomed was
    tickets = await table_rows(database, schema.tickets)
    assert [t["subject_id"] for t in tickets] == ["before", "ok-1", "ok-2", "ok-3", "ok-4"]
    assert len(await table_rows(database, schema.timeline_events)) == 5
    triggers = await table_rows(database, schema.triggers)
    assert {t["ticket_id"] for t in triggers} == {t["id"] for t in tickets}
    assert await last_seq(database, "acme") == 5
    assert (await store.open(workflow_open(subject_id="after"))).ticket.seq == 6


# -- trigger rows ----------------------------------------------------------------------------


async def test_it_writes_one_trigger_per_change_with_a_snapshot_of_the_ticket_after_it(
    store, database, clock
):
    steps: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.open(workflow_open(description="Door 1 is ajar")),
        lambda: store.comment("acme", 1, ADA, "Looking into it"),
        lambda: store.start_work("acme", 1, ADA),
        lambda: store.resolve("acme", 1, FLOW, comment="Closed by the sensor"),
        lambda: store.reopen("acme", 1, ADA, comment="Ajar again"),
        lambda: store.comment("acme", 1, FLOW, "Still ajar"),
    ]
    changes = []
    for step in steps:
        clock.advance(minutes=1)
        changes.append(await step())

    triggers = await table_rows(database, schema.triggers)
    _, timeline = await store.get("acme", 1)

    assert [t["type"] for t in triggers] == [
        "ticket.opened",
        "ticket.comment_added",
        "ticket.started",
        "ticket.resolved",
        "ticket.reopened",
        "ticket.comment_added",
    ]
    assert [t["data"]["ticket"]["state"] for t in triggers] == [
        "open",
        "open",
        "in_progress",
        "resolved",
        "open",
        "open",
    ]
    assert [t["event_id"] for t in triggers] == [e.id for e in timeline]
    for trigger, change, entry in zip(triggers, changes, timeline, strict=True):
        assert change.event == entry
        assert trigger["org"] == "acme"
        assert trigger["ticket_id"] == change.ticket.id
        assert trigger["created_at"] == entry.at
        assert trigger["data"] == {
            "org": "acme",
            "ticket": change.ticket.to_json(),
            "event": entry.to_json(),
        }
        assert trigger["data"]["ticket"]["updated_at"] == trigger["data"]["event"]["at"]
    assert triggers[3]["data"]["ticket"]["resolved_at"] == triggers[3]["data"]["event"]["at"]
    assert triggers[3]["data"]["event"]["comment"] == "Closed by the sensor"
    assert triggers[4]["data"]["ticket"]["resolved_at"] is None


async def test_a_description_edit_lands_on_the_timeline_and_fires_no_trigger(
    store, database, clock
):
    await store.open(workflow_open(description="Door 1 is ajar"))
    clock.advance(minutes=3)

    change = await store.edit_description("acme", 1, ADA, "Door 1 is **wide** open")

    assert change.event is not None
    assert change.event.type is EventType.DESCRIPTION_EDITED
    assert change.event.payload == {
        "old_description": "Door 1 is ajar",
        "new_description": "Door 1 is **wide** open",
    }
    ticket, timeline = await store.get("acme", 1)
    assert ticket.description == "Door 1 is **wide** open"
    assert ticket.updated_at == clock.now
    assert [e.type for e in timeline] == [EventType.OPENED, EventType.DESCRIPTION_EDITED]
    assert [t["type"] for t in await table_rows(database, schema.triggers)] == ["ticket.opened"]


async def test_an_edit_to_the_same_text_adds_nothing(store, database, clock):
    await store.open(workflow_open(description="Door 1 is ajar"))
    before = await snapshot(database)
    clock.advance(minutes=3)

    change = await store.edit_description("acme", 1, ADA, "Door 1 is ajar")

    assert change.event is None
    assert change.ticket.description == "Door 1 is ajar"
    assert await snapshot(database) == before


# -- the timeline ----------------------------------------------------------------------------


async def test_the_timeline_is_chronological_append_only_and_keeps_actors_and_texts(store, clock):
    body = "**Camera** is dark.\n\n- checked power\n- `ping` fails  "
    steps: list[tuple[Callable[[], Awaitable[Any]], EventType, Actor, dict[str, Any]]] = [
        (lambda: store.open(monitor_open(subject_id="cam-1")), EventType.OPENED, MONITOR, {}),
        (lambda: store.comment("acme", 1, ADA, body), EventType.COMMENT, ADA, {"body": body}),
        (
            lambda: store.start_work("acme", 1, ADA, comment="On my way"),
            EventType.STARTED,
            ADA,
            {"comment": "On my way"},
        ),
        (
            lambda: store.edit_description("acme", 1, ADA, "Power supply died"),
            EventType.DESCRIPTION_EDITED,
            ADA,
            {"old_description": "", "new_description": "Power supply died"},
        ),
        (
            lambda: store.resolve("acme", 1, FLOW, comment="Replaced the PSU"),
            EventType.RESOLVED,
            FLOW,
            {"comment": "Replaced the PSU"},
        ),
        (
            lambda: store.reopen("acme", 1, MONITOR, comment="Offline again"),
            EventType.REOPENED,
            MONITOR,
            {"comment": "Offline again"},
        ),
        (lambda: store.resolve("acme", 1, ADA), EventType.RESOLVED, ADA, {}),
    ]
    seen: list[Any] = []
    for operation, event_type, actor, payload in steps:
        at = clock.advance(seconds=90)
        await operation()
        _, timeline = await store.get("acme", 1)
        assert timeline[: len(seen)] == seen, "an earlier event changed"
        assert len(timeline) == len(seen) + 1
        newest = timeline[-1]
        assert (newest.type, newest.at, newest.actor, newest.payload) == (
            event_type,
            at,
            actor,
            payload,
        )
        assert newest.to_json()["actor"] == {"type": actor.type.value, "name": actor.name}
        seen = timeline

    assert [e.at for e in seen] == sorted(e.at for e in seen)
    assert len({e.at for e in seen}) == len(seen)
    assert [e.id for e in seen] == sorted(e.id for e in seen)


# -- dedup_key -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.OPEN, State.IN_PROGRESS], ids=lambda s: s.value)
async def test_a_workflow_open_with_the_key_of_an_unresolved_ticket_returns_that_ticket(
    store, database, clock, state
):
    ticket = await open_in_state(store, state, workflow_open(dedup_key="door-1"))
    before = await snapshot(database)
    clock.advance(minutes=1)

    change = await store.open(
        workflow_open(subject_id="other", description="a different text", dedup_key="door-1")
    )

    assert change.outcome is OpenOutcome.DEDUPLICATED
    assert change.event is None
    assert change.ticket == ticket
    assert await snapshot(database) == before


async def test_a_dedup_key_matches_only_in_its_own_org_and_only_the_same_key(store):
    await store.open(workflow_open("acme", dedup_key="door-1"))

    other_org = await store.open(workflow_open("beta", dedup_key="door-1"))
    other_key = await store.open(workflow_open("acme", dedup_key="door-2"))
    no_key = await store.open(workflow_open("acme"))

    assert other_org.outcome is OpenOutcome.CREATED
    assert (other_org.ticket.org, other_org.ticket.seq) == ("beta", 1)
    assert other_key.outcome is OpenOutcome.CREATED
    assert other_key.ticket.seq == 2
    assert no_key.outcome is OpenOutcome.CREATED
    assert no_key.ticket.seq == 3


async def test_the_health_monitors_own_dedup_key_deduplicates_too(store):
    subject = Subject(SubjectType.INTEGRATION, "ops-chat", "ops-chat webhook")
    request = OpenRequest("acme", Source.HEALTH_MONITOR, subject, Kind.DEVICE_OFFLINE.value, "",
                          MONITOR, "webhook:ops-chat")
    first = await store.open(request)
    again = await store.open(request)

    assert first.outcome is OpenOutcome.CREATED
    assert again.outcome is OpenOutcome.DEDUPLICATED
    assert again.ticket.seq == first.ticket.seq


async def test_after_its_ticket_is_resolved_the_same_key_opens_a_new_ticket(store, database):
    old = await store.open(workflow_open(dedup_key="door-1"))
    await store.resolve("acme", old.ticket.seq, FLOW)

    new = await store.open(workflow_open(dedup_key="door-1"))

    assert new.outcome is OpenOutcome.CREATED
    assert new.ticket.seq == 2
    assert new.ticket.dedup_key == "door-1"
    triggers = await table_rows(database, schema.triggers)
    assert [t["type"] for t in triggers][-1] == "ticket.opened"
    assert triggers[-1]["ticket_id"] == new.ticket.id


async def test_it_refuses_to_reopen_a_ticket_whose_key_another_unresolved_ticket_holds(
    store, database, clock
):
    await store.open(workflow_open(dedup_key="door-1"))
    await store.resolve("acme", 1, FLOW)
    await store.open(workflow_open(dedup_key="door-1"))
    before = await snapshot(database)
    clock.advance(minutes=1)

    with pytest.raises(DedupConflict) as caught:
        await store.reopen("acme", 1, ADA, comment="it is back")

    assert (caught.value.dedup_key, caught.value.other_seq) == ("door-1", 2)
    assert await snapshot(database) == before

    # Once the other one is resolved, the old one may come back, and holds the key again.
    await store.resolve("acme", 2, FLOW)
    assert (await store.reopen("acme", 1, ADA)).ticket.state is State.OPEN
    again = await store.open(workflow_open(dedup_key="door-1"))
    assert again.outcome is OpenOutcome.DEDUPLICATED
    assert again.ticket.seq == 1


# -- user reports ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.OPEN, State.IN_PROGRESS], ids=lambda s: s.value)
async def test_a_user_report_lands_on_the_subjects_unresolved_ticket_as_a_comment(
    store, database, clock, state
):
    ticket = await open_in_state(store, state, monitor_open(subject_id="cam-1"))
    clock.advance(minutes=2)

    change = await store.open(user_report(subject_id="cam-1", description="Still dark"))

    assert change.outcome is OpenOutcome.COMMENTED
    assert change.ticket.seq == ticket.seq
    assert change.ticket.state is state
    assert change.event is not None
    assert (change.event.type, change.event.actor) == (EventType.COMMENT, ADA)
    assert change.event.payload == {"body": "Still dark"}
    assert len(await table_rows(database, schema.tickets)) == 1
    assert await last_seq(database, "acme") == 1
    trigger = (await table_rows(database, schema.triggers))[-1]
    assert trigger["type"] == TriggerType.COMMENT_ADDED.value
    assert trigger["event_id"] == change.event.id


async def test_a_user_report_without_a_description_says_who_reported_it_again(store):
    await store.open(monitor_open(subject_id="cam-1"))

    change = await store.open(user_report(subject_id="cam-1", description=""))

    assert change.event is not None
    assert change.event.payload == {"body": "Reported again by Ada Lovelace."}


async def test_a_user_report_lands_on_the_newest_of_several_unresolved_tickets(store):
    await store.open(monitor_open(subject_id="cam-1"))
    await store.open(workflow_open(subject_id="cam-1"))

    change = await store.open(user_report(subject_id="cam-1"))

    assert change.outcome is OpenOutcome.COMMENTED
    assert change.ticket.seq == 2


@pytest.mark.parametrize(
    ("existing", "report"),
    [
        pytest.param(None, user_report(subject_id="cam-1"), id="no-ticket-at-all"),
        pytest.param(
            monitor_open(subject_id="cam-2"), user_report(subject_id="cam-1"), id="other-id"
        ),
        pytest.param(
            monitor_open(subject_id="cam-1", subject_type=SubjectType.DEVICE),
            user_report(subject_id="cam-1", subject_type=SubjectType.SPACE),
            id="other-type",
        ),
        pytest.param(
            monitor_open("beta", subject_id="cam-1"),
            user_report(subject_id="cam-1"),
            id="other-org",
        ),
    ],
)
async def test_a_user_report_opens_a_ticket_when_its_subject_has_none_unresolved(
    store, database, existing, report
):
    if existing is not None:
        await store.open(existing)

    change = await store.open(report)

    assert change.outcome is OpenOutcome.CREATED
    in_acme = existing is not None and existing.org == "acme"
    assert (change.ticket.org, change.ticket.seq) == ("acme", 2 if in_acme else 1)
    assert change.ticket.source is Source.USER
    assert change.ticket.kind == Kind.USER_REPORT.value
    assert change.ticket.description == report.description
    assert change.event is not None
    assert (change.event.type, change.event.actor) == (EventType.OPENED, ADA)
    assert (await table_rows(database, schema.triggers))[-1]["type"] == "ticket.opened"


async def test_a_user_report_opens_a_new_ticket_once_the_subjects_ticket_is_resolved(store):
    await open_in_state(store, State.RESOLVED, monitor_open(subject_id="cam-1"))

    change = await store.open(user_report(subject_id="cam-1"))

    assert change.outcome is OpenOutcome.CREATED
    assert change.ticket.seq == 2


# -- validation ------------------------------------------------------------------------------

TOO_LONG = "x" * (MAX_TEXT_LENGTH + 1)

INVALID: list[Any] = [
    pytest.param(lambda s: s.open(user_report(kind="door_ajar")), "kind", id="user-free-form-kind"),
    pytest.param(
        lambda s: s.open(monitor_open(kind="door_ajar")), "kind", id="monitor-free-form-kind"
    ),
    pytest.param(lambda s: s.open(workflow_open(kind="")), "kind", id="workflow-empty-kind"),
    pytest.param(
        lambda s: s.open(workflow_open(kind="k" * (MAX_KIND_LENGTH + 1))),
        "kind",
        id="workflow-kind-of-65",
    ),
    pytest.param(
        lambda s: s.open(workflow_open(kind="door\najar")), "kind", id="workflow-kind-newline"
    ),
    pytest.param(
        lambda s: s.open(workflow_open(kind="door\tajar")), "kind", id="workflow-kind-tab"
    ),
    pytest.param(
        lambda s: s.open(workflow_open(kind=" door_ajar")), "kind", id="workflow-kind-padded"
    ),
    pytest.param(
        lambda s: s.open(workflow_open(description=TOO_LONG)),
        "description",
        id="open-description-too-long",
    ),
    pytest.param(
        lambda s: s.open(user_report(dedup_key="door-1")), "dedup_key", id="user-with-dedup-key"
    ),
    pytest.param(lambda s: s.open(workflow_open(dedup_key="")), "dedup_key", id="empty-dedup-key"),
    pytest.param(
        lambda s: s.open(workflow_open(dedup_key="k" * (MAX_DEDUP_KEY_LENGTH + 1))),
        "dedup_key",
        id="dedup-key-too-long",
    ),
    pytest.param(lambda s: s.comment("acme", 1, ADA, ""), "body", id="empty-comment"),
    pytest.param(lambda s: s.comment("acme", 1, ADA, " \n\t "), "body", id="blank-comment"),
    pytest.param(lambda s: s.comment("acme", 1, ADA, TOO_LONG), "body", id="comment-too-long"),
    pytest.param(
        lambda s: s.start_work("acme", 1, ADA, comment=TOO_LONG),
        "comment",
        id="start-comment-too-long",
    ),
    pytest.param(
        lambda s: s.resolve("acme", 1, ADA, comment=TOO_LONG),
        "comment",
        id="resolve-comment-too-long",
    ),
    pytest.param(
        lambda s: s.edit_description("acme", 1, ADA, TOO_LONG),
        "description",
        id="edit-too-long",
    ),
]


@pytest.mark.parametrize(("operation", "field"), INVALID)
async def test_it_refuses_an_invalid_value_naming_its_field_and_writes_nothing(
    store, database, clock, operation, field
):
    await store.open(workflow_open(subject_id="existing", description="as it was"))
    before = await snapshot(database)
    clock.advance(minutes=1)

    with pytest.raises(InvalidTicket) as caught:
        await operation(store)

    assert caught.value.field == field
    assert await snapshot(database) == before


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(workflow_open(kind="k" * MAX_KIND_LENGTH), id="workflow-kind-of-64"),
        pytest.param(workflow_open(kind="x"), id="workflow-kind-of-1"),
        pytest.param(workflow_open(kind="Tür offen (Süd)"), id="workflow-kind-unicode"),
        pytest.param(workflow_open(kind=Kind.DEVICE_OFFLINE.value), id="workflow-builtin-kind"),
        pytest.param(user_report(), id="user-report-kind"),
        pytest.param(monitor_open(kind=Kind.INTEGRATION_UNREACHABLE.value), id="monitor-kind"),
        pytest.param(
            workflow_open(description="d" * MAX_TEXT_LENGTH), id="description-at-the-limit"
        ),
        pytest.param(
            workflow_open(dedup_key="k" * MAX_DEDUP_KEY_LENGTH), id="dedup-key-at-the-limit"
        ),
    ],
)
async def test_it_accepts_values_at_the_edge_of_what_is_allowed(store, request_):
    change = await store.open(request_)

    assert change.outcome is OpenOutcome.CREATED
    stored, _ = await store.get("acme", change.ticket.seq)
    assert (stored.kind, stored.description, stored.dedup_key) == (
        request_.kind,
        request_.description,
        request_.dedup_key,
    )


async def test_it_accepts_a_comment_at_the_length_limit(store):
    await store.open(workflow_open())

    change = await store.comment("acme", 1, ADA, "c" * MAX_TEXT_LENGTH)

    assert change.event is not None
    assert change.event.payload == {"body": "c" * MAX_TEXT_LENGTH}


# -- listing ---------------------------------------------------------------------------------


async def seed_listing(store: TicketStore) -> None:
    """Five acme tickets (and a beta one that matches everything and must never show)."""
    await store.open(
        workflow_open(subject_id="d1", subject_name="Door 1", description="Left open in room 5xp")
    )
    await open_in_state(
        store,
        State.IN_PROGRESS,
        monitor_open(
            subject_id="cam-1", subject_name="Lobby camera", description="1000 pings lost"
        ),
    )
    await open_in_state(
        store,
        State.RESOLVED,
        user_report(
            subject_id="lobby",
            subject_type=SubjectType.SPACE,
            subject_name="Lobby",
            description="Lights 100% off",
        ),
    )
    await store.open(
        workflow_open(
            subject_id="bms",
            subject_type=SubjectType.INTEGRATION,
            subject_name="BMS cloud",
            kind="disk_full",
            description="Disk at 95_percent",
        )
    )
    await open_in_state(
        store,
        State.RESOLVED,
        workflow_open(subject_id="d2", subject_name="Door 2", description=r"Log in C:\temp\x"),
    )
    await store.open(
        workflow_open(
            "beta", subject_id="d1", subject_name="Lobby door", description=r"100% 5_p C:\t"
        )
    )


LIST_CASES = [
    pytest.param(TicketFilter(), [5, 4, 3, 2, 1], id="everything-newest-first"),
    pytest.param(TicketFilter(states=(State.OPEN,)), [4, 1], id="state-open"),
    pytest.param(TicketFilter(states=(State.OPEN, State.IN_PROGRESS)), [4, 2, 1], id="two-states"),
    pytest.param(TicketFilter(states=(State.RESOLVED,)), [5, 3], id="state-resolved"),
    pytest.param(TicketFilter(source=Source.WORKFLOW), [5, 4, 1], id="source-workflow"),
    pytest.param(TicketFilter(source=Source.HEALTH_MONITOR), [2], id="source-health-monitor"),
    pytest.param(TicketFilter(source=Source.USER), [3], id="source-user"),
    pytest.param(TicketFilter(kind="door_ajar"), [5, 1], id="kind"),
    pytest.param(TicketFilter(kind="door"), [], id="kind-is-exact"),
    pytest.param(TicketFilter(subject_type="device"), [5, 2, 1], id="subject-type"),
    pytest.param(TicketFilter(subject_id="d1"), [1], id="subject-id"),
    pytest.param(
        TicketFilter(subject_type="integration", subject_id="bms"), [4], id="subject-type-and-id"
    ),
    pytest.param(TicketFilter(q="LOBBY"), [3, 2], id="q-ignores-case"),
    pytest.param(TicketFilter(q="sk_fu"), [4], id="q-searches-the-kind"),
    pytest.param(TicketFilter(q="pings"), [2], id="q-searches-the-description"),
    pytest.param(TicketFilter(q="cam-"), [2], id="q-searches-the-subject-id"),
    pytest.param(TicketFilter(q="100%"), [3], id="q-percent-is-a-literal"),
    pytest.param(TicketFilter(q="%"), [3], id="q-lone-percent-is-a-literal"),
    pytest.param(TicketFilter(q="5_p"), [4], id="q-underscore-is-a-literal"),
    pytest.param(TicketFilter(q=r"C:\t"), [5], id="q-backslash-is-a-literal"),
    pytest.param(TicketFilter(q=""), [5, 4, 3, 2, 1], id="empty-q-is-no-filter"),
    pytest.param(TicketFilter(q="nothing like this"), [], id="q-without-a-match"),
    pytest.param(
        TicketFilter(states=(State.OPEN,), source=Source.WORKFLOW, q="door"), [1], id="combined"
    ),
]


@pytest.mark.parametrize(("filters", "expected"), LIST_CASES)
async def test_it_lists_the_tickets_that_match_its_filters_newest_first(store, filters, expected):
    await seed_listing(store)

    page = await store.list_tickets("acme", filters)

    assert [t.seq for t in page.tickets] == expected
    assert all(t.org == "acme" for t in page.tickets)
    assert page.next_cursor is None


@pytest.mark.parametrize("limit", [1, 4, 5, 7, 22, 23, 24, 200])
async def test_paging_with_the_cursor_walks_every_ticket_once(store, limit):
    for index in range(23):
        await store.open(workflow_open(subject_id=f"d{index}"))

    seqs: list[int] = []
    pages = 0
    cursor = None
    while True:
        page = await store.list_tickets("acme", limit=limit, cursor=cursor)
        pages += 1
        assert 0 < len(page.tickets) <= limit
        seqs += [t.seq for t in page.tickets]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seqs == list(range(23, 0, -1))
    assert pages == -(-23 // limit)


async def test_paging_with_a_filter_walks_only_the_matching_tickets(store):
    for index in range(12):
        change = await store.open(workflow_open(subject_id=f"d{index}"))
        if index % 3 == 0:
            await store.resolve("acme", change.ticket.seq, ADA)
    filters = TicketFilter(states=(State.OPEN,))

    seqs: list[int] = []
    cursor = None
    while True:
        page = await store.list_tickets("acme", filters, limit=3, cursor=cursor)
        seqs += [t.seq for t in page.tickets]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seqs == [12, 11, 9, 8, 6, 5, 3, 2]


async def test_tickets_opened_while_paging_neither_repeat_nor_shift_the_rest(store):
    for index in range(12):
        await store.open(workflow_open(subject_id=f"d{index}"))
    first = await store.list_tickets("acme", limit=5)
    for index in range(3):
        await store.open(workflow_open(subject_id=f"late{index}"))

    rest = await store.list_tickets("acme", limit=50, cursor=first.next_cursor)

    assert [t.seq for t in first.tickets] == [12, 11, 10, 9, 8]
    assert [t.seq for t in rest.tickets] == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not a cursor!", id="not-base64"),
        pytest.param("", id="empty"),
        pytest.param("====", id="only-padding"),
        pytest.param(cursor_for(b"\xff\xfe\xfd"), id="not-utf8"),
        pytest.param(cursor_for(b"page:3"), id="wrong-prefix"),
        pytest.param(cursor_for(b"seq:"), id="no-number"),
        pytest.param(cursor_for(b"seq:abc"), id="not-a-number"),
        pytest.param(cursor_for(b"seq:-1"), id="negative"),
        pytest.param(cursor_for(b"seq:1.5"), id="fraction"),
        pytest.param(cursor_for("seq:²".encode()), id="superscript-digit"),
        pytest.param(cursor_for("seq:٣".encode()), id="arabic-indic-digit"),
        pytest.param(cursor_for(b"seq:" + b"9" * 30), id="too-large-for-the-database"),
    ],
)
async def test_it_refuses_a_cursor_it_did_not_give_out(store, cursor):
    await store.open(workflow_open())

    with pytest.raises(InvalidTicket) as caught:
        await store.list_tickets("acme", cursor=cursor)

    assert caught.value.field == "cursor"


# -- the schema ------------------------------------------------------------------------------


def _differences(database: Database, metadata: MetaData) -> list[Any]:
    with database.write.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))


async def test_the_migrations_create_exactly_the_schema_the_code_queries(database):
    assert await migrate.is_current(database)
    # Nothing is ignored: tables, columns, types, nullability, server defaults, indexes,
    # unique constraints and foreign keys must all match.
    assert await asyncio.to_thread(_differences, database, schema.metadata) == []


async def test_the_schema_comparison_would_notice_a_missing_column(database):
    # Guards the test above against passing vacuously (e.g. comparing against nothing).
    changed = MetaData(naming_convention=schema.metadata.naming_convention)
    for table in schema.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["tickets"].append_column(Column("priority", Integer, nullable=True))

    differences = await asyncio.to_thread(_differences, database, changed)

    assert [d[0] for d in differences] == ["add_column"]
    assert differences[0][3].name == "priority"


async def test_the_dedup_key_index_is_unique_among_unresolved_tickets_only(database):
    # alembic does not compare an index's WHERE clause, so it is checked here.
    name = "ux_tickets_org_dedup_key_unresolved"
    async with database.read.connect() as conn:
        if conn.dialect.name == "postgresql":
            statement = text("SELECT indexdef FROM pg_indexes WHERE indexname = :name")
        else:
            statement = text("SELECT sql FROM sqlite_master WHERE name = :name")
        sql = (await conn.execute(statement, {"name": name})).scalar_one()
    # PostgreSQL spells the condition back in its own words.
    condition = re.sub(r"[()]|::text", "", re.sub(r"\s+", " ", sql.split(" WHERE ", 1)[1]))
    assert condition.replace("<>", "!=") == "dedup_key IS NOT NULL AND state != 'resolved'", sql
    assert re.search(r"\(org, dedup_key\)", sql), sql
    assert sql.startswith("CREATE UNIQUE INDEX")
