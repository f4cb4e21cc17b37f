"""The delivery worker: fan out new triggers, claim due deliveries, send them, record outcomes,
keep each endpoint's health and its failing-endpoint ticket.

All state is in the database (see outbox.py); in memory are only the worker's own claims and
the outcomes of attempts that are over, until the next cycle records them. A cycle is one
transaction in the store's group-commit writer: record those outcomes, fan out new triggers,
claim what is due; it runs whenever an attempt ends (and every poll_interval). Each endpoint has
its own slots (`per_endpoint_concurrency`) within a global bound (`concurrency`), and every
attempt is its own task with its own timeout, so a slow or dead endpoint never holds up another.
Time comes from an injected clock and randomness from an injected function, so tests drive
retries without sleeping.

`run(stop)` is the daemon's loop; `pump()` delivers everything due now and returns, for tests
and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tocsin.db.health import classify
from tocsin.db.writer import StoreClosed, StoreUnavailable
from tocsin.delivery import health, ops, outbox, record
from tocsin.delivery.endpoints import DeliverySettings, Endpoint
from tocsin.delivery.outbox import Claimed, Slots
from tocsin.delivery.payload import build_body, signed_headers
from tocsin.delivery.record import Attempted, Recorded
from tocsin.delivery.schedule import RetryPolicy
from tocsin.delivery.transport import DeliveryError, Transport
from tocsin.tickets.errors import TicketError
from tocsin.tickets.model import Actor, Kind, Source, Subject, SubjectType
from tocsin.tickets.store import Clock, OpenRequest, TicketStore, utcnow

log = structlog.get_logger("tocsin.webhooks")

# How long an orderly stop waits for attempts in flight before abandoning (and releasing) them.
STOP_GRACE = 5.0
# The failing-endpoint tickets are checked after every health edge; while an endpoint fails,
# also every WATCH_EVERY seconds (its ticket and disable timers run); otherwise every IDLE_EVERY.
WATCH_EVERY = 1.0
IDLE_EVERY = 60.0
# Claims run this many times the concurrency ahead of the sends, so a slot that frees up is
# refilled at once instead of after the next transaction; the claimed-ahead wait their turn (and
# their lease covers that wait). 2 held a 5,000-ticket storm to ~450 webhooks/s, one small
# claim per transaction; 8 gave ~680/s (bench_storm). A crashed sender's claims are sent again
# after 8 x its timeout + lease.
PREFETCH = 8


@dataclass
class _Stats:
    delivered: int = 0
    failed_attempts: int = 0


class DeliveryWorker:
    def __init__(
        self,
        store: TicketStore,
        endpoints: Sequence[Endpoint],
        settings: DeliverySettings,
        *,
        clock: Clock = utcnow,
        rand: Callable[[], float] = random.random,
        transport: Transport | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._store = store
        self._endpoints = {e.name: e for e in endpoints}
        self._settings = settings
        self._clock = clock
        self._rand = rand
        self._transport = transport or Transport(limit=settings.concurrency, clock=clock)
        # Claimed and not yet over, per endpoint; of those, sending at most per_endpoint_
        # concurrency per endpoint and concurrency in all (the semaphores).
        self._claimed = dict.fromkeys(self._endpoints, 0)
        self._gates = {
            name: asyncio.Semaphore(settings.per_endpoint_concurrency) for name in self._endpoints
        }
        self._sending = asyncio.Semaphore(settings.concurrency)
        self._attempts: dict[asyncio.Task[None], Claimed] = {}
        # Attempts that are over, waiting for the next cycle to record them.
        self._finished: list[tuple[Attempted, float]] = []
        self._wake = asyncio.Event()
        self._prepared = False
        self._sweep_due = True
        self._last_sweep = float("-inf")
        self._rotation = 0
        self._stop_grace = stop_grace
        self._just_disabled: set[str] = set()
        self._just_recovered: set[str] = set(self._endpoints)  # the first look, after a start
        self._watching = True
        self.stats = _Stats()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then finish what is in flight (or give it back)."""
        poll = self._settings.poll_interval.total_seconds()
        stopper = asyncio.create_task(stop.wait(), name="tocsin-webhooks-stop")
        stopper.add_done_callback(lambda _: self._wake.set())
        log.info("webhook delivery started", endpoints=sorted(self._endpoints))
        cannot_reach = ""
        unwatch = self._store.on_triggers(self.wake)  # this process's own tickets
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self._cycle()
                    if cannot_reach:
                        log.info("webhook delivery reaches the store again")
                        cannot_reach = ""
                except StoreClosed:
                    break
                except (StoreUnavailable, SQLAlchemyError, OSError) as exc:
                    cause = (
                        str(exc)
                        if isinstance(exc, StoreUnavailable)
                        else classify(exc, self._store.database.sqlite_path).cause
                    )
                    if cause != cannot_reach:  # once per cause, not every poll
                        log.warning("webhook delivery cannot reach the store", cause=cause)
                        cannot_reach = cause
                except Exception:  # a bug must not stop delivery for good, nor the daemon
                    log.exception("webhook delivery cycle failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await self._wake.wait()
        finally:
            unwatch()
            stopper.cancel()
            await self.close()
            log.info("webhook delivery stopped")

    def wake(self) -> None:
        """New triggers are in the outbox: look now, not at the next poll."""
        self._wake.set()

    async def pump(self) -> int:
        """Fan out, attempt everything due now (in order, waiting for each wave), check the
        endpoints' tickets, and again while that fired triggers. Returns the attempts made."""
        attempts = 0
        while True:
            started = await self._cycle(sweep=False)
            if started:
                attempts += len(started)
                await asyncio.gather(*started, return_exceptions=True)
            elif not self._finished and not await self.sweep():
                return attempts

    async def close(self) -> None:
        """Wait up to `stop_grace` seconds for attempts in flight, abandon the rest (their
        deliveries go back to pending, or wait out their lease if the store is gone), close the
        HTTP session."""
        if self._attempts:
            _, late = await asyncio.wait(set(self._attempts), timeout=self._stop_grace)
            abandoned = [self._attempts[t] for t in late]
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if abandoned:
                log.info("webhook attempts abandoned at stop", count=len(abandoned))
        else:
            abandoned = []
        finished, self._finished = self._finished, []
        if finished or abandoned:
            policy, disable_after = self._settings.policy, self._settings.disable_after

            def flush(conn: Connection) -> list[Recorded]:
                record.release(conn, abandoned)
                return record.record(conn, [a for a, _ in finished], policy, disable_after)

            with contextlib.suppress(StoreClosed, StoreUnavailable):
                self._after_recording(finished, await self._store.writer.run(flush))
        await self._transport.close()

    # -- one cycle ---------------------------------------------------------------------------

    async def _prepare(self) -> None:
        if not self._prepared:
            names = sorted(self._endpoints)
            now = self._clock()
            await self._store.writer.run(lambda c: outbox.ensure_endpoints(c, names, now))
            self._prepared = True

    async def _cycle(self, *, sweep: bool = True) -> list[asyncio.Task[None]]:
        """One transaction: record the attempts that are over, fan out new triggers, claim
        what is due for the free slots; then start the claimed attempts."""
        await self._prepare()
        endpoints = list(self._endpoints.values())
        started: list[asyncio.Task[None]] = []
        while True:  # until fan-out has caught up (1,000 triggers a transaction)
            finished, self._finished = self._finished, []
            operation = functools.partial(
                _cycle_op,
                finished=[attempted for attempted, _ in finished],
                policy=self._settings.policy,
                disable_after=self._settings.disable_after,
                endpoints=endpoints,
                slots=self._free_slots(),
                free=self._settings.concurrency * PREFETCH - sum(self._claimed.values()),
                now=self._clock(),
            )
            try:
                recorded, fanned, claimed = await self._store.writer.run(operation)
            except BaseException:
                self._finished[:0] = finished  # recorded by a later cycle (else leases expire)
                raise
            self._after_recording(finished, recorded)
            started += [self._start(c) for c in claimed]
            if fanned.triggers < outbox.FAN_OUT_BATCH:
                break
        since = time.monotonic() - self._last_sweep
        if sweep and (self._sweep_due or since >= (WATCH_EVERY if self._watching else IDLE_EVERY)):
            await self.sweep()
        return started

    def _free_slots(self) -> dict[str, Slots]:
        names = list(self._endpoints)
        if not names:
            return {}
        # Rotate who is asked first, so one busy endpoint cannot take all the global slots.
        self._rotation = (self._rotation + 1) % len(names)
        ordered = names[self._rotation :] + names[: self._rotation]
        limit = self._settings.per_endpoint_concurrency * PREFETCH
        # A claim may wait behind one full round of attempts before its own: lease for both.
        return {
            n: Slots(
                self._claimed[n],
                limit,
                self._endpoints[n].timeout * PREFETCH + self._settings.lease,
            )
            for n in ordered
            if self._claimed[n] < limit
        }

    def _start(self, claimed: Claimed) -> asyncio.Task[None]:
        self._claimed[claimed.endpoint] += 1
        task = asyncio.create_task(self._attempt(claimed), name=f"webhook-{claimed.msg_id}")
        self._attempts[task] = claimed
        task.add_done_callback(self._attempt_done)
        return task

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        claimed = self._attempts.pop(task)
        self._claimed[claimed.endpoint] -= 1
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "webhook attempt crashed",
                endpoint=claimed.endpoint,
                delivery=claimed.id,
                error=repr(task.exception()),
            )

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, claimed: Claimed) -> None:
        """Send one claimed delivery when its endpoint has a free slot; the outcome is recorded
        by the next cycle. The claim ends with the HTTP exchange: the record and any later claim
        share a transaction, in that order, so the ticket's next delivery still waits for this
        one."""
        endpoint = self._endpoints[claimed.endpoint]
        async with self._gates[claimed.endpoint], self._sending:
            started = time.perf_counter()
            attempted = await self._send(endpoint, claimed)
        self._finished.append((attempted, round((time.perf_counter() - started) * 1000, 1)))

    def _after_recording(
        self, finished: list[tuple[Attempted, float]], recorded: list[Recorded]
    ) -> None:
        for (attempted, latency_ms), outcome in zip(finished, recorded, strict=True):
            claimed = attempted.claimed
            self._log(claimed, attempted, outcome, latency_ms)
            if outcome.disabled:
                self._just_disabled.add(claimed.endpoint)
            if outcome.recovered:
                self._just_recovered.add(claimed.endpoint)
            if outcome.became_failing or outcome.recovered or outcome.disabled:
                self._sweep_due = True
                self._wake.set()

    async def _send(self, endpoint: Endpoint, claimed: Claimed) -> Attempted:
        now = self._clock()
        try:
            body = build_body(claimed.trigger, self._settings.base_url, endpoint.format)
        except (KeyError, TypeError, ValueError) as exc:  # a trigger row we cannot read
            error = f"cannot build the body: {type(exc).__name__}"
            return Attempted(claimed, now, None, error, retry_at=None)
        headers = signed_headers(endpoint.keys, claimed.msg_id, now, body, endpoint.headers)
        try:
            answer = await self._transport.post(
                endpoint.url, body, headers, endpoint.timeout.total_seconds()
            )
        except DeliveryError as exc:
            return self._failure(claimed, exc)
        return Attempted(claimed, self._clock(), answer.status)

    def _failure(self, claimed: Claimed, exc: DeliveryError) -> Attempted:
        at = self._clock()
        delay: timedelta | None = None
        if not exc.permanent:
            delay = self._settings.policy.delay(claimed.attempt, self._rand())
            if delay is not None and exc.retry_after is not None:
                delay = exc.retry_after
        return Attempted(
            claimed,
            at,
            exc.status,
            exc.message,
            retry_at=at + delay if delay is not None else None,
            gone=exc.status == 410,
            retry_after=exc.retry_after,
            unit=self._rand(),
        )

    def _log(
        self, claimed: Claimed, attempted: Attempted, recorded: Recorded, latency_ms: float
    ) -> None:
        fields = {
            "endpoint": claimed.endpoint,
            "trigger": claimed.trigger.type,
            "org": claimed.org,
            "ticket_seq": claimed.ticket_seq,
            "delivery": claimed.id,
            "webhook_id": claimed.msg_id,
            "status": attempted.status,
            "attempt": claimed.attempt,
            "latency_ms": latency_ms,
        }
        if not recorded.applied:
            fields["note"] = "the claim had expired; the newer attempt's outcome stands"
        if attempted.delivered:
            self.stats.delivered += 1
            log.info("webhook delivered", **fields)
        else:
            self.stats.failed_attempts += 1
            retry_at = attempted.retry_at.isoformat() if attempted.retry_at else None
            level = log.error if recorded.final else log.warning
            level(
                "webhook delivery failed" if recorded.final else "webhook attempt failed",
                error=attempted.error,
                retry_at=retry_at,
                **fields,
            )
        if recorded.became_failing:
            log.warning(
                "webhook endpoint failing", endpoint=claimed.endpoint, error=attempted.error
            )
        if recorded.recovered:
            log.info("webhook endpoint recovered", endpoint=claimed.endpoint)
        if recorded.disabled:
            log.error(
                "webhook endpoint disabled", endpoint=claimed.endpoint, reason=recorded.disabled
            )

    # -- endpoint health tickets -------------------------------------------------------------

    async def sweep(self) -> int:
        """Open, reopen or resolve each endpoint's webhook_endpoint_failing ticket; return how
        many tickets changed."""
        self._sweep_due = False
        self._last_sweep = time.monotonic()
        if not self._endpoints:
            return 0
        engine = self._store.database.read
        names = sorted(self._endpoints)
        now = self._clock()
        after = self._settings.disable_after
        for name in await self._store.writer.run(
            lambda c: record.disable_overdue(c, names, now, after)
        ):
            log.error("webhook endpoint disabled", endpoint=name, reason="failing too long")
            self._just_disabled.add(name)
        just_disabled, self._just_disabled = self._just_disabled, set()
        recovered, self._just_recovered = self._just_recovered, set()
        listed = await ops.endpoint_health(engine, names, with_counts=False)
        healths = {h.name: h for h in listed}
        self._watching = any(h.failing_since is not None for h in listed)
        orgs = sorted({org for e in self._endpoints.values() for org in e.orgs})
        marks = await ops.failing_tickets(engine, orgs, names)
        changed = 0
        for name in names:
            for org in sorted(self._endpoints[name].orgs):
                decision = health.decide(
                    org,
                    healths[name],
                    marks.get((org, name)),
                    now,
                    ticket_after=self._settings.ticket_after,
                    reopen_window=self._settings.reopen_window,
                    just_disabled=name in just_disabled,
                    recovered=name in recovered,
                )
                if decision is not None:
                    changed += await self._apply(decision)
        return changed

    async def _apply(self, decision: health.Decision) -> int:
        actor = Actor.health_monitor()
        try:
            if decision.reason is health.Reason.OPEN:
                change = await self._store.open(
                    OpenRequest(
                        org=decision.org,
                        source=Source.HEALTH_MONITOR,
                        subject=Subject(
                            SubjectType.INTEGRATION,
                            decision.endpoint,
                            f"Webhook {decision.endpoint}",
                        ),
                        kind=Kind.WEBHOOK_ENDPOINT_FAILING.value,
                        description=decision.text,
                        actor=actor,
                    )
                )
                seq = change.ticket.seq
            elif decision.seq is not None and decision.reason is health.Reason.DISABLED_NOTE:
                change = await self._store.comment(decision.org, decision.seq, actor, decision.text)
                seq = change.ticket.seq
            elif decision.seq is not None and decision.reason is health.Reason.REOPEN_IN_WINDOW:
                seq = (
                    await self._store.reopen(decision.org, decision.seq, actor, decision.text)
                ).ticket.seq
            elif decision.seq is not None:
                seq = (
                    await self._store.resolve(decision.org, decision.seq, actor, decision.text)
                ).ticket.seq
            else:
                return 0
        except (TicketError, StoreUnavailable) as exc:  # a person got there first, or no store
            if decision.reason is health.Reason.AUTO_RESOLVE:
                self._just_recovered.add(decision.endpoint)  # try again at the next look
            log.warning(
                "webhook endpoint ticket not updated",
                endpoint=decision.endpoint,
                org=decision.org,
                reason=decision.reason.value,
                error=str(exc),
            )
            return 0
        log.info(
            "webhook endpoint ticket",
            endpoint=decision.endpoint,
            org=decision.org,
            reason=decision.reason.value,
            ticket_seq=seq,
        )
        return 1


def _cycle_op(
    conn: Connection,
    *,
    finished: Sequence[Attempted],
    policy: RetryPolicy,
    disable_after: timedelta,
    endpoints: Sequence[Endpoint],
    slots: dict[str, Slots],
    free: int,
    now: datetime,
) -> tuple[list[Recorded], outbox.FanOut, list[Claimed]]:
    """A cycle's writes, in one transaction and this order: outcomes, fan-out, claims."""
    recorded = record.record(conn, finished, policy, disable_after)
    try:
        with conn.begin_nested():
            fanned = outbox.fan_out(conn, endpoints, now)
    except outbox.CursorMoved:  # another instance fanned these out; ours was rolled back
        fanned = outbox.FanOut(0, 0)
    claimed = outbox.claim(conn, slots, free, now) if slots and free > 0 else []
    return recorded, fanned, claimed
