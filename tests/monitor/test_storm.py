"""The storm cap in the monitor's wiring, against a real SQLite store with fake clocks: past
`storm_limit` tickets in a minute, one ticket for the org takes the place of the rest, lists
them, and resolves when they are back; once the storm is over, failures open their own again;
a restart in the middle opens nothing twice."""

from __future__ import annotations

from tests.monitor.test_parents import health, run_for, tickets_by_subject
from tests.monitor.test_runtime import WINDOWS, Clocks, down, up
from tocsin.api.subjects import group_tickets, no_ticket_because
from tocsin.monitor.groups import GroupRules
from tocsin.monitor.runtime import HealthMonitor
from tocsin.monitor.storm import STORM_ID, storm_key
from tocsin.probes.observation import Observation, SubjectKey
from tocsin.tickets.model import State
from tocsin.tickets.store import TicketStore
from tocsin.tracker import SubjectHealth
from tocsin.tracker.text import MEMBERS_HEADING

DEVICES = [SubjectKey("acme", "device", f"dev-{n:02}") for n in range(30)]
LIMIT = 5


async def new_monitor(store: TicketStore, clocks: Clocks) -> HealthMonitor:
    monitor = HealthMonitor(store, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    monitor.default_windows = WINDOWS
    for key in DEVICES:
        monitor.configure(key, key.id, WINDOWS)
    monitor.set_storm(LIMIT, ["acme"])
    await monitor.restore()
    return monitor


async def storm(
    store: TicketStore, clocks: Clocks
) -> tuple[HealthMonitor, dict[SubjectKey, Observation]]:
    monitor = await new_monitor(store, clocks)
    seen: dict[SubjectKey, Observation] = dict.fromkeys(DEVICES, up())
    await run_for(monitor, clocks, 30, seen)
    seen.update(dict.fromkeys(DEVICES, down()))
    await run_for(monitor, clocks, 180, seen)
    return monitor, seen


async def test_past_the_limit_one_ticket_takes_the_place_of_the_rest(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor, seen = await storm(tickets, clocks)
    opened = await tickets_by_subject(tickets)
    assert len(opened) == LIMIT + 1  # five devices' own, then the storm's
    assert STORM_ID in opened
    [seq] = opened[STORM_ID]
    ticket, _ = await tickets.get("acme", seq)
    assert ticket.kind == "multiple_devices_offline"
    assert ticket.subject.type == "other"
    assert f"{MEMBERS_HEADING} (25, 25 still offline)" in ticket.description
    held = [k for k in DEVICES if k.id not in opened]
    assert health(monitor, held) == {SubjectHealth.UNREACHABLE}
    rows = monitor.rows("acme")
    why = {r.key.id: no_ticket_because(r, group_tickets(rows)) for r in rows}
    assert {why[k.id] for k in held} == {f"storm #{seq}"}

    # Back: the storm's ticket resolves; the five own tickets resolve on their own.
    seen.update(dict.fromkeys(DEVICES, up()))
    await run_for(monitor, clocks, 120, seen)
    assert (await tickets.get("acme", seq))[0].state is State.RESOLVED
    for key in DEVICES:
        for own in opened.get(key.id, []):
            assert (await tickets.get("acme", own))[0].state is State.RESOLVED
    assert monitor.subjects()[storm_key("acme")].state.ticket_open is False


async def test_once_the_storm_is_over_failures_open_their_own_again(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor, seen = await storm(tickets, clocks)
    seen.update(dict.fromkeys(DEVICES, up()))
    await run_for(monitor, clocks, 180, seen)  # over: nothing due for a minute
    assert not monitor.storm.on("acme")
    before = await tickets_by_subject(tickets)
    seen[DEVICES[20]] = down()
    await run_for(monitor, clocks, 180, seen)
    after = await tickets_by_subject(tickets)
    assert after[DEVICES[20].id] != before.get(DEVICES[20].id)  # its own ticket now
    assert monitor.subjects()[DEVICES[20]].state.held_by is None


async def test_a_restart_mid_storm_opens_nothing_twice(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor, seen = await storm(tickets, clocks)
    opened = await tickets_by_subject(tickets)
    await monitor.save(force=True)
    clocks.advance(30)
    again = await new_monitor(tickets, clocks)
    await run_for(again, clocks, 300, seen)
    assert await tickets_by_subject(tickets) == opened
    [seq] = opened[STORM_ID]
    assert (await tickets.get("acme", seq))[0].state is State.OPEN
    seen.update(dict.fromkeys(DEVICES, up()))
    await run_for(again, clocks, 120, seen)
    assert (await tickets.get("acme", seq))[0].state is State.RESOLVED


SPACES = [SubjectKey("acme", "space", f"floor-{n}") for n in range(8)]


async def test_groups_count_against_the_limit_and_past_it_the_storm_holds_their_spaces(
    tickets: TicketStore, clocks: Clocks
) -> None:
    """Eight floors go dark at once (three devices each): five group tickets, then the storm's,
    listing the three floors it holds; their devices stay held by their floors."""
    members = {space: DEVICES[3 * n : 3 * n + 3] for n, space in enumerate(SPACES)}
    monitor = HealthMonitor(tickets, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    monitor.default_windows = WINDOWS
    for key in DEVICES[:24]:
        monitor.configure(key, key.id, WINDOWS)
    monitor.set_spaces({s: s.id for s in SPACES}, members, GroupRules())
    monitor.set_parents({d: [s] for s, devices in members.items() for d in devices})
    monitor.set_storm(LIMIT, ["acme"])
    await monitor.restore()
    seen: dict[SubjectKey, Observation] = dict.fromkeys(DEVICES[:24], up())
    await run_for(monitor, clocks, 30, seen)
    seen.update(dict.fromkeys(DEVICES[:24], down()))
    await run_for(monitor, clocks, 180, seen)

    opened = await tickets_by_subject(tickets)
    groups = [s for s in SPACES if s.id in opened]
    assert len(groups) == LIMIT, opened
    assert STORM_ID in opened
    assert not any(d.id in opened for d in DEVICES)
    [seq] = opened[STORM_ID]
    ticket, _ = await tickets.get("acme", seq)
    held = [s for s in SPACES if s not in groups]
    for space in held:
        assert space.id in ticket.description
        assert monitor.subjects()[space].state.held_by is not None
        assert health(monitor, members[space]) == {SubjectHealth.UNREACHABLE}

    seen.update(dict.fromkeys(DEVICES[:24], up()))
    await run_for(monitor, clocks, 180, seen)
    for seqs in (await tickets_by_subject(tickets)).values():
        for one in seqs:
            assert (await tickets.get("acme", one))[0].state is State.RESOLVED
