"""The monitor's wiring of tracker and store, against a real SQLite store, with fake clocks:
observations in, tickets (and their timelines) out; restarts; people's actions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from tocsin.db import schema
from tocsin.monitor import states
from tocsin.monitor.applier import Pending
from tocsin.monitor.runtime import (
    BURST_CHANGES,
    BURST_QUIET,
    EXPIRE_SLICE,
    SAVE_BATCH,
    SAVE_DEFER_SECONDS,
    SAVE_EVERY_SECONDS,
    HealthMonitor,
)
from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.tickets.model import Actor, ActorType, EventType, Source, State
from tocsin.tickets.store import TicketStore
from tocsin.tracker import Comment, Reason, Windows

pytestmark = pytest.mark.engines

CAM = SubjectKey("acme", "device", "cam-1")
WINDOWS = Windows(
    debounce=timedelta(minutes=2),
    recovery=timedelta(minutes=1),
    reopen_window=timedelta(hours=24),
)
PERSON = Actor(ActorType.USER, "dana")


@dataclass
class Clocks:
    mono: float = 1000.0
    wall: datetime = field(default_factory=lambda: datetime(2026, 5, 1, 8, 0, tzinfo=UTC))

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


def up() -> Observation:
    return Observation(Health.HEALTHY, "HTTP 200 in 12 ms", latency_ms=12.0)


def down(detail: str = "HTTP 503 in 40 ms", error_class: str = "http_status") -> Observation:
    return Observation(
        Health.UNHEALTHY, detail, kind_hint="device_offline", error_class=error_class
    )


async def new_monitor(store: TicketStore, clocks: Clocks) -> HealthMonitor:
    monitor = HealthMonitor(store, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    monitor.configure(CAM, "Lobby camera", WINDOWS)
    await monitor.restore()
    return monitor


async def run_for(monitor: HealthMonitor, clocks: Clocks, seconds: int, obs: Observation) -> None:
    """Probe every 10 s for `seconds`, ticking every 5 s (the daemon ticks each second; the
    windows here are minutes long)."""
    for second in range(0, seconds, 5):
        if second % 10 == 0:
            await monitor.handle_observation(CAM, obs)
        clocks.advance(5)
        await monitor.tick()


async def monitor_tickets(store: TicketStore) -> list[int]:
    page = await store.list_tickets("acme")
    return sorted(t.seq for t in page.tickets if t.source is Source.HEALTH_MONITOR)


async def test_it_opens_one_ticket_after_the_debounce_and_resolves_it_after_recovery(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 100, down())
    assert await monitor_tickets(tickets) == []  # still inside the 2 min debounce
    await run_for(monitor, clocks, 60, down())
    assert await monitor_tickets(tickets) == [1]
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.OPEN
    assert ticket.kind == "device_offline"
    assert ticket.subject.name == "Lobby camera"
    assert "HTTP 503" in ticket.description
    assert timeline[0].actor == Actor.health_monitor()
    await run_for(monitor, clocks, 90, up())
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.RESOLVED
    assert timeline[-1].type is EventType.RESOLVED
    assert timeline[-1].actor == Actor.health_monitor()
    assert "recovered" in timeline[-1].payload["comment"].lower()


async def test_a_healthy_probe_inside_the_debounce_opens_nothing(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    for _ in range(10):
        await run_for(monitor, clocks, 60, down())
        await run_for(monitor, clocks, 10, up())
    assert await monitor_tickets(tickets) == []


async def test_it_reopens_inside_the_window_and_opens_a_new_ticket_after_it(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await run_for(monitor, clocks, 90, up())
    clocks.advance(3600)  # an hour later, well inside the reopen window
    await run_for(monitor, clocks, 150, down())
    assert await monitor_tickets(tickets) == [1]
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.OPEN
    assert [e.type for e in timeline if e.type is not EventType.COMMENT] == [
        EventType.OPENED,
        EventType.RESOLVED,
        EventType.REOPENED,
    ]
    await run_for(monitor, clocks, 90, up())
    clocks.advance(25 * 3600)  # past the 24 h reopen window
    await run_for(monitor, clocks, 150, down())
    assert await monitor_tickets(tickets) == [1, 2]
    assert (await tickets.get("acme", 2))[0].state is State.OPEN


async def test_a_restart_mid_outage_opens_no_duplicate_and_resolves_nothing_early(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await monitor.save(force=True)
    assert await monitor_tickets(tickets) == [1]

    clocks.mono = 5.0  # a new process: another monotonic origin
    clocks.advance(30)
    restarted = await new_monitor(tickets, clocks)
    rows = await states.load(tickets.database.read)
    assert rows[0].ticket_seq == 1
    assert restarted.subjects()[CAM].state.health.value == "unknown"
    await run_for(restarted, clocks, 150, down())
    assert await monitor_tickets(tickets) == [1]  # no duplicate
    await run_for(restarted, clocks, 30, up())
    assert (await tickets.get("acme", 1))[0].state is State.OPEN  # not before the recovery window
    await run_for(restarted, clocks, 60, up())
    assert (await tickets.get("acme", 1))[0].state is State.RESOLVED


async def test_the_save_at_stop_writes_every_change_a_batch_at_a_time(
    tickets: TicketStore, clocks: Clocks
) -> None:
    """At stop every changed subject is saved, SAVE_BATCH rows a write: 100,000 rows built at
    once took 370 MiB more memory for a moment, the daemon's peak."""
    monitor = HealthMonitor(tickets, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    keys = [SubjectKey("acme", "device", f"d-{n}") for n in range(2 * SAVE_BATCH + 1)]
    for key in keys:
        monitor.configure(key, key.id, WINDOWS)
    await monitor.restore()
    for key in keys:
        monitor.observe(key, up())
    sizes: list[int] = []
    run = tickets.writer.run

    async def counted(operation: Any) -> Any:
        def measured(conn: Any) -> Any:
            before = conn.execute(select(func.count()).select_from(schema.subject_states))
            result = operation(conn)
            after = conn.execute(select(func.count()).select_from(schema.subject_states))
            sizes.append(after.scalar() - before.scalar())
            return result

        return await run(measured)

    tickets.writer.run = counted  # type: ignore[method-assign]
    await monitor.save(force=True)
    assert sizes == [SAVE_BATCH, SAVE_BATCH, 1]
    rows = await states.load(tickets.database.read)
    assert {row.key for row in rows} == set(keys)


async def test_a_pending_reopen_survives_a_restart(tickets: TicketStore, clocks: Clocks) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await run_for(monitor, clocks, 90, up())
    await monitor.save(force=True)
    assert (await tickets.get("acme", 1))[0].state is State.RESOLVED
    clocks.mono = 1.0
    clocks.advance(3600)
    restarted = await new_monitor(tickets, clocks)
    await run_for(restarted, clocks, 150, down())
    assert await monitor_tickets(tickets) == [1]
    assert (await tickets.get("acme", 1))[0].state is State.OPEN


async def test_a_wall_clock_jump_opens_and_resolves_nothing(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 60, down())
    clocks.wall += timedelta(days=3)  # NTP step: only the wall clock moves
    await monitor.handle_observation(CAM, down())
    await monitor.tick()
    assert await monitor_tickets(tickets) == []


async def test_a_person_resolving_a_failing_subject_gets_it_reopened(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await tickets.resolve("acme", 1, PERSON, "rebooted it")
    await run_for(monitor, clocks, 60, down())
    assert (await tickets.get("acme", 1))[0].state is State.RESOLVED  # debounce again first
    await run_for(monitor, clocks, 90, down())
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.OPEN
    assert timeline[-1].type is EventType.REOPENED or any(
        e.type is EventType.REOPENED and e.actor == Actor.health_monitor() for e in timeline
    )
    assert await monitor_tickets(tickets) == [1]


async def test_a_ticket_a_person_reopened_is_theirs_to_resolve(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await run_for(monitor, clocks, 90, up())
    await tickets.reopen("acme", 1, PERSON, "still flickering")
    await run_for(monitor, clocks, 30, down())
    await run_for(monitor, clocks, 300, up())
    ticket, timeline = await tickets.get("acme", 1)
    assert ticket.state is State.OPEN
    assert timeline[-1].type is EventType.COMMENT
    assert timeline[-1].actor == Actor.health_monitor()
    assert "recovered" in timeline[-1].payload["body"].lower()


async def test_a_person_resolving_while_the_daemon_was_down_is_seen_at_start(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await monitor.save(force=True)
    await tickets.resolve("acme", 1, PERSON)
    clocks.mono = 1.0
    restarted = await new_monitor(tickets, clocks)
    ticket_state = restarted.subjects()[CAM].state.ticket
    assert ticket_state is not None
    assert not ticket_state.open
    await run_for(restarted, clocks, 150, down())
    assert await monitor_tickets(tickets) == [1]  # reopened, not duplicated
    assert (await tickets.get("acme", 1))[0].state is State.OPEN


async def test_an_open_monitor_ticket_with_no_saved_state_is_adopted(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await tickets.writer.run(lambda conn: states.forget(conn, [CAM]))  # state lost
    clocks.mono = 1.0
    restarted = await new_monitor(tickets, clocks)
    await run_for(restarted, clocks, 150, down())
    await run_for(restarted, clocks, 90, up())
    assert await monitor_tickets(tickets) == [1]
    assert (await tickets.get("acme", 1))[0].state is State.RESOLVED


async def test_a_change_in_the_failures_nature_is_a_comment_not_a_new_ticket(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 150, down())
    await run_for(monitor, clocks, 30, down("timeout after 5 s", "timeout"))
    _, timeline = await tickets.get("acme", 1)
    assert await monitor_tickets(tickets) == [1]
    comments = [e for e in timeline if e.type is EventType.COMMENT]
    assert len(comments) == 1
    assert "timeout" in comments[0].payload["body"]


async def test_an_unknown_observation_opens_nothing(tickets: TicketStore, clocks: Clocks) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 60, down())
    await run_for(monitor, clocks, 600, Observation(Health.UNKNOWN, "broker unreachable"))
    assert await monitor_tickets(tickets) == []
    rows = await states.load(tickets.database.read)
    assert rows[0].health == "unknown"


async def test_a_failure_counts_from_when_the_probe_began_looking(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    began = clocks.mono
    clocks.advance(2)  # the probe's timeout ran out two seconds after it sent its request
    await monitor.handle_observation(CAM, down("no answer within 2 s", "timeout"), at=began)
    clocks.advance(118)  # 120 s after the request: the 2 min debounce is over
    monitor.expire_windows()
    await monitor.applier.drain()
    assert await monitor_tickets(tickets) == [1]


async def test_back_dating_never_goes_before_the_subjects_last_event(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await monitor.handle_observation(CAM, up())
    healthy_at = clocks.mono
    clocks.advance(5)
    await monitor.handle_observation(CAM, down(), at=healthy_at - 60)
    state = monitor.subjects()[CAM].state
    assert state.since is not None
    assert state.since.mono == healthy_at  # clamped to the last event, not 60 s earlier


async def test_the_monitor_loop_stops_when_cancelled_even_while_observations_pour_in(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    running = asyncio.create_task(monitor.run())

    async def flood() -> None:
        # 50 observations a millisecond. Not a busy loop with sleep(0): that holds the GIL but
        # for Python's switch interval (5 ms) at a time, so the writer thread, which needs it
        # back after every SQLite call, took 5-30 s for the stop's one-row save when this test
        # ran alone - a starved thread, not a swallowed cancellation.
        while True:
            for _ in range(50):
                monitor.observe(CAM, up())
            await asyncio.sleep(0.001)

    flooding = asyncio.create_task(flood())
    try:
        for _ in range(20):  # each cancel lands while the queue is never empty
            await asyncio.sleep(0.01)
            running.cancel()
            # The stop's final state save waits for an fsync: half a second and more when the
            # disk is busy (seen in CI). A swallowed cancellation never ends: 10 s tells them apart.
            done, _ = await asyncio.wait({running}, timeout=10.0)
            assert done, "the monitor's loop swallowed a cancellation"
            running = asyncio.create_task(monitor.run())
    finally:
        flooding.cancel()
        running.cancel()
        # Bounded: a loop that swallows the cancel must fail this test, not hang the suite.
        await asyncio.wait({flooding, running}, timeout=10.0)


async def test_another_healthy_result_is_saved_rarely_but_a_change_of_health_at_once(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await monitor.handle_observation(CAM, up())
    await monitor.save(force=True)
    clocks.advance(10)
    await monitor.handle_observation(CAM, up())  # nothing new but the result
    tracked = monitor.subjects()[CAM]
    assert (tracked.dirty, tracked.stale) == (False, True)
    await monitor.save()
    assert tracked.stale  # not yet: a restart would lose nothing worth a write
    await monitor.handle_observation(CAM, down())
    assert tracked.dirty
    clocks.advance(3)
    await monitor.save()
    assert not tracked.dirty
    assert not tracked.stale
    rows = await states.load(tickets.database.read)
    assert rows[0].health == "failing"


async def test_state_saves_wait_while_ticket_changes_wait_for_the_store(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await monitor.handle_observation(CAM, up())
    await monitor.save(force=True)
    monitor.observe(CAM, down())  # dirty; the applier is not running, so nothing is written
    tracked = monitor.subjects()[CAM]
    decision = Comment(1, "a comment the store has not taken yet", Reason.DETAIL_CHANGED)
    monitor.applier.submit(Pending(CAM, "Lobby camera", decision, clocks.wall))
    clocks.advance(SAVE_EVERY_SECONDS + 1)
    await monitor.save()
    assert tracked.dirty  # held back: the ticket change goes first
    clocks.advance(SAVE_DEFER_SECONDS)
    await monitor.save()
    assert not tracked.dirty  # but not for ever
    rows = await states.load(tickets.database.read)
    assert rows[0].health == "failing"


async def test_state_saves_wait_while_a_burst_of_changes_is_arriving(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    keys = [SubjectKey("acme", "device", f"d{i}") for i in range(BURST_CHANGES)]
    for key in keys:
        monitor.configure(key, key.id, monitor.default_windows)
        monitor.observe(key, up())
    await monitor.save(force=True)

    def dirty() -> list[bool]:
        subjects = monitor.subjects()
        return [subjects[key].dirty for key in keys]

    clocks.advance(SAVE_EVERY_SECONDS + 1)
    for key in keys[:-1]:
        monitor.observe(key, down())
    await monitor.save()  # one short of a burst: saved as usual
    assert not any(dirty())
    clocks.advance(SAVE_EVERY_SECONDS + 1)
    for key in keys:
        monitor.observe(key, down() if key == keys[-1] else up())
    await monitor.save()  # a burst, its latest change just now: held back
    assert all(dirty())
    clocks.advance(BURST_QUIET)
    await monitor.save()  # the burst is over: saved
    assert not any(dirty())
    for key in keys:
        monitor.observe(key, up())
    await monitor.save(force=True)
    for key in keys:
        monitor.observe(key, down())
    clocks.advance(BURST_QUIET + SAVE_EVERY_SECONDS)
    await monitor.save()  # quiet now, but their debounces are running: still held back
    assert all(dirty())
    for _ in range(int(SAVE_DEFER_SECONDS)):  # a burst that never ends...
        clocks.advance(1)
        monitor.observe(keys[0], up() if clocks.mono % 2 else down())
        await monitor.save()
    assert not any(dirty()[1:])  # ...is saved all the same
    rows = await states.load(tickets.database.read)
    assert {row.health for row in rows if row.key in keys[1:]} == {"failing"}


async def test_a_reload_saves_a_subject_again_only_when_its_name_changed(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await monitor.handle_observation(CAM, up())
    await monitor.save(force=True)
    tracked = monitor.subjects()[CAM]
    longer = Windows(debounce=timedelta(minutes=5), recovery=timedelta(minutes=1))
    monitor.configure(CAM, "Lobby camera", longer)  # windows are not in the saved row
    assert tracked.windows is longer
    assert not tracked.dirty
    monitor.configure(CAM, "Lobby camera (north)", longer)
    assert tracked.dirty
    await monitor.save(force=True)
    rows = await states.load(tickets.database.read)
    assert rows[0].name == "Lobby camera (north)"


async def test_a_slow_expiry_pass_is_followed_at_once_by_one_for_windows_ended_meanwhile(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    first, second = SubjectKey("acme", "device", "a"), SubjectKey("acme", "device", "b")
    for key in (first, second):
        monitor.configure(key, key.id, WINDOWS)
        monitor.observe(key, up())
    monitor.observe(first, down())
    clocks.advance(0.1)
    monitor.observe(second, down())  # its debounce ends 0.1 s after the first's
    clocks.advance(WINDOWS.debounce.total_seconds() - 0.1)  # the first one ends as we look

    def slow() -> float:  # each reading 60 ms after the last: a pass takes that long
        clocks.advance(0.06)
        return clocks.mono

    monitor._monotonic = slow
    monitor.expire_windows()
    opened = [key for key, line in monitor.applier._lines.items() if line]
    assert opened == [first, second]  # the second in the pass right after, not 0.2 s later


async def test_a_big_expiry_pass_lets_the_loop_turn_between_slices(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    keys = [SubjectKey("acme", "device", f"d{i}") for i in range(2 * EXPIRE_SLICE + 1)]
    for key in keys:
        monitor.configure(key, key.id, WINDOWS)
        monitor.observe(key, up())
        monitor.observe(key, down())
    clocks.advance(WINDOWS.debounce.total_seconds())
    seen: list[int] = []  # decisions taken, each time another task got to run

    async def watch() -> None:
        while True:
            seen.append(len(monitor.applier))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await monitor._expire_windows_yielding()
    watcher.cancel()
    assert len(monitor.applier) == len(keys)  # every debounce ended: an open each
    assert EXPIRE_SLICE in seen  # the loop turned between the slices
    assert 2 * EXPIRE_SLICE in seen
