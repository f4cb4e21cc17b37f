"""The OpenAPI document lists exactly the routes the app serves, and what the running server
answers validates against the response models the document is generated from."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from tests.conftest import Api, token_value
from tocsin.api import schemas
from tocsin.api.app import make_app
from tocsin.config import Settings
from tocsin.tickets.store import TicketStore

OPENAPI = "/api/v1/openapi.json"
TICKETS = "/api/v1/orgs/acme/tickets"
REF_PREFIX = "#/components/schemas/"


@pytest.fixture
async def document(api: Api) -> dict[str, Any]:
    async with api.session.get(api.base + OPENAPI) as response:  # no token
        assert response.status == 200
        assert response.content_type == "application/json"
        body: dict[str, Any] = await response.json()
    return body


def served_routes(settings: Settings, store: TicketStore) -> set[tuple[str, str]]:
    app = make_app(settings, store)
    routes = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method != "HEAD":
                routes.add((route.method, resource.canonical))
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }


def refs(node: Any) -> list[str]:
    """Every $ref anywhere under `node`."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for value in node.values():
            found += refs(value)
        return found
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


async def test_the_document_is_openapi_3_and_needs_no_token(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.\d+\.\d+", document["openapi"])
    assert document["info"]["title"] == "tocsin"
    assert document["info"]["version"]
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }


async def test_the_document_lists_exactly_the_routes_the_app_serves(
    document: dict[str, Any], settings: Settings, store: TicketStore
) -> None:
    served = served_routes(settings, store)
    documented = documented_routes(document)
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert ("GET", OPENAPI) in served
    assert ("POST", TICKETS.replace("acme", "{org}") + "/{seq}/start") in served


async def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)


async def test_every_operation_has_a_unique_operation_id(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_every_request_body_schema_is_in_components(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    bodies = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            bodies += 1
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["$ref"].startswith(REF_PREFIX), (method, path)
            name = schema["$ref"].removeprefix(REF_PREFIX)
            assert name in components, (method, path, name)
            assert components[name]["type"] == "object"
    assert bodies == 7  # open, patch, start, resolve, reopen, comment, add maintenance


async def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    all_refs = refs(document)
    assert all_refs
    for ref in all_refs:
        assert ref.startswith(REF_PREFIX)
        assert ref.removeprefix(REF_PREFIX) in components, ref


async def test_the_scopes_each_route_documents_are_the_ones_it_enforces(
    document: dict[str, Any],
) -> None:
    operations = document["paths"]
    assert "security" not in operations["/healthz"]["get"]
    assert "security" not in operations[OPENAPI]["get"]
    tickets = operations["/api/v1/orgs/{org}/tickets"]
    assert tickets["post"]["security"] == [{"bearer": []}]
    assert "write or workflow" in tickets["post"]["description"]
    assert "read" in tickets["get"]["description"]


# -- real answers validate against the documented models ------------------------------------------


def response_model(
    document: dict[str, Any], method: str, template: str, status: int
) -> type[BaseModel]:
    """The pydantic model the document names for this answer (it must be documented)."""
    operation = document["paths"][template][method.lower()]
    assert str(status) in operation["responses"], f"{method} {template} {status} undocumented"
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    model = getattr(schemas, schema["$ref"].removeprefix(REF_PREFIX))
    assert isinstance(model, type)
    assert issubclass(model, BaseModel)
    return model


def template_of(path: str) -> str:
    path = path.split("?")[0]
    path = re.sub(r"^/api/v1/orgs/[^/]+/", "/api/v1/orgs/{org}/", path)
    return re.sub(r"/tickets/[^/]+", "/tickets/{seq}", path)


async def call_and_validate(
    api: Api,
    document: dict[str, Any],
    method: str,
    path: str,
    *,
    token: str | None = "acme-write",
    json: Any = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token_value(token)}"} if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if data is not None:
        kwargs["data"] = data
    elif json is not None:
        kwargs["json"] = json
    async with api.session.request(method, api.base + path, **kwargs) as response:
        status = response.status
        body: dict[str, Any] = await response.json()
    model = response_model(document, method, template_of(path), status)
    model.model_validate(body)
    return status, body


WORKFLOW = {
    "source": "workflow",
    "subject": {"type": "device", "id": "cam-1", "name": "Camera 1"},
    "kind": "cam_down",
    "dedup_key": "cam-1-down",
}
REPORT = {
    "source": "user",
    "subject": {"type": "space", "id": "lobby", "name": "Lobby"},
    "description": "Cold",
}


async def test_real_success_answers_match_the_documented_models(
    api: Api, document: dict[str, Any]
) -> None:
    run = call_and_validate
    calls: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("POST", TICKETS, WORKFLOW, 201),
        ("POST", TICKETS, WORKFLOW, 200),  # dedup
        ("POST", TICKETS, REPORT, 201),
        ("POST", TICKETS, REPORT, 200),  # lands on the open ticket as a comment
        ("POST", f"{TICKETS}/1/start", {"comment": "going"}, 200),
        ("POST", f"{TICKETS}/1/comments", {"body": "*here*"}, 201),
        ("PATCH", f"{TICKETS}/1", {"description": "new"}, 200),
        ("POST", f"{TICKETS}/1/resolve", {"comment": "done"}, 200),
        ("POST", f"{TICKETS}/1/reopen", None, 200),
        ("GET", f"{TICKETS}/1", None, 200),
        ("GET", f"{TICKETS}?limit=1", None, 200),
        ("GET", f"{TICKETS}?state=open,in_progress&q=lobby", None, 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/readyz", None, 200),
    ]
    for method, path, body, expected in calls:
        status, answer = await run(api, document, method, path, json=body)
        assert status == expected, (method, path, answer)
    _, page = await run(api, document, "GET", f"{TICKETS}?limit=1")
    assert page["next_cursor"] is not None
    # every event type the timeline can hold went through the model
    _, detail = await run(api, document, "GET", f"{TICKETS}/1")
    assert {e["type"] for e in detail["timeline"]} == {
        "opened",
        "started",
        "comment",
        "description_edited",
        "resolved",
        "reopened",
    }


async def test_real_error_answers_match_the_documented_models(
    api: Api, document: dict[str, Any]
) -> None:
    run = call_and_validate
    await run(api, document, "POST", TICKETS, json=WORKFLOW)
    await run(api, document, "POST", f"{TICKETS}/1/resolve")
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", TICKETS, {"token": None}),  # 401
        ("GET", TICKETS, {"token": "beta-write"}),  # 404 another org's
        ("POST", TICKETS, {"token": "acme-read", "json": WORKFLOW}),  # 403
        ("POST", TICKETS, {"data": b"{nope"}),  # 400
        ("POST", TICKETS, {"json": {"source": "platform_outage"}}),  # 422
        ("POST", TICKETS, {"data": b'{"description": "' + b"x" * 70_000 + b'"}'}),  # 413
        ("POST", f"{TICKETS}/1/start", {}),  # 409
        ("GET", f"{TICKETS}/42", {}),  # 404
        ("GET", f"{TICKETS}/abc", {}),  # 400
        ("GET", f"{TICKETS}?bogus=1", {}),  # 400
        ("GET", f"{TICKETS}?limit=0", {}),  # 422
        ("PATCH", f"{TICKETS}/1", {"json": {"description": 3}}),  # 422
    ]
    statuses = []
    for method, path, kwargs in cases:
        status, answer = await run(api, document, method, path, **kwargs)
        assert 400 <= status < 500
        assert set(answer["error"]) == {"code", "message", "field"}
        statuses.append(status)
    assert statuses == [401, 404, 403, 400, 422, 413, 409, 404, 400, 400, 422, 422]
