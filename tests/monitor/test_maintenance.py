"""Maintenance windows in the monitor's wiring, against a real SQLite store with fake clocks: a
failure inside a window sends nothing; one still going at the end opens its ticket a debounce
after it; a ticket already open stays open and resolves; windows added at run time (in the
store, as the API and CLI add them) hold at once and survive a restart; recurring windows
follow their cron schedule; a space's window covers its devices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.monitor.test_parents import run_for, tickets_by_subject
from tests.monitor.test_runtime import WINDOWS, Clocks, down, up
from tocsin.api.subjects import group_tickets, no_ticket_because
from tocsin.monitor import maintenance_store
from tocsin.monitor.maintenance import Subject, Target, Window
from tocsin.monitor.runtime import HealthMonitor
from tocsin.probes.observation import Observation, SubjectKey
from tocsin.tickets.model import State
from tocsin.tickets.store import TicketStore
from tocsin.tracker import SubjectHealth

CAM = SubjectKey("acme", "device", "cam-1")
DOOR = SubjectKey("acme", "device", "door-1")
START = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)  # the Clocks' wall clock at the start


def window(minutes: tuple[float, float], **target: object) -> Window:
    """A one-off window from START + minutes[0] to START + minutes[1]."""
    return Window(
        id="config-1",
        org="acme",
        target=Target(**target),  # type: ignore[arg-type]
        reason="firmware upgrade",
        start=START + timedelta(minutes=minutes[0]),
        end=START + timedelta(minutes=minutes[1]),
        source="config",
    )


async def new_monitor(store: TicketStore, clocks: Clocks, *windows: Window) -> HealthMonitor:
    monitor = HealthMonitor(store, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    for key in (CAM, DOOR):
        monitor.configure(key, key.id, WINDOWS)
    subjects = [Subject(CAM, "lobby", {"rack": "A3"}), Subject(DOOR, None, {})]
    monitor.set_maintenance(subjects, windows)
    await monitor.restore()
    return monitor


def why(monitor: HealthMonitor, key: SubjectKey) -> str | None:
    rows = monitor.rows("acme")
    row = next(r for r in rows if r.key == key)
    return no_ticket_because(row, group_tickets(rows))


async def test_a_failure_inside_a_window_sends_nothing(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks, window((0, 10), subject="cam-1"))
    seen: dict[SubjectKey, Observation] = {CAM: up(), DOOR: up()}
    await run_for(monitor, clocks, 60, seen)
    seen.update({CAM: down(), DOOR: down()})
    await run_for(monitor, clocks, 240, seen)  # both past their debounce
    assert list(await tickets_by_subject(tickets)) == ["door-1"]  # not the camera
    assert monitor.subjects()[CAM].state.health is SubjectHealth.UNREACHABLE
    assert why(monitor, CAM) == "maintenance until 2026-05-01T08:10:00.000Z"
    row = next(r for r in monitor.rows("acme") if r.key == CAM)
    assert row.maintenance_until == START + timedelta(minutes=10)
    seen[CAM] = up()
    await run_for(monitor, clocks, 600, seen)  # back inside the window, then past its end
    assert list(await tickets_by_subject(tickets)) == ["door-1"]
    assert monitor.subjects()[CAM].state.held_by is None
    assert next(r for r in monitor.rows("acme") if r.key == CAM).maintenance_until is None


async def test_still_down_at_the_end_it_opens_a_debounce_after(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks, window((0, 10), labels={"rack": "A3"}))
    seen: dict[SubjectKey, Observation] = {CAM: up(), DOOR: up()}
    await run_for(monitor, clocks, 120, seen)
    seen[CAM] = down()
    await run_for(monitor, clocks, 480, seen)  # to 08:10, the end
    assert await tickets_by_subject(tickets) == {}
    await run_for(monitor, clocks, 100, seen)  # 08:11:40: within the debounce from the end
    assert await tickets_by_subject(tickets) == {}
    await run_for(monitor, clocks, 40, seen)  # 08:12:20
    assert list(await tickets_by_subject(tickets)) == ["cam-1"]


async def test_a_ticket_open_before_the_window_stays_open_and_resolves(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks, window((5, 30), space="lobby"))
    seen: dict[SubjectKey, Observation] = {CAM: up(), DOOR: up()}
    await run_for(monitor, clocks, 30, seen)
    seen[CAM] = down()
    await run_for(monitor, clocks, 240, seen)  # opened at ~08:02:30, before the window
    [seq] = (await tickets_by_subject(tickets))["cam-1"]
    await run_for(monitor, clocks, 300, seen)  # into the window
    assert monitor.subjects()[CAM].state.held_by == "maintenance/config-1"
    assert (await tickets.get("acme", seq))[0].state is State.OPEN
    seen[CAM] = up()
    await run_for(monitor, clocks, 120, seen)
    assert (await tickets.get("acme", seq))[0].state is State.RESOLVED  # not held back


async def test_a_window_added_at_run_time_holds_at_once_and_survives_a_restart(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    seen: dict[SubjectKey, Observation] = {CAM: up(), DOOR: up()}
    await run_for(monitor, clocks, 60, seen)
    added = Window(
        id="",
        org="acme",
        target=Target(subject="cam-1"),
        reason="cabling",
        start=clocks.wall,
        end=clocks.wall + timedelta(hours=1),
        created_at=clocks.wall,
        created_by="ops",
    )
    stored = await tickets.writer.run(lambda conn: maintenance_store.add(conn, added))
    await monitor.reload_maintenance()  # what the API does after writing it
    assert monitor.subjects()[CAM].state.held_by == f"maintenance/{stored.id}"
    seen[CAM] = down()
    await run_for(monitor, clocks, 300, seen)
    await monitor.save(force=True)

    clocks.advance(60)
    again = await new_monitor(tickets, clocks)
    await run_for(again, clocks, 600, seen)
    assert await tickets_by_subject(tickets) == {}
    assert again.subjects()[CAM].state.health is SubjectHealth.UNREACHABLE

    # Removed (as by the CLI: straight from the store): picked up within a few seconds.
    await tickets.writer.run(lambda conn: maintenance_store.remove(conn, "acme", stored.id))
    await run_for(again, clocks, 10, seen)
    assert again.subjects()[CAM].state.held_by is None
    await run_for(again, clocks, 150, seen)
    assert list(await tickets_by_subject(tickets)) == ["cam-1"]


async def test_a_recurring_window_holds_during_each_occurrence(
    tickets: TicketStore, clocks: Clocks
) -> None:
    nightly = Window(
        id="config-1",
        org="acme",
        target=Target(subject="cam-1"),
        cron="5 8 * * *",  # 08:05 UTC daily, for 10 minutes
        duration=timedelta(minutes=10),
        source="config",
    )
    monitor = await new_monitor(tickets, clocks, nightly)
    seen: dict[SubjectKey, Observation] = {CAM: up(), DOOR: up()}
    await run_for(monitor, clocks, 240, seen)
    assert monitor.subjects()[CAM].state.held_by is None  # 08:04
    await run_for(monitor, clocks, 120, seen)
    assert monitor.subjects()[CAM].state.held_by == "maintenance/config-1"  # 08:06
    assert why(monitor, CAM) is None  # healthy: nothing to explain
    row = next(r for r in monitor.rows("acme") if r.key == CAM)
    assert row.maintenance_until == START + timedelta(minutes=15)
    await run_for(monitor, clocks, 600, seen)
    assert monitor.subjects()[CAM].state.held_by is None  # 08:16
