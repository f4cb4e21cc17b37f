"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

import tocsin

if TYPE_CHECKING:
    from tocsin.api.routes import Route

_REF = "#/components/schemas/{model}"


def build_document(routes: tuple[Route, ...]) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "responses": {
                str(status): _response(model, components)
                for status, model in sorted(route.responses.items())
            },
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        parameters += [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "description": q.description,
                "schema": {"type": "array", "items": q.schema} if q.repeatable else q.schema,
                **({"explode": True} if q.repeatable else {}),
            }
            for q in route.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.scopes:
            operation["security"] = [{"bearer": []}]
            operation["description"] = "Token scope: " + " or ".join(route.scopes) + "."
        if route.body is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": _schema(route.body, components)}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "tocsin", "version": tocsin.__version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_schema(name: str) -> dict[str, Any]:
    if name in ("seq", "delivery_id"):
        return {"type": "integer", "minimum": 1}
    return {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}


def _response(model: type[BaseModel] | None, components: dict[str, Any]) -> dict[str, Any]:
    if model is None:
        return {"description": "OK", "content": {"application/json": {"schema": {}}}}
    return {
        "description": model.__doc__.strip().splitlines()[0] if model.__doc__ else model.__name__,
        "content": {"application/json": {"schema": _schema(model, components)}},
    }


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}
