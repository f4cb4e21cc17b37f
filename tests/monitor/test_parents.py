"""Parent dependencies in the monitor's wiring, against a real SQLite store with fake clocks: a
switch down with its children gives one ticket, which lists them unreachable; children still
down when it recovers open their own after their debounce; a restart mid-outage opens nothing
twice; a reload that drops the dependency releases them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta

from tests.monitor.test_runtime import PERSON, WINDOWS, Clocks, down, up
from tocsin.monitor.runtime import HealthMonitor
from tocsin.probes.observation import Observation, SubjectKey
from tocsin.tickets.model import EventType, Source, State
from tocsin.tickets.store import TicketStore
from tocsin.tracker import SubjectHealth
from tocsin.tracker.text import UNREACHABLE_HEADING

SWITCH = SubjectKey("acme", "device", "sw-riser-2")
CHILDREN = [SubjectKey("acme", "device", f"cam-{n}") for n in range(1, 4)]


async def new_monitor(store: TicketStore, clocks: Clocks, *, depends: bool = True) -> HealthMonitor:
    monitor = HealthMonitor(store, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    for key in [SWITCH, *CHILDREN]:
        monitor.configure(key, key.id, WINDOWS)
    monitor.set_parents({child: [SWITCH] for child in CHILDREN} if depends else {})
    await monitor.restore()
    return monitor


async def run_for(
    monitor: HealthMonitor, clocks: Clocks, seconds: int, seen: dict[SubjectKey, Observation]
) -> None:
    """Every subject probed every 10 s for `seconds`, ticks every 5 s."""
    for second in range(0, seconds, 5):
        if second % 10 == 0:
            for key, observation in seen.items():
                monitor.observe(key, observation)
            await monitor.applier.drain()
        clocks.advance(5)
        await monitor.tick()


async def all_fail(
    monitor: HealthMonitor, clocks: Clocks, keys: list[SubjectKey], *, seconds: int
) -> dict[SubjectKey, Observation]:
    """Everyone up for 30 s, then failing for `seconds`; the failing observations."""
    await run_for(monitor, clocks, 30, {key: up() for key in keys})
    outage = {key: down("timeout after 2 s", "timeout") for key in keys}
    await run_for(monitor, clocks, seconds, outage)
    return outage


def health(monitor: HealthMonitor, keys: Iterable[SubjectKey]) -> set[SubjectHealth]:
    return {monitor.subjects()[key].state.health for key in keys}


async def tickets_by_subject(store: TicketStore) -> dict[str, list[int]]:
    page = await store.list_tickets("acme")
    found: dict[str, list[int]] = {}
    for ticket in page.tickets:
        if ticket.source is Source.HEALTH_MONITOR:
            found.setdefault(ticket.subject.id, []).append(ticket.seq)
    return found


async def test_a_switch_down_with_its_children_is_one_ticket_listing_them(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    outage = await all_fail(monitor, clocks, [SWITCH, *CHILDREN], seconds=300)
    opened = await tickets_by_subject(tickets)
    assert list(opened) == [SWITCH.id]  # one ticket: the switch's
    assert health(monitor, CHILDREN) == {SubjectHealth.UNREACHABLE}
    ticket, timeline = await tickets.get("acme", opened[SWITCH.id][0])
    assert f"{UNREACHABLE_HEADING} (3): `cam-1`, `cam-2`, `cam-3`" in ticket.description
    assert any(event.type is EventType.DESCRIPTION_EDITED for event in timeline)
    rows = monitor.rows("acme")
    assert {r.key.id: r.state.get("held_by") for r in rows if r.key in CHILDREN} == {
        c.id: SWITCH.id for c in CHILDREN
    }

    # The switch comes back; cam-3 does not: it opens its own ticket after its debounce.
    back = {SWITCH: up(), CHILDREN[0]: up(), CHILDREN[1]: up(), CHILDREN[2]: outage[SWITCH]}
    await run_for(monitor, clocks, 60, back)
    assert list(await tickets_by_subject(tickets)) == [SWITCH.id]  # not yet: a new debounce
    await run_for(monitor, clocks, 120, back)
    opened = await tickets_by_subject(tickets)
    assert sorted(opened) == [CHILDREN[2].id, SWITCH.id]
    switch_ticket, _ = await tickets.get("acme", opened[SWITCH.id][0])
    assert switch_ticket.state is State.RESOLVED  # its recovery was never held up


async def test_a_restart_mid_outage_opens_nothing_twice(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    everyone = [SWITCH, *CHILDREN]
    outage = await all_fail(monitor, clocks, everyone, seconds=300)
    await monitor.save(force=True)

    # A new process: the children are seen before the switch, past their debounce.
    clocks.advance(30)
    again = await new_monitor(tickets, clocks)
    await run_for(again, clocks, 300, {key: outage[key] for key in CHILDREN})
    assert list(await tickets_by_subject(tickets)) == [SWITCH.id]
    await run_for(again, clocks, 60, outage)
    assert list(await tickets_by_subject(tickets)) == [SWITCH.id]
    assert health(again, CHILDREN) == {SubjectHealth.UNREACHABLE}


async def test_a_reload_without_the_dependency_releases_the_children(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    everyone = [SWITCH, *CHILDREN]
    outage = await all_fail(monitor, clocks, everyone, seconds=300)
    assert list(await tickets_by_subject(tickets)) == [SWITCH.id]
    monitor.set_parents({})  # the reloaded config has no depends_on
    assert health(monitor, CHILDREN) == {SubjectHealth.FAILING}
    await run_for(monitor, clocks, 150, outage)
    assert sorted(await tickets_by_subject(tickets)) == sorted(k.id for k in everyone)
    switch_ticket, _ = await tickets.get("acme", (await tickets_by_subject(tickets))[SWITCH.id][0])
    assert UNREACHABLE_HEADING not in switch_ticket.description  # none is held any more


async def test_children_held_before_the_parents_ticket_opens_are_listed_once_it_does(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = HealthMonitor(tickets, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    monitor.configure(SWITCH, SWITCH.id, replace(WINDOWS, debounce=timedelta(minutes=4)))
    for key in CHILDREN:
        monitor.configure(key, key.id, WINDOWS)
    monitor.set_parents({child: [SWITCH] for child in CHILDREN})
    await monitor.restore()
    everyone = [SWITCH, *CHILDREN]
    outage = await all_fail(monitor, clocks, everyone, seconds=180)
    assert health(monitor, CHILDREN) == {SubjectHealth.UNREACHABLE}
    assert await tickets_by_subject(tickets) == {}  # the switch is still in its debounce
    await run_for(monitor, clocks, 90, outage)
    seq = (await tickets_by_subject(tickets))[SWITCH.id][0]
    ticket, _ = await tickets.get("acme", seq)
    assert f"{UNREACHABLE_HEADING} (3)" in ticket.description

    # A person's edit of the description stays when the list changes.
    note = "Facilities called the vendor at 10:05."
    await tickets.edit_description("acme", seq, PERSON, f"{note}\n\n{ticket.description}")
    await run_for(monitor, clocks, 30, {**outage, CHILDREN[0]: up()})
    ticket, _ = await tickets.get("acme", seq)
    assert ticket.description.startswith(note)
    assert f"{UNREACHABLE_HEADING} (2): `cam-2`, `cam-3`" in ticket.description
