"""The ticket API's success paths and rules: open, dedup, report issue, transitions, listing."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Api, FakeClock, config_text, token_value
from tocsin.api.app import make_app
from tocsin.config import parse
from tocsin.tickets.store import TicketStore

TICKETS = "/api/v1/orgs/acme/tickets"
TICKET_FIELDS = {
    "org",
    "seq",
    "state",
    "source",
    "kind",
    "subject",
    "description",
    "dedup_key",
    "opened_at",
    "updated_at",
    "resolved_at",
    "url",
}
NOON = "2026-01-01T12:00:00.000Z"


def workflow_ticket(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": "workflow",
        "subject": {"type": "integration", "id": "bms", "name": "BMS cloud API"},
        "kind": "bms_alarm",
        "description": "Chiller 2 alarm",
    }
    body.update(overrides)
    return body


def user_report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": "user",
        "subject": {"type": "space", "id": "lobby", "name": "Lobby"},
        "description": "The lobby lights flicker",
    }
    body.update(overrides)
    return body


async def open_ticket(api: Api, body: dict[str, Any], token: str = "acme-write") -> dict[str, Any]:
    status, ticket = await api.call("POST", TICKETS, token=token, json=body)
    assert status == 201, ticket
    return ticket


async def post_with_headers(
    api: Api, path: str, body: dict[str, Any], token: str = "acme-write"
) -> tuple[int, dict[str, Any], str | None]:
    headers = {"Authorization": f"Bearer {token_value(token)}"}
    async with api.session.post(api.base + path, json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers.get("Location")


def event_types(ticket: dict[str, Any]) -> list[str]:
    return [event["type"] for event in ticket["timeline"]]


# -- opening -------------------------------------------------------------------------------------


async def test_it_opens_a_workflow_ticket_with_201_and_a_location(api: Api) -> None:
    status, ticket, location = await post_with_headers(
        api, TICKETS, workflow_ticket(dedup_key="bms-chiller-2"), token="acme-workflow"
    )
    assert status == 201
    assert location == f"{TICKETS}/1"
    assert ticket == {
        "org": "acme",
        "seq": 1,
        "state": "open",
        "source": "workflow",
        "kind": "bms_alarm",
        "subject": {"type": "integration", "id": "bms", "name": "BMS cloud API"},
        "description": "Chiller 2 alarm",
        "dedup_key": "bms-chiller-2",
        "opened_at": NOON,
        "updated_at": NOON,
        "resolved_at": None,
        "url": "http://tocsin.test/orgs/acme/tickets/1",
        "timeline": [
            {
                "id": ticket["timeline"][0]["id"],
                "type": "opened",
                "at": NOON,
                "actor": {"type": "workflow", "name": "acme-workflow"},
            }
        ],
    }


async def test_the_location_of_a_new_ticket_reads_it_back(api: Api) -> None:
    _, created, location = await post_with_headers(api, TICKETS, workflow_ticket())
    assert location is not None
    status, read = await api.call("GET", location, token="acme-read")
    assert status == 200
    assert read == created


async def test_it_numbers_tickets_per_org_without_gaps(api: Api) -> None:
    seqs = [(await open_ticket(api, workflow_ticket()))["seq"] for _ in range(3)]
    status, beta = await api.call(
        "POST", "/api/v1/orgs/beta/tickets", token="beta-write", json=workflow_ticket()
    )
    assert status == 201
    assert seqs == [1, 2, 3]
    assert beta["seq"] == 1
    assert beta["org"] == "beta"
    assert beta["url"] == "http://tocsin.test/orgs/beta/tickets/1"


async def test_it_answers_200_with_the_same_ticket_for_a_known_dedup_key(
    api: Api, store: TicketStore, clock: FakeClock
) -> None:
    first = await open_ticket(api, workflow_ticket(dedup_key="k1"), token="acme-workflow")
    clock.advance(minutes=5)
    status, again, location = await post_with_headers(
        api,
        TICKETS,
        workflow_ticket(dedup_key="k1", description="another alarm"),
        token="acme-workflow",
    )
    assert status == 200
    assert location == f"{TICKETS}/{first['seq']}"
    assert again == first  # nothing written: same description, same timeline, same updated_at
    assert await store.count() == 1


async def test_a_dedup_key_of_a_resolved_ticket_opens_a_new_one(
    api: Api, store: TicketStore
) -> None:
    first = await open_ticket(api, workflow_ticket(dedup_key="k1"))
    await api.call("POST", f"{TICKETS}/{first['seq']}/resolve")
    second = await open_ticket(api, workflow_ticket(dedup_key="k1"))
    assert second["seq"] == first["seq"] + 1
    assert await store.count() == 2


async def test_a_dedup_key_is_per_org(api: Api, store: TicketStore) -> None:
    await open_ticket(api, workflow_ticket(dedup_key="k1"))
    status, _ = await api.call(
        "POST",
        "/api/v1/orgs/beta/tickets",
        token="beta-write",
        json=workflow_ticket(dedup_key="k1"),
    )
    assert status == 201
    assert await store.count() == 2


async def test_it_files_a_user_report_when_report_issue_is_on(api: Api) -> None:
    status, ticket, location = await post_with_headers(api, TICKETS, user_report())
    assert status == 201
    assert location == f"{TICKETS}/1"
    assert ticket["source"] == "user"
    assert ticket["kind"] == "user_report"
    assert ticket["dedup_key"] is None
    assert ticket["timeline"][0]["actor"] == {"type": "user", "name": "acme-write"}


async def test_a_user_report_may_name_a_built_in_kind(api: Api) -> None:
    ticket = await open_ticket(api, user_report(kind="device_offline"))
    assert ticket["kind"] == "device_offline"


async def test_a_report_on_a_subject_with_an_unresolved_ticket_comments_on_it(
    api: Api, store: TicketStore, clock: FakeClock
) -> None:
    first = await open_ticket(api, user_report())
    clock.advance(minutes=3)
    status, same, location = await post_with_headers(
        api, TICKETS, user_report(description="Still flickering", actor_name="Dana")
    )
    assert status == 200
    assert location == f"{TICKETS}/{first['seq']}"
    assert same["seq"] == first["seq"]
    assert same["description"] == "The lobby lights flicker"
    assert same["updated_at"] == "2026-01-01T12:03:00.000Z"
    assert event_types(same) == ["opened", "comment"]
    comment = same["timeline"][1]
    assert comment["body"] == "Still flickering"
    assert comment["actor"] == {"type": "user", "name": "Dana"}
    assert await store.count() == 1


async def test_a_report_without_a_description_on_a_ticketed_subject_says_reported_again(
    api: Api,
) -> None:
    await open_ticket(api, user_report())
    status, same = await api.call("POST", TICKETS, json=user_report(description=""))
    assert status == 200
    assert same["timeline"][1]["body"] == "Reported again by acme-write."


async def test_a_report_lands_on_a_workflow_ticket_for_the_same_subject(api: Api) -> None:
    subject = {"type": "device", "id": "cam-1", "name": "Camera 1"}
    first = await open_ticket(api, workflow_ticket(subject=subject))
    status, same = await api.call("POST", TICKETS, json=user_report(subject=subject))
    assert status == 200
    assert same["seq"] == first["seq"]
    assert same["source"] == "workflow"


async def test_a_report_on_a_subject_whose_ticket_is_resolved_opens_a_new_one(api: Api) -> None:
    first = await open_ticket(api, user_report())
    await api.call("POST", f"{TICKETS}/{first['seq']}/resolve")
    second = await open_ticket(api, user_report())
    assert second["seq"] == first["seq"] + 1


async def test_it_refuses_a_user_report_with_403_when_report_issue_is_off(
    db_url: str, store: TicketStore
) -> None:
    settings = parse(config_text(db_url, report_issue_acme=False))
    server = TestServer(make_app(settings, store), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, str(server.make_url("")).rstrip("/"))
            status, body = await api.call("POST", TICKETS, json=user_report())
            assert status == 403
            assert body["error"] == {
                "code": "report_issue_disabled",
                "message": "the Report issue flow is not enabled for org 'acme'",
                "field": "source",
            }
            status, _ = await api.call("POST", TICKETS, json=workflow_ticket())
            assert status == 201  # only the Report issue flow is off
    finally:
        await server.close()
    assert await store.count() == 1


# -- transitions, comments, edits ----------------------------------------------------------------


async def test_a_ticket_walks_through_its_life_and_the_timeline_tells_it(
    api: Api, clock: FakeClock
) -> None:
    seq = (await open_ticket(api, workflow_ticket(), token="acme-workflow"))["seq"]
    path = f"{TICKETS}/{seq}"

    clock.advance(minutes=1)
    status, ticket = await api.call("POST", path + "/start", json={"comment": "on my way"})
    assert status == 200
    assert ticket["state"] == "in_progress"
    assert ticket["updated_at"] == "2026-01-01T12:01:00.000Z"

    clock.advance(minutes=1)
    status, ticket = await api.call(
        "POST", path + "/comments", json={"body": "valve *stuck*", "actor_name": "Sam"}
    )
    assert status == 201

    clock.advance(minutes=1)
    status, ticket = await api.call("PATCH", path, json={"description": "Chiller 2 valve stuck"})
    assert status == 200
    assert ticket["description"] == "Chiller 2 valve stuck"

    clock.advance(minutes=1)
    status, ticket = await api.call("POST", path + "/resolve", json={"comment": "valve freed"})
    assert status == 200
    assert ticket["state"] == "resolved"
    assert ticket["resolved_at"] == "2026-01-01T12:04:00.000Z"

    clock.advance(minutes=1)
    status, ticket = await api.call("POST", path + "/reopen")
    assert status == 200
    assert ticket["state"] == "open"
    assert ticket["resolved_at"] is None
    assert ticket["opened_at"] == NOON
    assert ticket["updated_at"] == "2026-01-01T12:05:00.000Z"

    person = {"type": "user", "name": "acme-write"}
    timeline = [{k: v for k, v in e.items() if k != "id"} for e in ticket["timeline"]]
    assert timeline == [
        {"type": "opened", "at": NOON, "actor": {"type": "workflow", "name": "acme-workflow"}},
        {
            "type": "started",
            "at": "2026-01-01T12:01:00.000Z",
            "actor": person,
            "comment": "on my way",
        },
        {
            "type": "comment",
            "at": "2026-01-01T12:02:00.000Z",
            "actor": {"type": "user", "name": "Sam"},
            "body": "valve *stuck*",
        },
        {
            "type": "description_edited",
            "at": "2026-01-01T12:03:00.000Z",
            "actor": person,
            "old_description": "Chiller 2 alarm",
            "new_description": "Chiller 2 valve stuck",
        },
        {
            "type": "resolved",
            "at": "2026-01-01T12:04:00.000Z",
            "actor": person,
            "comment": "valve freed",
        },
        {"type": "reopened", "at": "2026-01-01T12:05:00.000Z", "actor": person},
    ]
    ids = [e["id"] for e in ticket["timeline"]]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_an_open_ticket_resolves_directly(api: Api) -> None:
    seq = (await open_ticket(api, workflow_ticket()))["seq"]
    status, ticket = await api.call("POST", f"{TICKETS}/{seq}/resolve", token="acme-workflow")
    assert status == 200
    assert ticket["state"] == "resolved"
    assert ticket["resolved_at"] == NOON
    assert "comment" not in ticket["timeline"][-1]


async def test_actor_name_overrides_the_token_name_on_every_write(api: Api) -> None:
    opened = await open_ticket(api, workflow_ticket(actor_name="BMS watcher"), "acme-workflow")
    path = f"{TICKETS}/{opened['seq']}"
    for method, suffix, body in [
        ("POST", "/start", {"actor_name": "Ann"}),
        ("POST", "/comments", {"body": "x", "actor_name": "Ann"}),
        ("PATCH", "", {"description": "y", "actor_name": "Ann"}),
        ("POST", "/resolve", {"actor_name": "Ann"}),
        ("POST", "/reopen", {"actor_name": "Ann"}),
    ]:
        status, _ = await api.call(method, path + suffix, json=body)
        assert status in (200, 201)
    status, ticket = await api.call("GET", path, token="acme-read")
    actors = [e["actor"] for e in ticket["timeline"]]
    assert actors[0] == {"type": "workflow", "name": "BMS watcher"}
    assert actors[1:] == [{"type": "user", "name": "Ann"}] * 5


async def test_an_edit_to_the_same_description_adds_no_event(api: Api) -> None:
    seq = (await open_ticket(api, workflow_ticket()))["seq"]
    status, ticket = await api.call(
        "PATCH", f"{TICKETS}/{seq}", json={"description": "Chiller 2 alarm"}
    )
    assert status == 200
    assert event_types(ticket) == ["opened"]


async def test_a_description_can_be_cleared(api: Api) -> None:
    seq = (await open_ticket(api, workflow_ticket()))["seq"]
    status, ticket = await api.call("PATCH", f"{TICKETS}/{seq}", json={"description": ""})
    assert status == 200
    assert ticket["description"] == ""
    assert ticket["timeline"][-1]["new_description"] == ""


async def test_comments_are_allowed_on_a_resolved_ticket(api: Api) -> None:
    seq = (await open_ticket(api, workflow_ticket()))["seq"]
    await api.call("POST", f"{TICKETS}/{seq}/resolve")
    status, ticket = await api.call("POST", f"{TICKETS}/{seq}/comments", json={"body": "note"})
    assert status == 201
    assert ticket["state"] == "resolved"
    assert event_types(ticket) == ["opened", "resolved", "comment"]


@pytest.mark.parametrize(
    ("setup", "action", "current"),
    [
        pytest.param([], "reopen", "open", id="reopen-open"),
        pytest.param(["start"], "start", "in_progress", id="start-in-progress"),
        pytest.param(["start"], "reopen", "in_progress", id="reopen-in-progress"),
        pytest.param(["resolve"], "start", "resolved", id="start-resolved"),
        pytest.param(["resolve"], "resolve", "resolved", id="resolve-resolved"),
    ],
)
async def test_an_illegal_transition_answers_409_naming_the_current_state(
    api: Api, setup: list[str], action: str, current: str
) -> None:
    seq = (await open_ticket(api, workflow_ticket()))["seq"]
    path = f"{TICKETS}/{seq}"
    for step in setup:
        status, _ = await api.call("POST", f"{path}/{step}")
        assert status == 200
    _, before = await api.call("GET", path, token="acme-read")
    status, body = await api.call("POST", f"{path}/{action}", json={"comment": "try"})
    assert status == 409
    assert body["error"]["code"] == "illegal_transition"
    assert f"that is {current}" in body["error"]["message"]
    _, after = await api.call("GET", path, token="acme-read")
    assert after == before


async def test_reopening_answers_409_when_another_unresolved_ticket_has_its_dedup_key(
    api: Api,
) -> None:
    first = await open_ticket(api, workflow_ticket(dedup_key="k1"))
    await api.call("POST", f"{TICKETS}/{first['seq']}/resolve")
    second = await open_ticket(api, workflow_ticket(dedup_key="k1"))
    status, body = await api.call("POST", f"{TICKETS}/{first['seq']}/reopen")
    assert status == 409
    assert body["error"]["code"] == "dedup_conflict"
    assert body["error"]["field"] == "dedup_key"
    assert f"#{second['seq']}" in body["error"]["message"]
    _, still = await api.call("GET", f"{TICKETS}/{first['seq']}", token="acme-read")
    assert still["state"] == "resolved"
    # once the other one is resolved, the first may come back
    await api.call("POST", f"{TICKETS}/{second['seq']}/resolve")
    status, reopened = await api.call("POST", f"{TICKETS}/{first['seq']}/reopen")
    assert status == 200
    assert reopened["state"] == "open"


# -- reading and listing -------------------------------------------------------------------------


async def test_a_ticket_has_exactly_the_contracts_fields(api: Api) -> None:
    opened = await open_ticket(api, workflow_ticket())
    assert set(opened) == TICKET_FIELDS | {"timeline"}
    assert set(opened["subject"]) == {"type", "id", "name"}
    _, listing = await api.call("GET", TICKETS, token="acme-read")
    assert set(listing) == {"tickets", "next_cursor"}
    [listed] = listing["tickets"]
    assert set(listed) == TICKET_FIELDS
    assert listed == {k: v for k, v in opened.items() if k != "timeline"}


async def test_the_url_uses_the_configured_public_url(db_url: str, store: TicketStore) -> None:
    text = config_text(db_url).replace(
        'public_url = "http://tocsin.test"', 'public_url = "https://ops.example/tocsin/"'
    )
    server = TestServer(make_app(parse(text), store), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, str(server.make_url("")).rstrip("/"))
            ticket = await open_ticket(api, workflow_ticket())
            _, listing = await api.call("GET", TICKETS, token="acme-read")
    finally:
        await server.close()
    assert ticket["url"] == "https://ops.example/tocsin/orgs/acme/tickets/1"
    assert listing["tickets"][0]["url"] == ticket["url"]


async def _seed(api: Api, clock: FakeClock) -> dict[int, dict[str, Any]]:
    """Seven tickets of different sources, kinds, subjects and states; seq -> ticket."""
    bodies = [
        workflow_ticket(subject={"type": "device", "id": "cam-1", "name": "Lobby camera"}),
        workflow_ticket(kind="door_ajar", subject={"type": "device", "id": "door-1", "name": "D"}),
        user_report(),
        workflow_ticket(description="Boiler pressure LOW"),
        user_report(
            subject={"type": "other", "id": "coffee", "name": "Machine"}, description="Empty"
        ),
        workflow_ticket(kind="door_ajar", subject={"type": "device", "id": "door-2", "name": "E"}),
        workflow_ticket(subject={"type": "space", "id": "roof", "name": "Roof 100%_done"}),
    ]
    tickets = {}
    for body in bodies:
        clock.advance(seconds=10)
        ticket = await open_ticket(api, body)
        tickets[ticket["seq"]] = ticket
    for seq, action in [(2, "start"), (3, "resolve"), (5, "start"), (6, "resolve")]:
        status, ticket = await api.call("POST", f"{TICKETS}/{seq}/{action}")
        assert status == 200
        tickets[seq] = ticket
    return tickets


async def list_seqs(api: Api, query: str | list[tuple[str, str]]) -> list[int]:
    qs = query if isinstance(query, str) else urlencode(query)
    status, listing = await api.call("GET", f"{TICKETS}?{qs}", token="acme-read")
    assert status == 200, listing
    assert listing["next_cursor"] is None
    return [t["seq"] for t in listing["tickets"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("", [7, 6, 5, 4, 3, 2, 1], id="all-newest-first"),
        pytest.param("state=open", [7, 4, 1], id="state"),
        pytest.param("state=open&state=in_progress", [7, 5, 4, 2, 1], id="state-repeated"),
        pytest.param("state=open,in_progress", [7, 5, 4, 2, 1], id="state-comma"),
        pytest.param("state=resolved,resolved&state=resolved", [6, 3], id="state-duplicates"),
        pytest.param("source=user", [5, 3], id="source"),
        pytest.param("kind=door_ajar", [6, 2], id="kind"),
        pytest.param("subject_type=device", [6, 2, 1], id="subject-type"),
        pytest.param("subject_id=door-2", [6], id="subject-id"),
        pytest.param("q=lobby", [3, 1], id="q-subject-name-any-case"),
        pytest.param("q=pressure%20low", [4], id="q-description"),
        pytest.param("q=AJAR", [6, 2], id="q-kind"),
        pytest.param("q=coffee", [5], id="q-subject-id"),
        pytest.param("q=100%25_", [7], id="q-like-wildcards-are-literal"),
        pytest.param("q=%25", [7], id="q-percent-alone"),
        pytest.param("q=nothing-matches", [], id="q-no-match"),
        pytest.param("state=open&subject_type=device&kind=bms_alarm", [1], id="combined"),
        pytest.param("source=workflow&state=resolved", [6], id="source-and-state"),
    ],
)
async def test_it_lists_tickets_newest_first_with_filters(
    api: Api, clock: FakeClock, query: str, expected: list[int]
) -> None:
    await _seed(api, clock)
    assert await list_seqs(api, query) == expected


async def test_the_list_shows_each_ticket_as_it_is_now(api: Api, clock: FakeClock) -> None:
    tickets = await _seed(api, clock)
    _, listing = await api.call("GET", TICKETS, token="acme-read")
    for listed in listing["tickets"]:
        expected = {k: v for k, v in tickets[listed["seq"]].items() if k != "timeline"}
        assert listed == expected


async def test_the_list_of_one_org_never_shows_anothers_tickets(api: Api, clock: FakeClock) -> None:
    await _seed(api, clock)
    status, listing = await api.call("GET", "/api/v1/orgs/beta/tickets", token="beta-write")
    assert status == 200
    assert listing == {"tickets": [], "next_cursor": None}


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 200])
async def test_cursor_paging_visits_every_ticket_once(
    api: Api, clock: FakeClock, limit: int
) -> None:
    await _seed(api, clock)
    seen: list[int] = []
    pages = 0
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        status, page = await api.call("GET", f"{TICKETS}?{urlencode(query)}", token="acme-read")
        assert status == 200
        tickets = page["tickets"]
        assert isinstance(tickets, list)
        assert 0 < len(tickets) <= limit
        seen += [t["seq"] for t in tickets]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(tickets) == limit
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == -(-7 // limit)


async def test_cursor_paging_keeps_the_filter(api: Api, clock: FakeClock) -> None:
    await _seed(api, clock)
    _, first = await api.call("GET", f"{TICKETS}?state=open,in_progress&limit=2", token="acme-read")
    assert [t["seq"] for t in first["tickets"]] == [7, 5]
    cursor = first["next_cursor"]
    _, second = await api.call(
        "GET", f"{TICKETS}?state=open,in_progress&limit=2&cursor={cursor}", token="acme-read"
    )
    assert [t["seq"] for t in second["tickets"]] == [4, 2]
    _, third = await api.call(
        "GET",
        f"{TICKETS}?state=open,in_progress&limit=2&cursor={second['next_cursor']}",
        token="acme-read",
    )
    assert [t["seq"] for t in third["tickets"]] == [1]
    assert third["next_cursor"] is None


async def test_an_empty_org_lists_no_tickets(api: Api) -> None:
    status, listing = await api.call("GET", TICKETS, token="acme-read")
    assert status == 200
    assert listing == {"tickets": [], "next_cursor": None}
