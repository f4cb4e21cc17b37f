"""Maintenance windows through the API: add, list and remove; every bad input is a 4xx naming
the field and writes nothing; scopes and orgs as the other org routes have them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Api, token_value
from tocsin.api.app import make_app
from tocsin.api.context import API_CONTEXT
from tocsin.api.schemas import ErrorOut, MaintenanceListOut, MaintenanceWindowOut
from tocsin.config import Settings
from tocsin.db.engine import Database
from tocsin.monitor import maintenance_store
from tocsin.monitor.maintenance import Target, Window
from tocsin.monitor.states import StateRow
from tocsin.probes.observation import SubjectKey
from tocsin.tickets.store import TicketStore

MAINTENANCE = "/api/v1/orgs/acme/maintenance"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def later(**delta: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(**delta))


async def listing(api: Api, token: str = "acme-read") -> list[dict[str, Any]]:
    status, body = await api.call("GET", MAINTENANCE, token=token)
    assert status == 200, body
    MaintenanceListOut.model_validate(body)
    windows: list[dict[str, Any]] = body["windows"]  # type: ignore[assignment]
    return windows


async def delete(api: Api, path: str, token: str = "acme-write") -> tuple[int, Any]:
    """DELETE `path`: (status, the JSON error, or None for 204 No Content)."""
    headers = {"Authorization": f"Bearer {token_value(token)}"}
    async with api.session.delete(api.base + path, headers=headers) as response:
        if response.status == 204:
            assert await response.read() == b""
            return 204, None
        return response.status, await response.json()


async def add(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    status, window = await api.call("POST", MAINTENANCE, json=body)
    assert status == 201, window
    MaintenanceWindowOut.model_validate(window)
    return window


async def test_add_list_and_remove_round_trip(api: Api, database: Database) -> None:
    before = datetime.now(UTC)
    start, end = later(hours=1), later(hours=3)
    one_off = await add(api, {"subject": "cam-1", "start": start, "end": end, "reason": "swap"})
    assert one_off["id"] == "1"
    assert one_off["source"] == "api"
    assert (one_off["subject"], one_off["space"], one_off["labels"]) == ("cam-1", None, None)
    assert (one_off["start"], one_off["end"]) == (start, end)
    assert (one_off["active"], one_off["until"], one_off["next_start"]) == (False, None, start)
    assert one_off["reason"] == "swap"
    assert one_off["created_by"] == "acme-write"
    assert parse(one_off["created_at"]) >= before.replace(microsecond=0)

    now = await add(api, {"space": "b2", "for": "2h"})
    assert now["active"] is True
    assert now["next_start"] is None
    assert timedelta(hours=2) - timedelta(seconds=5) < parse(now["until"]) - before
    assert parse(now["until"]) == parse(now["end"])

    weekly = await add(
        api,
        {"labels": {"rack": "A3"}, "cron": "0 2 * * sun", "duration": "90m", "reason": "patch"},
    )
    assert (weekly["labels"], weekly["cron"], weekly["duration_seconds"]) == (
        {"rack": "A3"},
        "0 2 * * sun",
        5400.0,
    )
    assert (weekly["start"], weekly["end"]) == (None, None)
    next_start = parse(weekly["next_start"])
    assert next_start.weekday() == 6
    assert (next_start.hour, next_start.minute) == (2, 0)
    assert weekly["active"] is (weekly["until"] is not None)

    windows = await listing(api)
    assert [w["id"] for w in windows] == ["1", "2", "3"]
    assert windows[0] == one_off
    assert len(await maintenance_store.load(database.read, "acme")) == 3

    status, body = await delete(api, f"{MAINTENANCE}/1")
    assert status == 204, body
    assert [w["id"] for w in await listing(api)] == ["2", "3"]
    status, body = await delete(api, f"{MAINTENANCE}/1")
    assert status == 404
    assert body["error"] == {
        "code": "not_found",
        "message": "no maintenance window '1'",
        "field": "id",
    }


async def test_a_one_off_window_that_has_ended_is_not_listed(api: Api) -> None:
    ended = await add(api, {"subject": "cam-1", "start": later(hours=-3), "end": later(hours=-1)})
    assert (ended["active"], ended["until"], ended["next_start"]) == (False, None, None)
    ongoing = await add(api, {"subject": "cam-1", "start": later(hours=-1), "end": later(hours=1)})
    assert ongoing["active"] is True
    assert ongoing["until"] == ongoing["end"]
    assert [w["id"] for w in await listing(api)] == [ongoing["id"]]


async def test_start_and_end_may_have_any_offset_and_are_answered_in_utc(api: Api) -> None:
    year = datetime.now(UTC).year + 1
    window = await add(
        api,
        {
            "subject": "cam-1",
            "start": f"{year}-06-01T10:00:00+02:00",
            "end": f"{year}-06-01 12:30:00.25-01:00",
        },
    )
    assert (window["start"], window["end"]) == (
        f"{year}-06-01T08:00:00Z",
        f"{year}-06-01T13:30:00.250000Z",
    )


def body_with(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": "cam-1", "start": later(hours=1), "end": later(hours=2)}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


RECURRING: dict[str, Any] = {"subject": "cam-1", "cron": "0 2 * * *", "duration": "2h"}


@pytest.mark.parametrize(
    ("body", "code", "field", "message"),
    [
        pytest.param(
            body_with(space="b2"),
            "invalid_value",
            "subject",
            "subject: give exactly one of subject, space or labels",
            id="subject-and-space",
        ),
        pytest.param(
            body_with(subject=None),
            "invalid_value",
            "subject",
            "subject: give exactly one of subject, space or labels",
            id="no-target",
        ),
        pytest.param(
            body_with(subject=None, labels={}),
            "invalid_value",
            "subject",
            "subject: give exactly one of subject, space or labels",
            id="empty-labels",
        ),
        pytest.param(
            body_with(subject="a/b"),
            "invalid_value",
            "subject",
            "subject: 'a/b' is not a subject id (no '/', 1-128 characters)",
            id="subject-with-slash",
        ),
        pytest.param(
            body_with(subject=None, labels={"rack": 3}),
            "invalid_value",
            "labels.rack",
            "labels.rack: Input should be a valid string",
            id="label-not-a-string",
        ),
        pytest.param(
            body_with(start=later(hours=2), end=later(hours=1)),
            "invalid_value",
            "end",
            "end: must be after start",
            id="end-before-start",
        ),
        pytest.param(
            body_with(end=None),
            "invalid_value",
            "end",
            "end: give start and end",
            id="start-without-end",
        ),
        pytest.param(
            body_with(end=later(days=400)),
            "invalid_value",
            "end",
            "end: a window lasts at most 366 days",
            id="too-long",
        ),
        pytest.param(
            body_with(start="2026-12-24T18:00:00"),
            "invalid_value",
            "start",
            "start: needs a UTC offset, e.g. 2026-12-24T18:00:00Z",
            id="start-without-offset",
        ),
        pytest.param(
            body_with(start="tomorrow"),
            "invalid_value",
            "start",
            "start: not an RFC 3339 date-time, e.g. 2026-12-24T18:00:00Z",
            id="start-not-a-date",
        ),
        pytest.param(
            body_with(end=1767225600),
            "invalid_value",
            "end",
            "end: not an RFC 3339 date-time, e.g. 2026-12-24T18:00:00Z",
            id="end-a-number",
        ),
        pytest.param(
            body_with(start="2026-02-30T10:00:00Z"),
            "invalid_value",
            "start",
            "start: not a valid date-time, e.g. 2026-12-24T18:00:00Z",
            id="start-no-such-day",
        ),
        pytest.param(
            body_with(cron="0 2 * * *", duration="2h"),
            "invalid_value",
            "start",
            "start: give start and end, or cron and duration",
            id="start-and-cron",
        ),
        pytest.param(
            {**RECURRING, "cron": "61 * * * *"},
            "invalid_value",
            "cron",
            None,
            id="bad-cron",
        ),
        pytest.param(
            {**RECURRING, "cron": "0 2 * *"},
            "invalid_value",
            "cron",
            "cron: not a crontab schedule (5 fields, UTC): Wrong number of fields; got 4, "
            "expected 5",
            id="cron-four-fields",
        ),
        pytest.param(
            {**RECURRING, "cron": "0 0 30 2 *"},
            "invalid_value",
            "cron",
            "cron: '0 0 30 2 *' never fires (no such date)",
            id="cron-never-fires",
        ),
        pytest.param(
            {**RECURRING, "duration": "soon"},
            "invalid_value",
            "duration",
            "duration: 'soon' is not a duration: write a number and a unit (ms, s, m, h, d), "
            "e.g. '90s'",
            id="bad-duration",
        ),
        pytest.param(
            {**RECURRING, "duration": 7200},
            "invalid_value",
            "duration",
            "duration: a duration string such as '90m' or '2h'",
            id="duration-a-number",
        ),
        pytest.param(
            {**RECURRING, "duration": "0s"},
            "invalid_value",
            "duration",
            "duration: must be positive and at most 366 days",
            id="duration-zero",
        ),
        pytest.param(
            {"subject": "cam-1", "cron": "0 2 * * *"},
            "invalid_value",
            "duration",
            "duration: give cron and duration",
            id="cron-without-duration",
        ),
        pytest.param(
            {"subject": "cam-1", "for": "later"},
            "invalid_value",
            "for",
            None,
            id="bad-for",
        ),
        pytest.param(
            {"subject": "cam-1", "for": "99999999999d"},
            "invalid_value",
            "for",
            "for: too long",
            id="for-beyond-timedelta",
        ),
        pytest.param(
            {"subject": "cam-1", "for": "400d"},
            "invalid_value",
            "for",
            "for: must be positive and at most 366 days",
            id="for-too-long",
        ),
        pytest.param(
            body_with(**{"for": "2h"}),
            "invalid_value",
            "for",
            "for: give for, or start and end, not both",
            id="for-and-start",
        ),
        pytest.param(
            {**RECURRING, "for": "2h"},
            "invalid_value",
            "for",
            "for: give for, or cron and duration, not both",
            id="for-and-cron",
        ),
        pytest.param(
            body_with(reason="r" * 501),
            "invalid_value",
            "reason",
            None,
            id="reason-too-long",
        ),
        pytest.param(
            body_with(colour="red"),
            "unknown_field",
            "colour",
            "unknown field 'colour'",
            id="unknown-field",
        ),
        pytest.param(
            body_with(for_="2h"),
            "unknown_field",
            "for_",
            "unknown field 'for_'",
            id="for-underscore",
        ),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_writes_nothing(
    api: Api,
    database: Database,
    body: dict[str, Any],
    code: str,
    field: str,
    message: str | None,
) -> None:
    status, answer = await api.call("POST", MAINTENANCE, json=body)
    assert status == 422, answer
    ErrorOut.model_validate(answer)
    error: dict[str, Any] = answer["error"]  # type: ignore[assignment]
    assert (error["code"], error["field"]) == (code, field), error
    assert field.split(".")[-1] in error["message"]
    if message is not None:
        assert error["message"] == message
    assert await maintenance_store.load(database.read) == []
    assert await listing(api) == []


@pytest.mark.parametrize(
    "data",
    [b'{"subject": ', b"[1, 2]", b'"cam-1"', b"\xff\xfe{}"],
    ids=["truncated", "array", "string", "not-utf8"],
)
async def test_a_body_that_is_not_a_json_object_is_400(
    api: Api, database: Database, data: bytes
) -> None:
    status, answer = await api.call("POST", MAINTENANCE, data=data)
    assert status == 400
    assert answer["error"]["code"] == "malformed_json"  # type: ignore[index]
    assert await maintenance_store.load(database.read) == []


async def test_scopes_and_orgs(api: Api, database: Database) -> None:
    body = {"subject": "cam-1", "for": "1h"}
    status, answer = await api.call("POST", MAINTENANCE, token="acme-read", json=body)
    assert (status, answer["error"]["code"]) == (403, "forbidden")  # type: ignore[index]
    status, answer = await api.call("POST", MAINTENANCE, token="acme-workflow", json=body)
    assert status == 403
    status, answer = await api.call("POST", MAINTENANCE, token=None, json=body)
    assert status == 401
    assert await maintenance_store.load(database.read) == []

    window = await add(api, body)
    status, _ = await delete(api, f"{MAINTENANCE}/{window['id']}", token="acme-read")
    assert status == 403
    assert [w["id"] for w in await listing(api, token="acme-workflow")] == [window["id"]]

    # another org's token: the org does not exist for it; nor does acme's window in beta
    for method in ("GET", "POST", "DELETE"):
        path = MAINTENANCE + (f"/{window['id']}" if method == "DELETE" else "")
        status, answer = await api.call(method, path, token="beta-write", json=body)
        assert (status, answer["error"]["code"]) == (404, "org_not_found")  # type: ignore[index]
    beta = "/api/v1/orgs/beta/maintenance"
    status, answer = await delete(api, f"{beta}/{window['id']}", token="beta-write")
    assert (status, answer["error"]["field"]) == (404, "id")  # type: ignore[index]
    status, answer = await api.call("GET", beta, token="beta-write")
    assert answer == {"windows": []}
    assert len(await maintenance_store.load(database.read, "acme")) == 1


@pytest.mark.parametrize("window_id", ["abc", "9" * 30, "\u0663", "0", "-1"])
async def test_deleting_an_unknown_id_is_404(api: Api, window_id: str) -> None:
    status, answer = await delete(api, f"{MAINTENANCE}/{window_id}")
    assert status == 404, answer
    assert answer["error"]["field"] == "id"  # type: ignore[index]


async def test_a_config_window_cannot_be_deleted_through_the_api(api: Api) -> None:
    status, answer = await delete(api, f"{MAINTENANCE}/config-1")
    assert status == 409
    assert answer["error"] == {
        "code": "defined_in_config",
        "message": "config-1: defined in the config file; remove it there",
        "field": "id",
    }


# -- with a running monitor's hooks --------------------------------------------------------------


def state_row(kind: str, subject_id: str) -> StateRow:
    now = datetime.now(UTC)
    key = SubjectKey("acme", kind, subject_id)
    return StateRow(key, subject_id, "up", False, now, None, None, {}, now)


@dataclass
class Monitor:
    """Stands in for the running monitor: its windows (the config's and the store's) and the
    subjects it knows; counts the changes it is told of."""

    database: Database
    config: list[Window] = field(default_factory=list)
    stored: list[Window] = field(default_factory=list)
    changes: int = 0

    def windows(self, org: str) -> list[Window]:
        return [w for w in [*self.stored, *self.config] if w.org == org]  # any order

    async def changed(self) -> None:
        self.changes += 1
        self.stored = await maintenance_store.load(self.database.read)

    def subjects(self, org: str) -> list[StateRow]:
        rows = [state_row("device", "cam-1"), state_row("integration", "bms")]
        return [*rows, state_row("space", "b2")] if org == "acme" else []


@pytest.fixture
async def monitor(database: Database) -> Monitor:
    config = Window(
        id="config-1",
        org="acme",
        target=Target(space="b2"),
        cron="0 2 * * *",
        duration=timedelta(hours=1),
        source="config",
    )
    return Monitor(database, config=[config])


@pytest.fixture
async def live_api(settings: Settings, store: TicketStore, monitor: Monitor) -> AsyncIterator[Api]:
    app = make_app(settings, store, subjects=monitor.subjects)
    context = app[API_CONTEXT]
    context.maintenance, context.maintenance_changed = monitor.windows, monitor.changed
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Api(session, str(server.make_url("")).rstrip("/"))
    await server.close()


async def test_with_a_monitor_it_lists_its_windows_and_tells_it_of_changes(
    live_api: Api, monitor: Monitor
) -> None:
    first = await add(live_api, {"subject": "bms", "for": "30m"})
    second = await add(live_api, {"subject": "b2", "for": "1h"})  # a space, by its id
    assert monitor.changes == 2
    windows = await listing(live_api)
    assert [w["id"] for w in windows] == ["config-1", first["id"], second["id"]]
    assert windows[0]["source"] == "config"
    assert windows[0]["created_at"] is None

    status, answer = await delete(live_api, f"{MAINTENANCE}/config-1")
    assert (status, answer["error"]["code"]) == (409, "defined_in_config")  # type: ignore[index]
    status, _ = await delete(live_api, f"{MAINTENANCE}/config-7")  # no such config window
    assert status == 404
    assert monitor.changes == 2
    status, _ = await delete(live_api, f"{MAINTENANCE}/{first['id']}")
    assert status == 204
    assert monitor.changes == 3
    assert [w["id"] for w in await listing(live_api)] == ["config-1", second["id"]]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"subject": "nope", "for": "1h"}, "subject", "subject: no subject 'nope' in the org"),
        ({"space": "cam-1", "for": "1h"}, "space", "space: no space 'cam-1' in the org"),
    ],
)
async def test_with_a_monitor_an_unknown_subject_or_space_is_422(
    live_api: Api, monitor: Monitor, body: dict[str, Any], field: str, message: str
) -> None:
    status, answer = await live_api.call("POST", MAINTENANCE, json=body)
    assert status == 422
    assert answer["error"] == {"code": "invalid_value", "message": message, "field": field}
    assert monitor.changes == 0
    assert await maintenance_store.load(monitor.database.read) == []
