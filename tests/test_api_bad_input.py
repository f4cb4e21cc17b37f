"""Bad input gets a 4xx JSON error of the contract's shape naming the field; never a 500,
and never a write."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import Api, token_value
from tocsin.api.schemas import ErrorOut
from tocsin.tickets.store import TicketStore

TICKETS = "/api/v1/orgs/acme/tickets"
SUBJECT = {"type": "device", "id": "cam-1", "name": "Camera 1"}
WORKFLOW = {"source": "workflow", "subject": SUBJECT, "kind": "cam_down"}
USER = {"source": "user", "subject": SUBJECT}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int
    code: str
    field: str | None
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = dict(base)
    body.update(changes)
    return body


def without(base: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


def post(path: str, status: int, code: str, field: str | None, **kwargs: Any) -> Case:
    return Case("POST", path, status, code, field, **kwargs)


def cursor_for(number: str) -> str:
    """A cursor as the API spells them, around any text (to forge one)."""
    encoded = base64.urlsafe_b64encode(f"seq:{number}".encode()).decode().rstrip("=")
    return quote(encoded)


JSON_TYPE = {"Content-Type": "application/json"}
ARABIC_THREE = "\u0663"  # str.isdigit() says yes

CASES = [
    # -- malformed bodies: 400 -----------------------------------------------------------------
    pytest.param(
        post(TICKETS, 400, "malformed_json", None, data=b'{"source": ', headers=JSON_TYPE),
        id="malformed-json",
    ),
    pytest.param(
        post(TICKETS, 400, "malformed_json", None, data=b"\xff\xfe{}", headers=JSON_TYPE),
        id="not-utf8",
    ),
    pytest.param(post(TICKETS, 400, "malformed_json", None, json=[WORKFLOW]), id="json-array"),
    pytest.param(post(TICKETS, 400, "malformed_json", None, json="workflow"), id="json-string"),
    pytest.param(post(TICKETS, 400, "malformed_json", None, json=42), id="json-number"),
    pytest.param(
        post(TICKETS, 400, "malformed_json", None, data=b"[" * 50_000, headers=JSON_TYPE),
        id="deeply-nested-array",
    ),
    pytest.param(
        post(TICKETS, 400, "malformed_json", None, data=b'{"a":' * 10_000, headers=JSON_TYPE),
        id="deeply-nested-object",
    ),
    pytest.param(
        Case(
            "PATCH",
            f"{TICKETS}/1",
            400,
            "malformed_json",
            None,
            data=b'{"description": ' + b"[" * 500 + b"]" * 500 + b"}",
            headers=JSON_TYPE,
        ),
        id="nested-within-the-decoders-depth",
    ),
    pytest.param(
        post(f"{TICKETS}/1/comments", 400, "malformed_json", None, json=None, data=b"null"),
        id="json-null",
    ),
    # -- invalid values: 422 naming the field --------------------------------------------------
    pytest.param(
        post(TICKETS, 422, "unknown_field", "colour", json=with_(WORKFLOW, colour="red")),
        id="unknown-field",
    ),
    pytest.param(
        post(
            TICKETS,
            422,
            "unknown_field",
            "subject.floor",
            json=with_(WORKFLOW, subject={**SUBJECT, "floor": 2}),
        ),
        id="unknown-nested-field",
    ),
    pytest.param(
        post(
            TICKETS,
            422,
            "invalid_value",
            "subject.id",
            json=with_(WORKFLOW, subject={**SUBJECT, "id": 17}),
        ),
        id="subject-id-number",
    ),
    pytest.param(
        post(
            TICKETS,
            422,
            "invalid_value",
            "subject.id",
            json=with_(WORKFLOW, subject={**SUBJECT, "id": "a/b"}),
        ),
        id="subject-id-with-slash",
    ),
    pytest.param(
        post(
            TICKETS,
            422,
            "invalid_value",
            "subject.type",
            json=with_(WORKFLOW, subject={**SUBJECT, "type": "car"}),
        ),
        id="subject-type-unknown",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "subject", json=with_(WORKFLOW, subject="cam-1")),
        id="subject-string",
    ),
    pytest.param(
        post(TICKETS, 422, "missing_field", "subject", json=without(WORKFLOW, "subject")),
        id="missing-subject",
    ),
    pytest.param(
        post(
            TICKETS,
            422,
            "missing_field",
            "subject.name",
            json=with_(WORKFLOW, subject=without(SUBJECT, "name")),
        ),
        id="missing-subject-name",
    ),
    pytest.param(
        post(TICKETS, 422, "missing_field", "source", json=without(WORKFLOW, "source")),
        id="missing-source",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "source", json=with_(WORKFLOW, source=3)),
        id="source-number",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "source", json=with_(WORKFLOW, source="robot")),
        id="source-unknown",
    ),
    pytest.param(
        post(
            TICKETS, 422, "invalid_value", "source", json=with_(WORKFLOW, source="platform_outage")
        ),
        id="source-platform-outage",
    ),
    pytest.param(
        post(
            TICKETS, 422, "invalid_value", "source", json=with_(WORKFLOW, source="health_monitor")
        ),
        id="source-health-monitor",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(USER, kind="cam_down")),
        id="user-free-form-kind",
    ),
    pytest.param(
        post(TICKETS, 422, "missing_field", "kind", json=without(WORKFLOW, "kind")),
        id="workflow-without-kind",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(WORKFLOW, kind="k" * 65)),
        id="kind-too-long",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(WORKFLOW, kind="cam\x07down")),
        id="kind-unprintable",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(WORKFLOW, kind="cam\ndown")),
        id="kind-newline",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(WORKFLOW, kind="")),
        id="kind-empty",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(WORKFLOW, kind=" cam_down")),
        id="kind-leading-space",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "kind", json=with_(WORKFLOW, kind=["cam"])),
        id="kind-list",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "dedup_key", json=with_(USER, dedup_key="k")),
        id="user-with-dedup-key",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "dedup_key", json=with_(WORKFLOW, dedup_key="")),
        id="dedup-key-empty",
    ),
    pytest.param(
        post(
            TICKETS,
            422,
            "invalid_value",
            "description",
            json=with_(WORKFLOW, description="d" * 20_001),
        ),
        id="description-too-long",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "description", json=with_(WORKFLOW, description=None)),
        id="description-null",
    ),
    pytest.param(
        post(TICKETS, 422, "invalid_value", "actor_name", json=with_(WORKFLOW, actor_name="")),
        id="actor-name-empty",
    ),
    pytest.param(
        post(f"{TICKETS}/1/resolve", 422, "invalid_value", "comment", json={"comment": ["a"]}),
        id="comment-list",
    ),
    pytest.param(
        post(f"{TICKETS}/1/start", 422, "invalid_value", "comment", json={"comment": ""}),
        id="transition-comment-empty",
    ),
    pytest.param(
        post(f"{TICKETS}/1/start", 422, "unknown_field", "state", json={"state": "resolved"}),
        id="transition-unknown-field",
    ),
    pytest.param(
        post(f"{TICKETS}/1/comments", 422, "missing_field", "body", json={}),
        id="comment-missing-body",
    ),
    pytest.param(
        post(f"{TICKETS}/1/comments", 422, "invalid_value", "body", json={"body": ["a", "b"]}),
        id="comment-body-list",
    ),
    pytest.param(
        post(f"{TICKETS}/1/comments", 422, "invalid_value", "body", json={"body": "   "}),
        id="comment-body-blank",
    ),
    pytest.param(
        Case("PATCH", f"{TICKETS}/1", 422, "missing_field", "description", json={}),
        id="patch-missing-description",
    ),
    pytest.param(
        Case("PATCH", f"{TICKETS}/1", 422, "invalid_value", "description", json={"description": 1}),
        id="patch-description-number",
    ),
    pytest.param(
        Case(
            "PATCH",
            f"{TICKETS}/1",
            422,
            "invalid_value",
            "description",
            data=b'{"description": NaN}',
            headers=JSON_TYPE,
        ),
        id="patch-description-nan",
    ),
    # -- too large: 413 ------------------------------------------------------------------------
    pytest.param(
        post(
            TICKETS,
            413,
            "body_too_large",
            None,
            data=b'{"description": "' + b"x" * (64 * 1024) + b'"}',
            headers=JSON_TYPE,
        ),
        id="body-over-64-kib",
    ),
    # -- unknown things: 404, bad numbers: 400 -------------------------------------------------
    pytest.param(
        Case("GET", f"{TICKETS}/99", 404, "ticket_not_found", "seq"), id="unknown-seq-get"
    ),
    pytest.param(
        post(f"{TICKETS}/99/start", 404, "ticket_not_found", "seq"), id="unknown-seq-start"
    ),
    pytest.param(
        post(f"{TICKETS}/99/comments", 404, "ticket_not_found", "seq", json={"body": "hi"}),
        id="unknown-seq-comment",
    ),
    pytest.param(
        Case("PATCH", f"{TICKETS}/99", 404, "ticket_not_found", "seq", json={"description": ""}),
        id="unknown-seq-patch",
    ),
    pytest.param(Case("GET", f"{TICKETS}/0", 404, "ticket_not_found", "seq"), id="seq-zero"),
    pytest.param(Case("GET", f"{TICKETS}/abc", 400, "invalid_seq", "seq"), id="seq-word"),
    pytest.param(Case("GET", f"{TICKETS}/-1", 400, "invalid_seq", "seq"), id="seq-negative"),
    pytest.param(Case("GET", f"{TICKETS}/1.5", 400, "invalid_seq", "seq"), id="seq-fraction"),
    pytest.param(Case("GET", f"{TICKETS}/{'9' * 30}", 400, "invalid_seq", "seq"), id="seq-huge"),
    pytest.param(post(f"{TICKETS}/x/resolve", 400, "invalid_seq", "seq"), id="seq-word-resolve"),
    pytest.param(
        Case("GET", "/api/v1/orgs/nope/tickets", 404, "org_not_found", "org"), id="unknown-org"
    ),
    pytest.param(
        post("/api/v1/orgs/nope/tickets", 404, "org_not_found", "org", json=WORKFLOW),
        id="unknown-org-open",
    ),
    # -- query parameters ----------------------------------------------------------------------
    pytest.param(
        Case("GET", f"{TICKETS}?colour=red", 400, "unknown_parameter", "colour"),
        id="unknown-query-param",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?state=closed", 422, "invalid_value", "state"), id="state-unknown"
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?state=open,closed", 422, "invalid_value", "state"),
        id="state-comma-one-unknown",
    ),
    pytest.param(Case("GET", f"{TICKETS}?limit=0", 422, "invalid_value", "limit"), id="limit-0"),
    pytest.param(
        Case("GET", f"{TICKETS}?limit=201", 422, "invalid_value", "limit"), id="limit-201"
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?limit=ten", 422, "invalid_value", "limit"), id="limit-word"
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?limit=-5", 422, "invalid_value", "limit"), id="limit-negative"
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?limit={'9' * 40}", 422, "invalid_value", "limit"),
        id="limit-huge",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?cursor=not-a-cursor", 422, "invalid_value", "cursor"),
        id="cursor-garbage",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?cursor=c2VxOng", 422, "invalid_value", "cursor"),  # "seq:x"
        id="cursor-not-a-number",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?cursor=%FF%FE", 422, "invalid_value", "cursor"),
        id="cursor-binary",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?cursor={cursor_for('9' * 30)}", 422, "invalid_value", "cursor"),
        id="cursor-beyond-64-bits",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?cursor={cursor_for(ARABIC_THREE)}", 422, "invalid_value", "cursor"),
        id="cursor-non-ascii-digit",
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?source=robot", 422, "invalid_value", "source"), id="source-param"
    ),
    pytest.param(
        Case("GET", f"{TICKETS}?subject_type=car", 422, "invalid_value", "subject_type"),
        id="subject-type-param",
    ),
    # -- routes and methods --------------------------------------------------------------------
    pytest.param(Case("GET", "/api/v1/nothing-here", 404, "not_found", None), id="unknown-route"),
    pytest.param(post(f"{TICKETS}/1/close", 404, "not_found", None), id="unknown-ticket-action"),
    pytest.param(
        Case("DELETE", f"{TICKETS}/1", 405, "method_not_allowed", None), id="delete-ticket"
    ),
    pytest.param(
        Case("PUT", TICKETS, 405, "method_not_allowed", None, json=WORKFLOW), id="put-tickets"
    ),
    pytest.param(
        Case("GET", f"{TICKETS}/1/start", 405, "method_not_allowed", None), id="get-start"
    ),
]


@pytest.fixture
async def one_ticket(api: Api, store: TicketStore) -> dict[str, Any]:
    status, ticket = await api.call("POST", TICKETS, json=WORKFLOW)
    assert status == 201
    assert await store.count() == 1
    return ticket


@pytest.mark.parametrize("case", CASES)
async def test_it_answers_bad_input_with_a_json_error_naming_the_field(
    api: Api, store: TicketStore, one_ticket: dict[str, Any], case: Case
) -> None:
    headers = {"Authorization": f"Bearer {token_value('acme-write')}", **case.headers}
    kwargs: dict[str, Any] = {"headers": headers}
    if case.data is not None:
        kwargs["data"] = case.data
    elif case.json is not None:
        kwargs["json"] = case.json
    async with api.session.request(case.method, api.base + case.path, **kwargs) as response:
        assert response.content_type == "application/json"
        body = await response.json()
        status, response_headers = response.status, response.headers
    assert (status, body["error"]["code"], body["error"]["field"]) == (
        case.status,
        case.code,
        case.field,
    ), body
    ErrorOut.model_validate(body)
    assert body["error"]["message"]
    if case.field is not None and status == 422:
        assert case.field.split(".")[-1] in body["error"]["message"]
    if status == 405:
        assert case.method not in response_headers["Allow"].split(",")
    # nothing was written
    assert await store.count() == 1
    _, after = await api.call("GET", f"{TICKETS}/1", token="acme-read")
    assert after == one_ticket


async def test_it_writes_nothing_for_a_burst_of_bad_opens(api: Api, store: TicketStore) -> None:
    bad_bodies = [
        with_(WORKFLOW, source="platform_outage"),
        with_(USER, kind="device_gone"),
        with_(WORKFLOW, kind="x" * 100),
        with_(WORKFLOW, subject={**SUBJECT, "id": 5}),
        without(WORKFLOW, "subject"),
        with_(WORKFLOW, extra=True),
    ]
    for body in bad_bodies:
        status, _ = await api.call("POST", TICKETS, json=body)
        assert 400 <= status < 500
    assert await store.count() == 0
    status, listing = await api.call("GET", TICKETS, token="acme-read")
    assert listing == {"tickets": [], "next_cursor": None}


async def test_an_empty_body_on_a_transition_means_no_comment(api: Api) -> None:
    await api.call("POST", TICKETS, json=WORKFLOW)
    headers = {"Authorization": f"Bearer {token_value('acme-write')}"}
    async with api.session.post(f"{api.base}{TICKETS}/1/start", headers=headers) as response:
        assert response.status == 200
        ticket = await response.json()
    assert ticket["state"] == "in_progress"
    assert "comment" not in ticket["timeline"][-1]


async def test_a_bad_request_without_a_token_is_still_401_first(api: Api) -> None:
    status, body = await api.call("POST", TICKETS, token=None, json=[1, 2])
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
