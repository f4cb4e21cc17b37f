"""Authentication and authorisation: bearer tokens, org isolation, scopes, token sources."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import TOKENS, Api, token_value
from tocsin.api.app import make_app
from tocsin.config import Settings, parse
from tocsin.tickets.store import TicketStore

TICKETS = "/api/v1/orgs/acme/tickets"
WORKFLOW_TICKET = {
    "source": "workflow",
    "subject": {"type": "device", "id": "door-1", "name": "Door 1"},
    "kind": "door_ajar",
    "description": "Door 1 is ajar",
}
USER_REPORT = {
    "source": "user",
    "subject": {"type": "space", "id": "lobby", "name": "Lobby"},
    "description": "The lobby lights flicker",
}


@asynccontextmanager
async def serve(settings: Settings, store: TicketStore) -> AsyncIterator[str]:
    """A real server on a free loopback port for `settings`; yields its base URL."""
    server = TestServer(make_app(settings, store), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def raw_call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    bearer: str | None = None,
    json: Any = None,
) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with session.request(method, url, headers=headers, json=json) as response:
        return response.status, await response.text(), dict(response.headers)


async def open_ticket(api: Api) -> int:
    status, ticket = await api.call("POST", TICKETS, token="acme-write", json=WORKFLOW_TICKET)
    assert status == 201
    seq = ticket["seq"]
    assert isinstance(seq, int)
    return seq


# -- who you are ---------------------------------------------------------------------------------


async def test_it_answers_401_with_a_bearer_challenge_when_no_token_is_sent(api: Api) -> None:
    async with api.session.get(api.base + TICKETS) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = await response.json()
    assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer not-a-known-token", id="unknown-token"),
        pytest.param("Bearer ", id="empty-bearer"),
        pytest.param(f"Basic {token_value('acme-write')}", id="basic-scheme"),
        pytest.param(token_value("acme-write"), id="no-scheme"),
    ],
)
async def test_it_answers_401_for_a_token_it_does_not_know(api: Api, header: str) -> None:
    async with api.session.get(api.base + TICKETS, headers={"Authorization": header}) as response:
        assert response.status == 401
        assert "WWW-Authenticate" in response.headers
        body = await response.json()
    assert body["error"]["code"] == "unauthorized"


async def test_it_answers_404_for_another_orgs_ticket_list(api: Api) -> None:
    status, body = await api.call("GET", TICKETS, token="beta-write")
    assert status == 404
    assert body["error"] == {"code": "org_not_found", "message": "no org 'acme'", "field": "org"}


@pytest.mark.parametrize(
    ("method", "suffix", "json"),
    [
        pytest.param("GET", "", None, id="get"),
        pytest.param("PATCH", "", {"description": "x"}, id="patch"),
        pytest.param("POST", "/start", None, id="start"),
        pytest.param("POST", "/resolve", None, id="resolve"),
        pytest.param("POST", "/reopen", None, id="reopen"),
        pytest.param("POST", "/comments", {"body": "hello"}, id="comment"),
    ],
)
async def test_it_answers_404_for_another_orgs_ticket_that_exists(
    api: Api, method: str, suffix: str, json: Any
) -> None:
    seq = await open_ticket(api)
    status, body = await api.call(method, f"{TICKETS}/{seq}{suffix}", token="beta-write", json=json)
    assert status == 404
    assert body["error"]["code"] == "org_not_found"
    _, ticket = await api.call("GET", f"{TICKETS}/{seq}", token="acme-read")
    assert ticket["state"] == "open"
    assert [e["type"] for e in ticket["timeline"]] == ["opened"]


async def test_it_answers_404_to_beta_when_opening_a_ticket_in_acme(
    api: Api, store: TicketStore
) -> None:
    status, body = await api.call("POST", TICKETS, token="beta-write", json=WORKFLOW_TICKET)
    assert status == 404
    assert body["error"]["field"] == "org"
    assert await store.count() == 0


async def test_it_answers_404_for_an_unknown_org(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/orgs/nope/tickets", token="acme-write")
    assert status == 404
    assert body["error"]["code"] == "org_not_found"
    assert body["error"]["field"] == "org"


async def test_it_answers_the_same_404_for_an_unknown_org_and_another_orgs(api: Api) -> None:
    _, unknown = await api.call("GET", "/api/v1/orgs/nope/tickets", token="beta-write")
    _, other = await api.call("GET", "/api/v1/orgs/acme/tickets", token="beta-write")
    assert unknown["error"]["code"] == other["error"]["code"]


# -- what you may do -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "json"),
    [
        pytest.param("POST", "", WORKFLOW_TICKET, id="open-workflow"),
        pytest.param("POST", "", USER_REPORT, id="open-user-report"),
        pytest.param("POST", "/1/start", None, id="start"),
        pytest.param("POST", "/1/resolve", None, id="resolve"),
        pytest.param("POST", "/1/reopen", None, id="reopen"),
        pytest.param("POST", "/1/comments", {"body": "hi"}, id="comment"),
        pytest.param("PATCH", "/1", {"description": "new"}, id="patch"),
    ],
)
async def test_a_read_token_cannot_change_anything(
    api: Api, store: TicketStore, method: str, suffix: str, json: Any
) -> None:
    await open_ticket(api)
    status, body = await api.call(method, TICKETS + suffix, token="acme-read", json=json)
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    _, ticket = await api.call("GET", f"{TICKETS}/1", token="acme-read")
    assert ticket["state"] == "open"
    assert len(ticket["timeline"]) == 1
    assert await store.count() == 1


async def test_a_read_token_can_list_and_read(api: Api) -> None:
    seq = await open_ticket(api)
    status, listing = await api.call("GET", TICKETS, token="acme-read")
    assert status == 200
    assert [t["seq"] for t in listing["tickets"]] == [seq]
    status, ticket = await api.call("GET", f"{TICKETS}/{seq}", token="acme-read")
    assert status == 200
    assert ticket["seq"] == seq


async def test_a_workflow_token_opens_comments_and_resolves_as_a_workflow(api: Api) -> None:
    status, ticket = await api.call("POST", TICKETS, token="acme-workflow", json=WORKFLOW_TICKET)
    assert status == 201
    assert ticket["source"] == "workflow"
    seq = ticket["seq"]
    status, _ = await api.call(
        "POST", f"{TICKETS}/{seq}/comments", token="acme-workflow", json={"body": "still ajar"}
    )
    assert status == 201
    status, ticket = await api.call("POST", f"{TICKETS}/{seq}/resolve", token="acme-workflow")
    assert status == 200
    assert ticket["state"] == "resolved"
    actors = [(e["type"], e["actor"]) for e in ticket["timeline"]]
    workflow = {"type": "workflow", "name": "acme-workflow"}
    assert actors == [("opened", workflow), ("comment", workflow), ("resolved", workflow)]


@pytest.mark.parametrize(
    ("method", "suffix", "json", "state_needed"),
    [
        pytest.param("POST", "/start", None, "open", id="start"),
        pytest.param("POST", "/reopen", None, "resolved", id="reopen"),
        pytest.param("PATCH", "", {"description": "new"}, "open", id="patch"),
    ],
)
async def test_a_workflow_token_cannot_start_reopen_or_edit(
    api: Api, method: str, suffix: str, json: Any, state_needed: str
) -> None:
    seq = await open_ticket(api)
    if state_needed == "resolved":
        await api.call("POST", f"{TICKETS}/{seq}/resolve", token="acme-write")
    status, body = await api.call(
        method, f"{TICKETS}/{seq}{suffix}", token="acme-workflow", json=json
    )
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert "workflow" in body["error"]["message"]
    _, ticket = await api.call("GET", f"{TICKETS}/{seq}", token="acme-read")
    assert ticket["state"] == state_needed
    assert ticket["description"] == WORKFLOW_TICKET["description"]


async def test_a_workflow_token_cannot_file_a_user_report(api: Api, store: TicketStore) -> None:
    status, body = await api.call("POST", TICKETS, token="acme-workflow", json=USER_REPORT)
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert body["error"]["field"] == "source"
    assert await store.count() == 0


async def test_a_write_token_can_do_everything(api: Api) -> None:
    status, ticket = await api.call("POST", TICKETS, token="acme-write", json=WORKFLOW_TICKET)
    assert status == 201
    seq = ticket["seq"]
    path = f"{TICKETS}/{seq}"
    calls: list[tuple[str, str, Any, int]] = [
        ("POST", path + "/start", None, 200),
        ("POST", path + "/comments", {"body": "on it"}, 201),
        ("PATCH", path, {"description": "Door 1 hinge broken"}, 200),
        ("POST", path + "/resolve", {"comment": "fixed"}, 200),
        ("POST", path + "/reopen", None, 200),
        ("GET", path, None, 200),
        ("GET", TICKETS, None, 200),
        ("POST", TICKETS, USER_REPORT, 201),
    ]
    for method, url, json, expected in calls:
        status, body = await api.call(method, url, token="acme-write", json=json)
        assert status == expected, (method, url, body)


# -- where tokens come from ----------------------------------------------------------------------


def _token_config(db_url: str, source_line: str) -> str:
    return "\n".join(
        [
            "[store]",
            f'url = "{db_url}"',
            "[[orgs]]",
            'slug = "acme"',
            'name = "Acme"',
            "[[orgs.tokens]]",
            'name = "ops"',
            'scope = "write"',
            source_line,
        ]
    )


@pytest.mark.parametrize("source", ["token_file", "token_env", "token_sha256"])
async def test_a_token_from_each_source_authenticates(
    tmp_path: Path, db_url: str, store: TicketStore, source: str
) -> None:
    secret = "s3cret-from-" + source.replace("_", "-")
    (tmp_path / "ops.token").write_text(secret + "\n", encoding="utf-8")
    lines = {
        "token_file": 'token_file = "ops.token"',
        "token_env": 'token_env = "TOCSIN_OPS_TOKEN"',
        "token_sha256": f'token_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"',
    }
    settings = parse(
        _token_config(db_url, lines[source]),
        base_dir=tmp_path,
        env={"TOCSIN_OPS_TOKEN": secret},
    )
    async with serve(settings, store) as base, aiohttp.ClientSession() as session:
        status, text, _ = await raw_call(session, "GET", base + TICKETS, bearer=secret)
        assert status == 200, text
        status, _, _ = await raw_call(session, "GET", base + TICKETS, bearer=secret + "x")
        assert status == 401
        status, text, _ = await raw_call(
            session, "POST", base + TICKETS, bearer=secret, json=WORKFLOW_TICKET
        )
        assert status == 201
        assert '"name": "ops"' in text
        assert secret not in text


async def test_the_token_value_never_appears_in_a_response(api: Api) -> None:
    seq = await open_ticket(api)
    path = f"{TICKETS}/{seq}"
    seen: list[str] = []
    async with aiohttp.ClientSession() as session:
        for name in TOKENS:
            bearer = token_value(name)
            for method, url, json in [
                ("GET", TICKETS, None),
                ("GET", path, None),
                ("POST", TICKETS, WORKFLOW_TICKET),
                ("POST", TICKETS, USER_REPORT),
                ("POST", path + "/start", None),
                ("POST", path + "/comments", {"body": "hello"}),
                ("PATCH", path, {"description": "edited"}),
                ("POST", path + "/resolve", None),
                ("POST", path + "/reopen", None),
                ("POST", path + "/nope", None),
            ]:
                _, text, headers = await raw_call(
                    session, method, api.base + url, bearer=bearer, json=json
                )
                seen.append(text + repr(headers))
        _, text, headers = await raw_call(
            session, "GET", api.base + TICKETS, bearer="wrong-token-value"
        )
        seen.append(text + repr(headers))
    for text in seen:
        for name in TOKENS:
            assert token_value(name) not in text
        assert "wrong-token-value" not in text
