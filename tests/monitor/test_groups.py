"""Multiple devices offline in the monitor's wiring, against a real SQLite store with fake clocks:
devices of one space failing together give one ticket for the space, which lists them and
resolves when the last is back; a few failing open their own; tickets opened moments before the
group formed are handed to it; a restart mid-outage opens nothing twice."""

from __future__ import annotations

from datetime import timedelta

from tests.monitor.test_parents import health, run_for, tickets_by_subject
from tests.monitor.test_runtime import PERSON, WINDOWS, Clocks, down, up
from tocsin.api.subjects import group_tickets, no_ticket_because
from tocsin.monitor.groups import GroupRules
from tocsin.monitor.runtime import HealthMonitor, Tracked
from tocsin.probes.observation import Observation, SubjectKey
from tocsin.tickets.model import EventType, Kind, State
from tocsin.tickets.store import TicketStore
from tocsin.tracker import Now, SubjectHealth
from tocsin.tracker.text import MEMBERS_HEADING

SPACE = SubjectKey("acme", "space", "floor-2")
CAMS = [SubjectKey("acme", "device", f"cam-{n}") for n in range(1, 11)]
OFFLINE = down("offline (Last Will)", "offline")


async def new_monitor(
    store: TicketStore, clocks: Clocks, devices: list[SubjectKey] = CAMS, **rules: object
) -> HealthMonitor:
    monitor = HealthMonitor(store, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    monitor.default_windows = WINDOWS
    for key in devices:
        monitor.configure(key, key.id, WINDOWS)
    monitor.set_spaces({SPACE: "Floor 2"}, {SPACE: devices}, GroupRules(**rules))  # type: ignore[arg-type]
    monitor.set_parents({key: [SPACE] for key in devices})
    await monitor.restore()
    return monitor


async def group_ticket(store: TicketStore) -> int:
    opened = await tickets_by_subject(store)
    assert list(opened) == [SPACE.id], opened
    [seq] = opened[SPACE.id]
    return seq


async def test_a_space_going_dark_is_one_ticket_listing_its_devices(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 30, {key: up() for key in CAMS})
    await run_for(monitor, clocks, 180, dict.fromkeys(CAMS, OFFLINE))

    seq = await group_ticket(tickets)  # no ticket of any camera's own
    ticket, timeline = await tickets.get("acme", seq)
    assert ticket.kind == Kind.MULTIPLE_DEVICES_OFFLINE
    assert ticket.subject.type == "space"
    assert f"{MEMBERS_HEADING} (10, 10 still offline)" in ticket.description
    assert "- `cam-7`: offline" in ticket.description
    assert health(monitor, CAMS) == {SubjectHealth.UNREACHABLE}
    assert {monitor.subjects()[k].state.held_by for k in CAMS} == {SPACE.id}
    assert [e.type for e in timeline].count(EventType.COMMENT) == 0
    assert set(why(monitor).values()) == {f"group #{seq}", None}  # the space's own: None
    assert why(monitor)[SPACE.id] is None


def why(monitor: HealthMonitor) -> dict[str, str | None]:
    """Each subject's no_ticket_because, as GET /subjects says it."""
    rows = monitor.rows("acme")
    groups = group_tickets(rows)
    return {row.key.id: no_ticket_because(row, groups) for row in rows}


async def test_devices_recovering_one_by_one_update_it_and_the_last_resolves_it(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    seen: dict[SubjectKey, Observation] = {key: up() for key in CAMS}
    await run_for(monitor, clocks, 30, seen)
    seen = dict.fromkeys(CAMS, OFFLINE)
    await run_for(monitor, clocks, 180, seen)
    seq = await group_ticket(tickets)

    for n, key in enumerate(CAMS[:-1], 1):
        seen[key] = up()
        await run_for(monitor, clocks, 20, seen)
        ticket, _ = await tickets.get("acme", seq)
        assert f"{MEMBERS_HEADING} (10, {10 - n} still offline)" in ticket.description
        assert f"- `{key.id}`: back online" in ticket.description
    # The last one left keeps it open, however long the others have been back.
    await run_for(monitor, clocks, 600, seen)
    ticket, timeline = await tickets.get("acme", seq)
    assert ticket.state is State.OPEN
    assert "- `cam-10`: offline" in ticket.description
    assert any(e.type is EventType.DESCRIPTION_EDITED for e in timeline)

    seen[CAMS[-1]] = up()
    await run_for(monitor, clocks, 50, seen)
    assert (await tickets.get("acme", seq))[0].state is State.OPEN  # recovery window: 1 min
    await run_for(monitor, clocks, 30, seen)
    ticket, _ = await tickets.get("acme", seq)
    assert ticket.state is State.RESOLVED
    assert await tickets_by_subject(tickets) == {SPACE.id: [seq]}  # nothing else, ever


async def test_two_devices_down_open_their_own_tickets(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    seen: dict[SubjectKey, Observation] = {key: up() for key in CAMS}
    await run_for(monitor, clocks, 30, seen)
    seen.update({CAMS[0]: OFFLINE, CAMS[1]: OFFLINE})
    await run_for(monitor, clocks, 130, seen)
    assert sorted(await tickets_by_subject(tickets)) == ["cam-1", "cam-2"]


async def test_tickets_opened_moments_before_the_group_formed_are_handed_to_it(
    tickets: TicketStore, clocks: Clocks
) -> None:
    """Within the group window (5 minutes here) of each other, with the debounce (2 minutes)
    between them: the first two have their own tickets when the three others fail."""
    monitor = await new_monitor(tickets, clocks, window=300.0)
    seen: dict[SubjectKey, Observation] = {key: up() for key in CAMS}
    await run_for(monitor, clocks, 30, seen)
    seen.update({CAMS[0]: OFFLINE, CAMS[1]: OFFLINE})
    await run_for(monitor, clocks, 150, seen)
    assert sorted(await tickets_by_subject(tickets)) == ["cam-1", "cam-2"]
    seen.update(dict.fromkeys(CAMS[2:5], OFFLINE))  # three more
    await run_for(monitor, clocks, 60, seen)
    assert sorted(await tickets_by_subject(tickets)) == ["cam-1", "cam-2"]  # forming
    await run_for(monitor, clocks, 80, seen)
    opened = await tickets_by_subject(tickets)
    assert sorted(opened) == ["cam-1", "cam-2", SPACE.id]
    [group] = opened[SPACE.id]
    for key in CAMS[:2]:
        ticket, timeline = await tickets.get("acme", opened[key.id][0])
        assert ticket.state is State.RESOLVED
        assert f"Covered by #{group}" in str(timeline[-1].payload.get("comment"))
    ticket, _ = await tickets.get("acme", group)
    assert f"{MEMBERS_HEADING} (5, 5 still offline)" in ticket.description
    assert health(monitor, CAMS[:5]) == {SubjectHealth.UNREACHABLE}


async def test_a_group_that_does_not_form_holds_nobody_back_for_long(
    tickets: TicketStore, clocks: Clocks
) -> None:
    """Three fail, one comes back inside its debounce: the two others open their own tickets
    at the end of theirs, not a group window later."""
    monitor = await new_monitor(tickets, clocks)
    seen: dict[SubjectKey, Observation] = {key: up() for key in CAMS}
    await run_for(monitor, clocks, 30, seen)
    seen.update(dict.fromkeys(CAMS[:3], OFFLINE))
    await run_for(monitor, clocks, 60, seen)
    assert health(monitor, CAMS[:3]) == {SubjectHealth.FAILING}
    assert {monitor.subjects()[k].state.held_by for k in CAMS[:3]} == {SPACE.id}  # gathering
    assert why(monitor)["cam-1"] == f"group {SPACE.id} forming"
    seen[CAMS[2]] = up()
    await run_for(monitor, clocks, 70, seen)
    assert sorted(await tickets_by_subject(tickets)) == ["cam-1", "cam-2"]


async def test_a_restart_mid_outage_opens_nothing_twice(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 30, {key: up() for key in CAMS})
    outage = dict.fromkeys(CAMS, OFFLINE)
    await run_for(monitor, clocks, 180, outage)
    seq = await group_ticket(tickets)
    await monitor.save(force=True)

    clocks.advance(30)
    again = await new_monitor(tickets, clocks)
    await run_for(again, clocks, 300, outage)
    assert await tickets_by_subject(tickets) == {SPACE.id: [seq]}
    assert health(again, CAMS) == {SubjectHealth.UNREACHABLE}
    ticket, _ = await tickets.get("acme", seq)
    assert ticket.state is State.OPEN
    assert f"{MEMBERS_HEADING} (10, 10 still offline)" in ticket.description

    await run_for(again, clocks, 120, {key: up() for key in CAMS})
    assert (await tickets.get("acme", seq))[0].state is State.RESOLVED


async def test_a_growing_group_says_so_when_it_doubles_at_most_once_a_minute(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    seen: dict[SubjectKey, Observation] = {key: up() for key in CAMS}
    await run_for(monitor, clocks, 30, seen)
    seen.update(dict.fromkeys(CAMS[:3], OFFLINE))
    await run_for(monitor, clocks, 180, seen)
    seq = await group_ticket(tickets)
    seen.update(dict.fromkeys(CAMS[3:], OFFLINE))  # 3 -> 10
    await run_for(monitor, clocks, 300, seen)
    _, timeline = await tickets.get("acme", seq)
    comments = [str(e.payload.get("body")) for e in timeline if e.type is EventType.COMMENT]
    assert len(comments) == 1
    assert "10 devices offline now" in comments[0]
    assert "said 3" in comments[0]
    assert await tickets_by_subject(tickets) == {SPACE.id: [seq]}


async def test_a_person_resolving_it_while_devices_are_down_sees_it_reopen(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 30, {key: up() for key in CAMS})
    outage = dict.fromkeys(CAMS, OFFLINE)
    await run_for(monitor, clocks, 180, outage)
    seq = await group_ticket(tickets)
    await tickets.resolve("acme", seq, PERSON)
    await run_for(monitor, clocks, 60, outage)
    assert (await tickets.get("acme", seq))[0].state is State.RESOLVED  # its debounce first
    await run_for(monitor, clocks, 90, outage)
    assert (await tickets.get("acme", seq))[0].state is State.OPEN
    assert await tickets_by_subject(tickets) == {SPACE.id: [seq]}  # still no device's own


async def test_a_percentage_groups_a_small_space(tickets: TicketStore, clocks: Clocks) -> None:
    devices = CAMS[:4]
    monitor = await new_monitor(tickets, clocks, devices, percent=50.0)
    seen: dict[SubjectKey, Observation] = {key: up() for key in devices}
    await run_for(monitor, clocks, 30, seen)
    seen.update(dict.fromkeys(devices[:2], OFFLINE))
    await run_for(monitor, clocks, 180, seen)
    await group_ticket(tickets)


async def test_a_subject_of_another_space_is_not_held(tickets: TicketStore, clocks: Clocks) -> None:
    other = SubjectKey("acme", "device", "door-1")
    monitor = await new_monitor(tickets, clocks)
    monitor.configure(other, other.id, WINDOWS)
    seen: dict[SubjectKey, Observation] = {key: up() for key in [*CAMS, other]}
    await run_for(monitor, clocks, 30, seen)
    seen.update(dict.fromkeys([*CAMS, other], OFFLINE))
    await run_for(monitor, clocks, 180, seen)
    assert sorted(await tickets_by_subject(tickets)) == ["door-1", SPACE.id]
    assert timedelta(0) < WINDOWS.debounce


async def test_a_restart_keeps_the_devices_already_back_on_the_list(
    tickets: TicketStore, clocks: Clocks
) -> None:
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 30, dict.fromkeys(CAMS, up()))
    outage = dict.fromkeys(CAMS, OFFLINE)
    await run_for(monitor, clocks, 180, outage)
    seq = await group_ticket(tickets)
    outage[CAMS[0]] = up()
    await run_for(monitor, clocks, 20, outage)
    ticket, _ = await tickets.get("acme", seq)
    assert f"{MEMBERS_HEADING} (10, 9 still offline)" in ticket.description
    await monitor.save(force=True)

    clocks.advance(30)
    again = await new_monitor(tickets, clocks)
    await run_for(again, clocks, 300, outage)
    ticket, _ = await tickets.get("acme", seq)
    assert f"{MEMBERS_HEADING} (10, 9 still offline)" in ticket.description
    assert "- `cam-1`: back online" in ticket.description


async def test_a_message_read_after_its_space_began_gathering_counts_from_when_it_came(
    tickets: TicketStore, clocks: Clocks
) -> None:
    """A storm read over seconds: three of the floor's devices are handled, the floor starts
    gathering (every device is told), and only then is a fourth device's message handled - it
    had come with the others, and its failure counts from then, not from the telling."""
    monitor = await new_monitor(tickets, clocks)
    await run_for(monitor, clocks, 30, dict.fromkeys(CAMS, up()))
    came = clocks.mono
    for key in CAMS[:3]:
        monitor.observe(key, OFFLINE, at=came)
    clocks.advance(2.0)  # the loop still reading the burst
    monitor.expire_windows()
    rows = monitor.rows("acme")
    assert no_ticket_because(next(r for r in rows if r.key == CAMS[0]), group_tickets(rows)) == (
        f"group {SPACE.id} forming"
    )
    monitor.observe(CAMS[3], OFFLINE, at=came)
    first = monitor.subjects()[CAMS[3]].state.first_failure
    assert first is not None
    assert first.mono == came


async def test_a_storm_in_two_big_spaces_assesses_each_space_a_few_times_not_every_pass(
    tickets: TicketStore, clocks: Clocks
) -> None:
    """2,400 devices of two spaces go offline together (read over several expiry passes), then
    their debounces end together (one pass of five slices). A space is assessed again until
    its group is gathering, and in a pass until it is up; not for every device of a gathering
    space that begins failing, nor after every slice once its group is up: at 20,000 devices in
    200 spaces that was most of the storm's loop time."""
    floors = [SubjectKey("acme", "space", f"floor-{n}") for n in (1, 2)]
    devices = [SubjectKey("acme", "device", f"d-{n}") for n in range(2_400)]
    members = {floor: devices[n::2] for n, floor in enumerate(floors)}
    monitor = HealthMonitor(tickets, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)
    monitor.default_windows = WINDOWS
    for key in devices:
        monitor.configure(key, key.id, WINDOWS)
    monitor.set_spaces({f: f.id for f in floors}, members, GroupRules())
    monitor.set_parents({key: [floor] for floor, keys in members.items() for key in keys})
    await monitor.restore()
    for key in devices:
        monitor.observe(key, up())
    clocks.advance(10)
    monitor.expire_windows()

    assessed: list[SubjectKey] = []
    assess = monitor._assess

    def counted(tracked: Tracked, now: Now, *, changed: bool) -> None:
        assessed.append(tracked.key)
        assess(tracked, now, changed=changed)

    monitor._assess = counted  # type: ignore[method-assign]
    came = clocks.mono
    for n, key in enumerate(devices, 1):
        monitor.observe(key, OFFLINE, at=came)
        if n % 200 == 0:  # the loop's expiry passes while it reads the storm
            clocks.advance(0.2)
            monitor.expire_windows()
    reading = len(assessed)
    assert reading <= 2 * len(floors), assessed

    clocks.advance(WINDOWS.debounce.total_seconds())
    monitor.expire_windows()
    await monitor.applier.drain()
    assert len(assessed) - reading <= 3 * len(floors), assessed[reading:]

    opened = await tickets_by_subject(tickets)
    assert sorted(opened) == ["floor-1", "floor-2"]
    assert health(monitor, devices) == {SubjectHealth.UNREACHABLE}
