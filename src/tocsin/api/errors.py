"""Every error the API answers has one shape: {"error": {"code", "message", "field"}}.

The middleware turns domain errors and aiohttp's own HTTP errors (404 for an unknown route, 405,
413 for a body over the limit) into that shape, so bad input never becomes a 500 or HTML.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tocsin.db.writer import StoreClosed, StoreUnavailable
from tocsin.tickets.errors import DedupConflict, IllegalTransition, InvalidTicket, TicketNotFound

log = structlog.get_logger("tocsin.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": {"code": self.code, "message": self.message, "field": self.field}}
        return web.json_response(body, status=self.status, headers=self.headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def from_validation_error(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, as an API error naming its field."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or None
    if error["type"] == "json_invalid":
        return ApiError(400, "malformed_json", f"the body is not valid JSON: {error['msg']}")
    if error["type"] == "model_type" and field is None:
        return ApiError(400, "malformed_json", "the body must be a JSON object")
    if error["type"] == "extra_forbidden":
        return ApiError(422, "unknown_field", f"unknown field {field!r}", field)
    if error["type"] == "missing":
        return ApiError(422, "missing_field", f"{field} is required", field)
    message = str(error["msg"]).removeprefix("Value error, ")
    return ApiError(422, "invalid_value", f"{field}: {message}" if field else message, field)


def from_domain_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, TicketNotFound):
        return ApiError(404, "ticket_not_found", str(exc), "seq")
    if isinstance(exc, IllegalTransition):
        return ApiError(409, "illegal_transition", str(exc), "state")
    if isinstance(exc, DedupConflict):
        return ApiError(409, "dedup_conflict", str(exc), "dedup_key")
    if isinstance(exc, InvalidTicket):
        return ApiError(422, "invalid_value", f"{exc.field}: {exc}", exc.field)
    if isinstance(exc, StoreUnavailable | StoreClosed) or _lost_database(exc):
        return ApiError(503, "store_unavailable", "the ticket store is not available; retry")
    return None


def _lost_database(exc: Exception) -> bool:
    """A read that could not reach the database (a PostgreSQL server restarting, the network
    down): the store is unavailable, not the request wrong, nor a bug."""
    if isinstance(exc, OperationalError | InterfaceError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def as_api_error(exc: Exception) -> ApiError | None:
    """The API error an exception stands for: its own, a body pydantic refused, or a domain
    error; None for anything else (a bug)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    return from_domain_error(exc)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            message = "the request body is larger than 64 KiB"
        elif exc.status == 404:
            message = f"no such route: {request.method} {request.path}"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return ApiError(exc.status, code, message, headers=headers).response()
    except Exception as exc:
        mapped = as_api_error(exc)
        if mapped is not None:
            return mapped.response()
        log.exception("unhandled error", method=request.method, path=request.path)
        return ApiError(500, "internal_error", "an internal error; it has been logged").response()


async def read_json_object(request: web.Request) -> bytes:
    """The raw body (at most the app's client_max_size); an empty body reads as {}."""
    body = await request.read()
    if not body.strip():
        return b"{}"
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[..." within 64 KiB is enough to exhaust the decoder's stack
        raise ApiError(400, "malformed_json", "the body's JSON is nested too deeply") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return body
