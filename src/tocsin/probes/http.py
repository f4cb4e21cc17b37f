"""HTTP device probes, and the one request routine every HTTP-based probe shares.

`fetch` makes one request within a hard time bound and returns either the facts of the answer
or a `FetchFailure` naming the failure's nature (timeout, refused, dns, tls, ...): aiohttp and
OS errors stop here. `HttpProbe` judges the answer against its spec.

A certificate that expires within `expiry_warning_days` makes a device unhealthy
(error_class "cert_expiring", or "cert_expired" when verification is off and it has lapsed):
once it lapses the device's clients stop trusting it, so the warning must reach someone, and a
ticket is the only channel. `expiry_warning_days = 0` turns the warning off.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import Field, field_validator, model_validator
from yarl import URL

from tocsin.durations import Duration
from tocsin.probes.base import ProbeContext, SpecModel
from tocsin.probes.observation import Health, Observation
from tocsin.probes.tls import PeerCertResponse, peer_not_after, ssl_context

DEFAULT_TIMEOUT = timedelta(seconds=10)
MAX_BODY_BYTES = 1 << 20  # a health answer is small; never buffer a device's firmware image
HTTP_RESOURCE = "http"  # the key of the shared ClientSession in ProbeContext.resources

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
JsonScalar = str | int | float | bool


def make_http_session(
    *, limit: int = 100, limit_per_host: int = 10, user_agent: str = "tocsin"
) -> aiohttp.ClientSession:
    """The one ClientSession all HTTP probes share (ProbeContext.resources["http"]).

    Call it from a coroutine and close it on shutdown. The connector bounds open connections
    overall and per host, so a flood of probes cannot exhaust sockets or hammer one device;
    cookies are dropped so that one probe's answer never changes another's request. Timeouts
    belong to each probe (`fetch`), not to the session.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host),
        cookie_jar=aiohttp.DummyCookieJar(),
        response_class=PeerCertResponse,
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"User-Agent": user_agent},
        trust_env=False,
    )


def shared_session(context: ProbeContext) -> aiohttp.ClientSession:
    session = context.resources.get(HTTP_RESOURCE)
    if not isinstance(session, aiohttp.ClientSession):
        # A wiring mistake in the daemon or a test, not a probe failure.
        raise LookupError('ProbeContext.resources["http"] must hold an aiohttp.ClientSession')
    return session


def public_url(url: str) -> str:
    """The URL as it may appear in observations and logs: without user:password."""
    return str(URL(url).with_user(None))


def duration_text(seconds: float) -> str:
    return f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


@dataclass(frozen=True)
class FetchResult:
    status: int
    body: bytes
    latency_ms: float
    cert_not_after: datetime | None


@dataclass(frozen=True)
class FetchFailure:
    error_class: str  # timeout | refused | dns | tls | connect | disconnected | protocol | ...
    detail: str


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    time_limit: float,
    monotonic: Callable[[], float],
    tls: ssl.SSLContext | bool = True,
    headers: Mapping[str, str] | None = None,
    data: Any = None,
) -> FetchResult | FetchFailure:
    """One request, body read (up to MAX_BODY_BYTES), all within `time_limit` seconds.

    Never raises but CancelledError. Messages are built here from the URL's host and the
    error's nature, never from exception text that could echo request headers.
    """
    started = monotonic()
    try:
        async with (
            asyncio.timeout(time_limit),
            session.request(
                method, url, headers=headers, data=data, ssl=tls, allow_redirects=False
            ) as response,
        ):
            not_after = peer_not_after(response)
            length = response.content_length
            if length is not None and length <= MAX_BODY_BYTES:
                body = await response.read()  # one call for the common, small, sized answer
            else:
                body = await read_capped(response.content, MAX_BODY_BYTES)
    except TimeoutError:
        return FetchFailure("timeout", f"timeout after {duration_text(time_limit)}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return _translate(exc, URL(url))
    latency_ms = (monotonic() - started) * 1000
    return FetchResult(response.status, body, latency_ms, not_after)


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _translate(exc: BaseException, url: URL) -> FetchFailure:
    where = f"{url.host}:{url.port}" if url.port is not None else str(url.host)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        return FetchFailure("tls", f"TLS certificate of {where} rejected: {reason}")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return FetchFailure("tls", f"TLS handshake with {where} failed")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return FetchFailure("dns", f"cannot resolve {url.host}")
        if isinstance(os_error, ConnectionRefusedError):
            return FetchFailure("refused", f"connection refused by {where}")
        reason = os_error.strerror or type(os_error).__name__
        return FetchFailure("connect", f"cannot connect to {where}: {reason}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return FetchFailure("disconnected", f"{where} closed the connection without an answer")
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchFailure("config", "the URL is not valid")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return FetchFailure("protocol", f"{where} sent a malformed HTTP answer")
    if isinstance(exc, ValueError) and not isinstance(exc, OSError):
        return FetchFailure("config", f"the request is not valid ({type(exc).__name__})")
    if isinstance(exc, OSError) and exc.strerror:
        return FetchFailure("network", f"network error talking to {where}: {exc.strerror}")
    return FetchFailure("network", f"network error talking to {where} ({type(exc).__name__})")


def validate_url(value: str) -> str:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value


class HttpSpec(SpecModel):
    """`probe = { type = "http", url = "http://10.0.0.5/health", ... }` on a [[devices]] entry.

    Healthy: an expected status (default any 2xx; redirects are not followed, so a 3xx is
    judged like any other status), the body and JSON expectations met, the answer within
    `max_latency`, and the TLS certificate not within `expiry_warning_days` of its end.
    """

    type: Literal["http"]
    """An HTTP request."""
    url: str
    """The URL to request (http or https); user:password in it is never logged."""
    method: Method = "GET"
    """The request method."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers."""
    body: str | None = None
    """A request body."""
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    """Accepted statuses (an int or a list); default any 2xx."""
    expect_body: Annotated[str, Field(min_length=1)] | None = None
    """A substring the body must contain."""
    expect_json: dict[str, JsonScalar] = Field(default_factory=dict)
    """Dotted paths into the JSON body and the values they must hold: {"status" = "ok"}."""
    max_latency: Duration | None = None
    """A slower answer is unhealthy (shorter than timeout)."""
    timeout: Duration = DEFAULT_TIMEOUT
    """How long the request, body included, may take."""
    interval: Duration | None = None
    """How often it runs; unset: the device's interval, else monitor.interval."""
    verify_tls: bool = True
    """Verify the server's TLS certificate."""
    ca_file: str | None = None
    """A PEM file of CAs to verify against instead of the system's."""
    expiry_warning_days: Annotated[int, Field(ge=0)] = 14
    """A TLS certificate this close to its end makes the device unhealthy; 0: off."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return validate_url(value)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> HttpSpec:
        check_timing(self.timeout, self.interval)
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file has no effect with verify_tls = false")
        if self.max_latency is not None and self.max_latency >= self.timeout:
            raise ValueError("max_latency must be shorter than timeout")
        return self


def check_timing(timeout: timedelta, interval: timedelta | None) -> None:
    if timeout <= timedelta(0):
        raise ValueError("timeout must be positive")
    if interval is not None and interval <= timedelta(0):
        raise ValueError("interval must be positive")


class HttpProbe:
    """Pull probe for an HTTP device. Failures carry kind_hint "device_offline"."""

    def __init__(self, spec: HttpSpec, context: ProbeContext) -> None:
        self.spec = spec
        self._context = context
        self._ssl = ssl_context(
            verify=spec.verify_tls, ca_file=spec.ca_file, base_dir=context.base_dir
        )
        self._url = public_url(spec.url)

    async def check(self) -> Observation:
        spec = self.spec
        result = await fetch(
            shared_session(self._context),
            spec.method,
            spec.url,
            time_limit=spec.timeout.total_seconds(),
            monotonic=self._context.monotonic,
            tls=self._ssl,
            headers=spec.headers,
            data=spec.body,
        )
        data: dict[str, Any] = {"url": self._url}
        if isinstance(result, FetchFailure):
            return self._unhealthy(result.error_class, result.detail, data)
        data["status"] = result.status
        if result.cert_not_after is not None:
            data["cert_not_after"] = result.cert_not_after.isoformat()
        summary = f"HTTP {result.status} in {result.latency_ms:.0f} ms"
        problem = self._judge(result)
        if problem is not None:
            error_class, why = problem
            detail = f"{summary}, {why}" if why else summary
            return self._unhealthy(error_class, detail, data, result.latency_ms)
        return Observation(Health.HEALTHY, summary, latency_ms=result.latency_ms, data=data)

    def _judge(self, result: FetchResult) -> tuple[str, str] | None:
        spec = self.spec
        if spec.expect_status is None:
            if not 200 <= result.status < 300:
                return "http_status", ""
        elif result.status not in spec.expect_status:
            expected = ", ".join(map(str, spec.expect_status))
            return "http_status", f"expected {expected}"
        if spec.expect_body is not None:
            text = result.body.decode("utf-8", errors="replace")
            if spec.expect_body not in text:
                return "body_mismatch", f"body lacks {spec.expect_body!r}"
        if spec.expect_json:
            mismatch = json_mismatch(result.body, spec.expect_json)
            if mismatch is not None:
                return "json_mismatch", mismatch
        if spec.max_latency is not None and result.latency_ms > spec.max_latency / _MS:
            return "slow", f"over the {duration_text(spec.max_latency.total_seconds())} limit"
        if result.cert_not_after is not None and spec.expiry_warning_days:
            left = result.cert_not_after - self._context.wall()
            if left <= timedelta(0):
                return "cert_expired", f"TLS certificate expired {result.cert_not_after:%Y-%m-%d}"
            if left <= timedelta(days=spec.expiry_warning_days):
                return (
                    "cert_expiring",
                    f"TLS certificate expires in {days_text(left)} "
                    f"({result.cert_not_after:%Y-%m-%d})",
                )
        return None

    def _unhealthy(
        self,
        error_class: str,
        detail: str,
        data: dict[str, Any],
        latency_ms: float | None = None,
    ) -> Observation:
        return Observation(
            Health.UNHEALTHY,
            detail,
            kind_hint="device_offline",
            error_class=error_class,
            latency_ms=latency_ms,
            data=data,
        )


_MS = timedelta(milliseconds=1)


def days_text(left: timedelta) -> str:
    days = left / timedelta(days=1)
    if days >= 1:
        whole = int(days)
        return f"{whole} day" if whole == 1 else f"{whole} days"
    hours = max(1, int(left / timedelta(hours=1)))
    return f"{hours} hour" if hours == 1 else f"{hours} hours"


_MISSING = object()


def json_mismatch(body: bytes, expected: Mapping[str, JsonScalar]) -> str | None:
    """Why the JSON body does not hold the expected values at their dotted paths, or None."""
    try:
        document = json.loads(body)
    except ValueError:
        return "body is not JSON"
    for path, want in expected.items():
        got = _lookup(document, path)
        if got is _MISSING:
            return f"JSON has no {path}"
        if not _same_json(got, want):
            return f"JSON {path} is {json.dumps(got)[:80]}, expected {json.dumps(want)}"
    return None


def _lookup(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _same_json(got: Any, want: JsonScalar) -> bool:
    # JSON true is not 1: compare booleans only with booleans.
    if isinstance(got, bool) or isinstance(want, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and got == want
    return isinstance(got, str) and got == want
