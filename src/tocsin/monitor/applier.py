"""Applies the tracker's ticket decisions to the store, in batches, and keeps them while the store
cannot take them.

The monitor loop never waits for the store: it hands each decision here with the moment it was
decided and goes on with the next observation. A round takes the oldest pending decision of
every subject and sends them to the store's group-commit writer together, so a storm of 5,000
opens is a few transactions, not 5,000. One decision per subject per round keeps each subject's
decisions in order even when a round half-fails.

A decision the store refuses for a store reason (disk full, locked, gone) stays at the head of
its subject's line and is retried with backoff until the store takes it, stamped with the time
it was decided. Memory stays bounded while the store is down: a subject's line holds at most
`max_per_subject` decisions, and past that its oldest comments give way (ticket changes never
do; the tracker itself holds back resolves and reopens while a ticket's seq is not known, and
flapping stops the rest).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import structlog

from tocsin.db.writer import StoreClosed, StoreUnavailable
from tocsin.probes.observation import SubjectKey
from tocsin.tickets.errors import IllegalTransition, TicketError
from tocsin.tickets.model import Actor, Source, Subject, SubjectType
from tocsin.tickets.store import TicketStore
from tocsin.tickets.writes import OpenRequest
from tocsin.tracker import Comment, OpenTicket, ReopenTicket, ResolveTicket, TicketDecision

log = structlog.get_logger("tocsin.monitor")

MAX_PER_SUBJECT = 16
OPEN_CHUNK = 1_000  # opens per store operation
RETRY_MIN, RETRY_MAX = 0.5, 5.0


@dataclass(frozen=True)
class Pending:
    key: SubjectKey
    name: str
    decision: TicketDecision
    decided_at: datetime  # wall clock, UTC: what the timeline says


class Outcome(Enum):
    APPLIED = "applied"
    OVERTAKEN = "overtaken"  # a person got there first: theirs stands
    DROPPED = "dropped"  # refused for a reason retrying cannot fix (logged)
    RETRY = "retry"  # the store could not take it now


# What the monitor hears back: the decision and, for an open, the seq the store gave it.
AppliedCallback = Callable[[Pending, Outcome, int | None], None]


class DecisionApplier:
    def __init__(
        self,
        store: TicketStore,
        on_applied: AppliedCallback,
        *,
        max_per_subject: int = MAX_PER_SUBJECT,
    ) -> None:
        self._store = store
        self._on_applied = on_applied
        self._max = max_per_subject
        self._lines: dict[SubjectKey, deque[Pending]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False
        self._busy: set[SubjectKey] = set()  # subjects whose head is with the store now
        self.coalesced = 0  # comments given up to keep memory bounded during a store outage

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def submit(self, pending: Pending) -> None:
        line = self._lines.get(pending.key)
        if line is None:
            line = self._lines[pending.key] = deque()
        line.append(pending)
        if len(line) > self._max:
            self._make_room(line)
        self._idle.clear()
        self._wake.set()

    def _make_room(self, line: deque[Pending]) -> None:
        # Never the head: it may be with the store now.
        for i in range(1, len(line)):
            if isinstance(line[i].decision, Comment):
                dropped = line[i]
                del line[i]
                self.coalesced += 1
                log.warning(
                    "store unavailable: a monitor comment was dropped to bound memory",
                    org=dropped.key.org,
                    subject=str(dropped.key),
                    reason=dropped.decision.reason.value,
                )
                return

    async def drain(self) -> None:
        """Wait until nothing is pending, or a round could not reach the store. Without a
        running `run` (a test, a tool), apply the rounds here."""
        if self._running:
            await self._idle.wait()
            return
        while self._lines and await self._round():
            pass

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("the decision applier is already running")
        self._running = True
        try:
            await self._loop()
        finally:
            self._running = False
            self._idle.set()

    async def _loop(self) -> None:
        """Send each subject's next decision as soon as its last one is written: the heads
        ready now go to the store together while earlier batches may still be in the writer,
        so a decision taken during a storm's transaction is in the next one, not the next
        round. After a refusal nothing new goes until the backoff has passed."""
        loop = asyncio.get_running_loop()
        backoff, retry_at = RETRY_MIN, float("-inf")
        batches: set[asyncio.Task[bool]] = set()
        try:
            while True:
                if loop.time() >= retry_at:
                    heads = [line[0] for key, line in self._lines.items() if key not in self._busy]
                    if heads:
                        self._busy.update(p.key for p in heads)
                        batches.add(asyncio.create_task(self._apply_heads(heads)))
                if not batches and not self._lines:
                    self._idle.set()
                self._wake.clear()
                waker = asyncio.create_task(self._wake.wait())
                timeout = None if retry_at <= loop.time() else retry_at - loop.time()
                try:
                    done, _ = await asyncio.wait(
                        {waker, *batches}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waker.cancel()
                for batch in done & batches:
                    batches.discard(batch)
                    if batch.result():
                        backoff = RETRY_MIN
                    else:
                        self._idle.set()  # nothing more will land until the store is back
                        retry_at = loop.time() + backoff
                        backoff = min(RETRY_MAX, backoff * 2)
        finally:
            for batch in batches:
                batch.cancel()
            await asyncio.gather(*batches, return_exceptions=True)

    async def _round(self) -> bool:
        """Apply the head of every subject's line; False when the store refused any."""
        return await self._apply_heads([line[0] for line in self._lines.values()])

    async def _apply_heads(self, heads: list[Pending]) -> bool:
        """Apply these heads of their lines; False when the store refused any. Opens go to
        the store together, a few statements for a thousand (a storm is mostly opens)."""
        try:
            opens = [p for p in heads if isinstance(p.decision, OpenTicket)]
            others = [p for p in heads if not isinstance(p.decision, OpenTicket)]
            chunks = [opens[i : i + OPEN_CHUNK] for i in range(0, len(opens), OPEN_CHUNK)]
            opened, applied = await asyncio.gather(
                asyncio.gather(*(self._open_many(chunk) for chunk in chunks)),
                asyncio.gather(*(self._apply(p) for p in others)),
            )
        finally:
            self._busy.difference_update(p.key for p in heads)
        ordered = [*opens, *others]
        outcomes = [*(o for chunk in opened for o in chunk), *applied]
        reachable = True
        for pending, (outcome, seq) in zip(ordered, outcomes, strict=True):
            if outcome is Outcome.RETRY:
                reachable = False
                continue
            line = self._lines[pending.key]
            line.popleft()
            if not line:
                del self._lines[pending.key]
            self._on_applied(pending, outcome, seq)
        return reachable

    async def _open_many(self, chunk: list[Pending]) -> list[tuple[Outcome, int | None]]:
        try:
            changes = await self._store.open_plain(
                [(_open_request(p), p.decided_at) for p in chunk]
            )
        except (StoreUnavailable, StoreClosed):
            return [(Outcome.RETRY, None)] * len(chunk)
        except Exception:  # one bad request must not hold up the rest: one at a time
            return list(await asyncio.gather(*(self._apply(p) for p in chunk)))
        return [(Outcome.APPLIED, change.ticket.seq) for change in changes]

    async def _apply(self, pending: Pending) -> tuple[Outcome, int | None]:
        key, decision, at = pending.key, pending.decision, pending.decided_at
        actor = Actor.health_monitor()
        try:
            if isinstance(decision, OpenTicket):
                change = await self._store.open(_open_request(pending), at=at)
                return Outcome.APPLIED, change.ticket.seq
            if isinstance(decision, ReopenTicket):
                await self._store.reopen(key.org, decision.seq, actor, decision.comment, at=at)
            elif isinstance(decision, ResolveTicket):
                await self._store.resolve(key.org, decision.seq, actor, decision.comment, at=at)
            else:
                await self._store.comment(key.org, decision.seq, actor, decision.body, at=at)
            return Outcome.APPLIED, None
        except (StoreUnavailable, StoreClosed):
            return Outcome.RETRY, None
        except IllegalTransition:
            return Outcome.OVERTAKEN, None
        except TicketError as exc:
            log.error(
                "monitor decision refused by the store",
                org=key.org,
                subject=str(key),
                reason=decision.reason.value,
                error=str(exc),
            )
            return Outcome.DROPPED, None
        except Exception:  # a bug must not stop every other subject's decisions
            log.exception(
                "monitor decision failed", org=key.org, subject=str(key), reason=decision.reason
            )
            return Outcome.DROPPED, None


def _open_request(pending: Pending) -> OpenRequest:
    decision, key = pending.decision, pending.key
    assert isinstance(decision, OpenTicket)
    subject = Subject(_subject_type(key), key.id, pending.name)
    return OpenRequest(
        key.org,
        Source.HEALTH_MONITOR,
        subject,
        decision.kind,
        decision.description,
        Actor.health_monitor(),
    )


def _subject_type(key: SubjectKey) -> SubjectType:
    try:
        return SubjectType(key.type)
    except ValueError:
        return SubjectType.OTHER
