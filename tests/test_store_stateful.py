"""The ticket state machine, explored by hypothesis against the real store on a real SQLite
file: random opens, transitions, comments and edits on existing and missing tickets in two
orgs, checked step by step against a plain model of what should be there."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import FakeClock
from tocsin.db import migrate, schema
from tocsin.db.engine import open_database
from tocsin.tickets.errors import InvalidTicket, TicketNotFound
from tocsin.tickets.model import Actor, ActorType, EventType, Source, State, Subject, SubjectType
from tocsin.tickets.store import OpenRequest, TicketStore
from tocsin.tickets.transitions import Action, IllegalTransition

R = TypeVar("R")

ORGS = ("acme", "beta")
MAX_TICKETS = 3
ACTOR = Actor(ActorType.USER, "Ada")
# The state machine as the product describes it, written out independently of the code.
MOVES = {
    (Action.START, State.OPEN): State.IN_PROGRESS,
    (Action.RESOLVE, State.OPEN): State.RESOLVED,
    (Action.RESOLVE, State.IN_PROGRESS): State.RESOLVED,
    (Action.REOPEN, State.RESOLVED): State.OPEN,
}
TRIGGER_OF = {
    EventType.OPENED: "ticket.opened",
    EventType.STARTED: "ticket.started",
    EventType.RESOLVED: "ticket.resolved",
    EventType.REOPENED: "ticket.reopened",
    EventType.COMMENT: "ticket.comment_added",
}

orgs = st.sampled_from(ORGS)
# A number the machine gave out, or any small number, which may not exist (yet) in that org.
any_ticket = st.tuples(orgs, st.integers(min_value=1, max_value=6))
comments = st.one_of(st.none(), st.sampled_from(["on it", "**done**"]))
bodies = st.sampled_from(["a note", "  padded  ", "", " \n "])  # the last two are refused
descriptions = st.sampled_from(["", "first text", "second text"])


@dataclass
class ModelTicket:
    state: State = State.OPEN
    description: str = ""
    # Each timeline event with the state the ticket was in right after it.
    events: list[tuple[EventType, State]] = field(
        default_factory=lambda: [(EventType.OPENED, State.OPEN)]
    )


class TicketMachine(RuleBasedStateMachine):
    opened = Bundle("opened")
    # Mostly tickets that exist; sometimes a number that does not (yet). Drawing from an empty
    # bundle would make the example invalid, hence the preconditions on the rules using it.
    tickets = st.one_of(opened, opened, opened, any_ticket)

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="tocsin-stateful-"))
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        path = self.folder / "tocsin.db"
        self.database = open_database(f"sqlite+aiosqlite:///{path}")
        self.run(migrate.upgrade(self.database))
        self.reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        self.store = TicketStore(self.database, clock=self.clock)
        self.run(self._start_store())
        self.model: dict[str, dict[int, ModelTicket]] = {org: {} for org in ORGS}

    async def _start_store(self) -> None:
        self.store.start()  # its writer task needs the running loop

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
            self.run(self.database.dispose())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.reader.close()
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- database views --------------------------------------------------------------------

    def everything(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, as stored, read in one transaction.

        A plain sqlite3 connection on the same file: reading through aiosqlite costs a thread
        hop per row, and this runs several times a step.
        """
        tables: dict[str, list[dict[str, Any]]] = {}
        self.reader.execute("BEGIN")
        try:
            for table in schema.metadata.sorted_tables:
                order = ", ".join(c.name for c in table.primary_key.columns)
                cursor = self.reader.execute(f"SELECT * FROM {table.name} ORDER BY {order}")
                names = [d[0] for d in cursor.description]
                tables[table.name] = [dict(zip(names, row, strict=True)) for row in cursor]
        finally:
            self.reader.execute("COMMIT")
        return tables

    def refused(self, error: type[Exception], operation: Coroutine[Any, Any, Any]) -> None:
        """Run an operation that must fail with `error` and leave every row as it was."""
        before = self.everything()
        try:
            self.run(operation)
        except error:
            pass
        else:
            raise AssertionError(f"expected {error.__name__}")
        assert self.everything() == before

    # -- rules -----------------------------------------------------------------------------

    # A handful of tickets per example, so that the steps walk each one through many states.
    @precondition(lambda self: sum(map(len, self.model.values())) < MAX_TICKETS)
    @rule(target=opened, org=orgs, subject_id=st.sampled_from(["d1", "d2", "d3"]))
    def open_ticket(self, org: str, subject_id: str) -> tuple[str, int]:
        self.clock.advance(seconds=1)
        subject = Subject(SubjectType.DEVICE, subject_id, subject_id.upper())
        request = OpenRequest(org, Source.WORKFLOW, subject, "door_ajar", "", ACTOR)
        change = self.run(self.store.open(request))
        expected_seq = len(self.model[org]) + 1
        assert (change.ticket.org, change.ticket.seq) == (org, expected_seq)
        self.model[org][expected_seq] = ModelTicket()
        return org, expected_seq

    def _transition(self, action: Action, which: tuple[str, int], comment: str | None) -> None:
        org, seq = which
        self.clock.advance(seconds=1)  # a touched updated_at would show in a refusal
        ticket = self.model[org].get(seq)
        operation = self.store.transition(org, seq, action, ACTOR, comment)
        if ticket is None:
            self.refused(TicketNotFound, operation)
            return
        target = MOVES.get((action, ticket.state))
        if target is None:
            self.refused(IllegalTransition, operation)
            return
        change = self.run(operation)
        assert change.ticket.state is target
        assert change.event is not None
        assert change.event.payload == ({"comment": comment} if comment else {})
        ticket.state = target
        ticket.events.append((change.event.type, target))

    @precondition(lambda self: any(self.model.values()))
    @rule(which=tickets, comment=comments)
    def start(self, which: tuple[str, int], comment: str | None) -> None:
        self._transition(Action.START, which, comment)

    @precondition(lambda self: any(self.model.values()))
    @rule(which=tickets, comment=comments)
    def resolve(self, which: tuple[str, int], comment: str | None) -> None:
        self._transition(Action.RESOLVE, which, comment)

    @precondition(lambda self: any(self.model.values()))
    @rule(which=tickets, comment=comments)
    def reopen(self, which: tuple[str, int], comment: str | None) -> None:
        self._transition(Action.REOPEN, which, comment)

    @precondition(lambda self: any(self.model.values()))
    @rule(which=tickets, body=bodies)
    def comment(self, which: tuple[str, int], body: str) -> None:
        org, seq = which
        self.clock.advance(seconds=1)
        ticket = self.model[org].get(seq)
        operation = self.store.comment(org, seq, ACTOR, body)
        if not body.strip():  # checked before the ticket is looked up
            self.refused(InvalidTicket, operation)
        elif ticket is None:
            self.refused(TicketNotFound, operation)
        else:
            change = self.run(operation)
            assert change.event is not None
            assert change.event.payload == {"body": body}
            assert change.ticket.state is ticket.state  # a comment moves no state
            ticket.events.append((EventType.COMMENT, ticket.state))

    @precondition(lambda self: any(self.model.values()))
    @rule(which=tickets, description=descriptions)
    def edit(self, which: tuple[str, int], description: str) -> None:
        org, seq = which
        self.clock.advance(seconds=1)
        ticket = self.model[org].get(seq)
        operation = self.store.edit_description(org, seq, ACTOR, description)
        if ticket is None:
            self.refused(TicketNotFound, operation)
        elif ticket.description == description:
            before = self.everything()
            assert self.run(operation).event is None
            assert self.everything() == before
        else:
            change = self.run(operation)
            assert change.event is not None
            assert change.event.type is EventType.DESCRIPTION_EDITED
            ticket.description = description
            ticket.events.append((EventType.DESCRIPTION_EDITED, ticket.state))

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def the_database_matches_the_model(self) -> None:
        rows = self.everything()
        tickets, events, triggers = rows["tickets"], rows["timeline_events"], rows["triggers"]
        sequences = {row["org"]: row["last_seq"] for row in rows["org_sequences"]}

        by_id = {t["id"]: (t["org"], t["seq"]) for t in tickets}
        for org in ORGS:
            # Per org: numbers 1..N, each once, and the counter at N.
            numbers = sorted(t["seq"] for t in tickets if t["org"] == org)
            assert numbers == list(range(1, len(self.model[org]) + 1))
            assert sequences.get(org, 0) == len(self.model[org])
        assert {(t["org"], t["seq"]): (State(t["state"]), t["description"]) for t in tickets} == {
            (org, seq): (ticket.state, ticket.description)
            for org, model_tickets in self.model.items()
            for seq, ticket in model_tickets.items()
        }

        # The timeline: per ticket, the model's events in order (so their count too).
        timelines: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for event in events:  # in id order, which is the order they were written
            timelines.setdefault(by_id[event["ticket_id"]], []).append(event)
        assert {
            key: [EventType(e["type"]) for e in entries] for key, entries in timelines.items()
        } == {
            (org, seq): [event_type for event_type, _ in ticket.events]
            for org, model_tickets in self.model.items()
            for seq, ticket in model_tickets.items()
        }

        # Exactly one trigger per event that fires one, of its type, carrying the ticket as it
        # was right after that event; none for a description edit.
        state_after: dict[int, State] = {}
        for (org, seq), rows_of_ticket in timelines.items():
            model_events = self.model[org][seq].events
            for event, (_, after) in zip(rows_of_ticket, model_events, strict=True):
                state_after[event["id"]] = after
        event_types = {e["id"]: EventType(e["type"]) for e in events}
        fired = [e for e in events if EventType(e["type"]) is not EventType.DESCRIPTION_EDITED]
        assert [t["event_id"] for t in triggers] == [e["id"] for e in fired]
        for trigger in triggers:
            assert trigger["type"] == TRIGGER_OF[event_types[trigger["event_id"]]]
            snapshot = json.loads(trigger["data"])["ticket"]
            org, seq = by_id[trigger["ticket_id"]]
            assert (trigger["org"], snapshot["org"], snapshot["seq"]) == (org, org, seq)
            assert snapshot["state"] == state_after[trigger["event_id"]].value
        assert Counter(t["type"] for t in triggers) == Counter(
            TRIGGER_OF[event_type]
            for model_tickets in self.model.values()
            for ticket in model_tickets.values()
            for event_type, _ in ticket.events
            if event_type in TRIGGER_OF
        )


TicketMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,  # each step commits to a file with fsync; time varies with the disk
    derandomize=True,  # the same examples on every run: no flaky failures
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_store_follows_the_ticket_state_machine = TicketMachine.TestCase
