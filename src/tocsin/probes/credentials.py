"""Integration credential checks: one authenticated HTTP request, judged for the credentials.

`check = { type = "http", url = "...", auth = { bearer_file = "..." }, interval = "15m" }`
on an [[integrations]] entry. The answer maps to ticket kinds:

- 2xx: healthy, unless something known expires within `expiry_warning_days`:
  a static bearer token's or API key's JWT `exp`, or the TLS certificate of the checked URL or
  of the OAuth token endpoint -> integration_credentials_expiring (error_class "expiring").
- 401/403 from the URL, or 400/401/403 from the OAuth token endpoint
  -> integration_credentials_invalid (error_class "auth").
- network errors, timeouts, 5xx and other statuses -> integration_unreachable.

An OAuth access token's `expires_in` is recorded (data["token_expires_at"]) but never warns:
the client-credentials grant gets a fresh token whenever one lapses, so a short-lived access
token is routine, not an expiring credential; a lapsed client secret shows up as "auth".

Secrets are read once, at construction (SecretError names the key and file, never the value),
and live only in request headers: no observation, message or log carries them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote_plus

from apscheduler.triggers.cron import CronTrigger
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from tocsin.durations import Duration
from tocsin.probes.base import ProbeContext, SpecModel
from tocsin.probes.http import (
    DEFAULT_TIMEOUT,
    FetchFailure,
    FetchResult,
    Method,
    check_timing,
    days_text,
    duration_text,
    fetch,
    public_url,
    shared_session,
    validate_url,
)
from tocsin.probes.observation import Health, Observation
from tocsin.probes.tls import ssl_context
from tocsin.secrets import SecretError, read_secret

INVALID = "integration_credentials_invalid"
UNREACHABLE = "integration_unreachable"
EXPIRING = "integration_credentials_expiring"


def _one_source(model: SpecModel, prefix: str) -> None:
    given = [s for s in ("file", "env") if getattr(model, f"{prefix}_{s}") is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {prefix}_file or {prefix}_env")


class BearerAuth(SpecModel):
    """`Authorization: Bearer <token>`. `type` may be left out when bearer_* is given."""

    type: Literal["bearer"] = "bearer"
    """May be left out: bearer_file or bearer_env says it."""
    bearer_file: str | None = None
    """A file holding the token."""
    bearer_env: str | None = None
    """An environment variable holding the token."""

    @model_validator(mode="after")
    def _source(self) -> BearerAuth:
        _one_source(self, "bearer")
        return self


class BasicAuth(SpecModel):
    """HTTP Basic: `Authorization: Basic base64(username:password)`."""

    type: Literal["basic"] = "basic"
    """May be left out: username says it."""
    username: Annotated[str, Field(min_length=1, pattern=r"^[^:]*$")]
    """The user name (no ':')."""
    password_file: str | None = None
    """A file holding the password."""
    password_env: str | None = None
    """An environment variable holding the password."""

    @model_validator(mode="after")
    def _source(self) -> BasicAuth:
        _one_source(self, "password")
        return self


class ApiKeyAuth(SpecModel):
    """The key in a header of the integration's choosing, e.g. header = "X-API-Key"."""

    type: Literal["api_key"] = "api_key"
    """May be left out: header, key_file or key_env says it."""
    header: Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
    """The header that carries the key."""
    key_file: str | None = None
    """A file holding the key."""
    key_env: str | None = None
    """An environment variable holding the key."""

    @model_validator(mode="after")
    def _source(self) -> ApiKeyAuth:
        _one_source(self, "key")
        return self


class OAuth2Auth(SpecModel):
    """OAuth 2 client credentials (RFC 6749 4.4); the check request carries the access token.

    `client_auth = "basic"` sends the client id and secret as HTTP Basic (RFC 6749 2.3.1),
    "post" in the form body, for servers that want that.
    """

    type: Literal["oauth2"] = "oauth2"
    """May be left out: token_url says it."""
    token_url: str
    """The token endpoint (http or https)."""
    client_id: Annotated[str, Field(min_length=1)]
    """The client id."""
    client_secret_file: str | None = None
    """A file holding the client secret."""
    client_secret_env: str | None = None
    """An environment variable holding the client secret."""
    scope: str | None = None
    """The scope to ask for; unset: none sent."""
    client_auth: Literal["basic", "post"] = "basic"
    """How the client id and secret are sent: basic (HTTP Basic) or post (form body)."""

    @field_validator("token_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return validate_url(value)

    @model_validator(mode="after")
    def _source(self) -> OAuth2Auth:
        _one_source(self, "client_secret")
        return self


def _auth_tag(value: Any) -> str | None:
    """The auth variant: `type` if given, else guessed from the keys (the contract's example
    `auth = { bearer_file = "..." }` has no type)."""
    if not isinstance(value, dict):
        return getattr(value, "type", None)
    if "type" in value:
        return value["type"] if isinstance(value["type"], str) else None
    keys = set(value)
    if keys & {"bearer_file", "bearer_env"}:
        return "bearer"
    if "token_url" in keys:
        return "oauth2"
    if "username" in keys:
        return "basic"
    if keys & {"header", "key_file", "key_env"}:
        return "api_key"
    return None


Auth = Annotated[
    Annotated[BearerAuth, Tag("bearer")]
    | Annotated[BasicAuth, Tag("basic")]
    | Annotated[ApiKeyAuth, Tag("api_key")]
    | Annotated[OAuth2Auth, Tag("oauth2")],
    Discriminator(
        _auth_tag,
        custom_error_type="auth_type",
        custom_error_message="give type = 'bearer', 'basic', 'api_key' or 'oauth2'",
    ),
]


class CredentialCheckSpec(SpecModel):
    """`check = {...}` on an [[integrations]] entry. Give `interval` or `cron` (a five-field
    crontab line, evaluated in UTC), or neither for the [monitor] interval."""

    type: Literal["http"]
    """An authenticated HTTP request."""
    url: str
    """An API URL that needs the credentials, e.g. a "who am I" endpoint."""
    auth: Auth
    """The credentials: bearer, basic, api_key or oauth2."""
    method: Method = "GET"
    """The request method."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers."""
    interval: Duration | None = None
    """How often it runs (or give cron); unset: the integration's, else monitor.interval."""
    cron: str | None = None
    """A five-field crontab line, in UTC, instead of an interval."""
    timeout: Duration = DEFAULT_TIMEOUT
    """How long the request (and an OAuth2 token request) may take."""
    expiry_warning_days: Annotated[int, Field(ge=0)] = 14
    """A JWT exp or TLS certificate this close to its end opens "credentials expiring"; 0: off."""
    verify_tls: bool = True
    """Verify the server's TLS certificate."""
    ca_file: str | None = None
    """A PEM file of CAs to verify against instead of the system's."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return validate_url(value)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CronTrigger.from_crontab(value, timezone=UTC)
            except ValueError as exc:
                raise ValueError(f"not a crontab schedule: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CredentialCheckSpec:
        check_timing(self.timeout, self.interval)
        if self.interval is not None and self.cron is not None:
            raise ValueError("give interval or cron, not both")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file has no effect with verify_tls = false")
        return self


def jwt_expiry(token: str) -> datetime | None:
    """The `exp` of a JWT, read WITHOUT verifying it (only to warn), or None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload["exp"] if isinstance(payload, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        return datetime.fromtimestamp(exp, UTC)
    except (ValueError, KeyError, OverflowError, OSError):
        return None


@dataclass(frozen=True)
class _Token:
    value: str
    fresh_until: float | None  # monotonic; None: use once
    expires_at: datetime | None  # wall clock, for the ticket's facts
    cert_not_after: datetime | None  # of the token endpoint


@dataclass(frozen=True)
class _Expiry:
    at: datetime
    what: str


class CredentialCheck:
    """Pull probe for an integration's credentials (see the module docstring for the mapping).

    Raises SecretError at construction when a secret cannot be read, ValueError when the CA
    file cannot be loaded.
    """

    def __init__(self, spec: CredentialCheckSpec, context: ProbeContext) -> None:
        self.spec = spec
        self._context = context
        self._ssl = ssl_context(
            verify=spec.verify_tls, ca_file=spec.ca_file, base_dir=context.base_dir
        )
        self._url = public_url(spec.url)
        self._headers = dict(spec.headers)
        self._token_expiry: _Expiry | None = None
        self._oauth: OAuth2Auth | None = None
        self._client_secret = ""
        self._token: _Token | None = None
        auth = spec.auth
        if isinstance(auth, BearerAuth):
            token = self._secret("bearer")
            self._headers["Authorization"] = f"Bearer {token}"
            self._note_jwt(token, "bearer token")
        elif isinstance(auth, BasicAuth):
            password = self._secret("password")
            pair = base64.b64encode(f"{auth.username}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {pair}"
        elif isinstance(auth, ApiKeyAuth):
            key = self._secret("key")
            self._headers[auth.header] = key
            self._note_jwt(key, "API key")
        else:
            self._oauth = auth
            self._client_secret = self._secret("client_secret")

    def _secret(self, prefix: str) -> str:
        auth = self.spec.auth
        file, env = getattr(auth, f"{prefix}_file"), getattr(auth, f"{prefix}_env")
        try:
            return read_secret(
                file=file, env=env, base_dir=self._context.base_dir, environ=self._context.environ
            )
        except SecretError as exc:
            key = f"{prefix}_file" if file is not None else f"{prefix}_env"
            raise SecretError(f"auth.{key}: {exc}") from None

    def _note_jwt(self, token: str, what: str) -> None:
        expiry = jwt_expiry(token)
        if expiry is not None:
            self._token_expiry = _Expiry(expiry, what)

    async def check(self) -> Observation:
        spec = self.spec
        stage = "token endpoint: " if self._oauth else ""
        try:
            async with asyncio.timeout(spec.timeout.total_seconds()):
                if self._oauth is None:
                    return self._judge(await self._request(self._headers), None)
                cached = self._token
                token = await self._access_token()
                if isinstance(token, Observation):
                    return token
                stage = ""
                result = await self._request(self._bearer(token))
                if _rejected(result) and token is cached:
                    # A cached token may have been revoked early: one retry with a new one.
                    self._token = None
                    stage = "token endpoint: "
                    token = await self._access_token()
                    if isinstance(token, Observation):
                        return token
                    stage = ""
                    result = await self._request(self._bearer(token))
                if _rejected(result):
                    self._token = None
                return self._judge(result, token)
        except TimeoutError:
            detail = f"{stage}timeout after {duration_text(spec.timeout.total_seconds())}"
            return self._observation(UNREACHABLE, "timeout", detail)

    def _bearer(self, token: _Token) -> dict[str, str]:
        return {**self._headers, "Authorization": f"Bearer {token.value}"}

    async def _request(self, headers: dict[str, str]) -> FetchResult | FetchFailure:
        return await fetch(
            shared_session(self._context),
            self.spec.method,
            self.spec.url,
            time_limit=self.spec.timeout.total_seconds(),
            monotonic=self._context.monotonic,
            tls=self._ssl,
            headers=headers,
        )

    async def _access_token(self) -> _Token | Observation:
        """The cached access token while fresh, else a new one (or a failed observation)."""
        now = self._context.monotonic()
        token = self._token
        if token is not None and token.fresh_until is not None and now < token.fresh_until:
            return token
        self._token = None
        oauth = self._oauth
        assert oauth is not None
        form = {"grant_type": "client_credentials"}
        if oauth.scope:
            form["scope"] = oauth.scope
        headers = {"Accept": "application/json"}
        if oauth.client_auth == "basic":
            pair = f"{quote_plus(oauth.client_id)}:{quote_plus(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form |= {"client_id": oauth.client_id, "client_secret": self._client_secret}
        result = await fetch(
            shared_session(self._context),
            "POST",
            oauth.token_url,
            time_limit=self.spec.timeout.total_seconds(),
            monotonic=self._context.monotonic,
            tls=self._ssl,
            headers=headers,
            data=form,
        )
        data: dict[str, Any] = {"url": self._url, "token_url": public_url(oauth.token_url)}
        if isinstance(result, FetchFailure):
            return self._observation(
                UNREACHABLE, result.error_class, f"token endpoint: {result.detail}", data
            )
        data["status"] = result.status
        if result.status in (400, 401, 403):
            code = _oauth_error(result.body)
            detail = f"token endpoint answered HTTP {result.status}" + (
                f" ({code})" if code else ""
            )
            return self._observation(INVALID, "auth", detail, data, result.latency_ms)
        if not 200 <= result.status < 300:
            detail = f"token endpoint answered HTTP {result.status}"
            return self._observation(UNREACHABLE, "http_status", detail, data, result.latency_ms)
        parsed = _token_response(result.body)
        if parsed is None:
            detail = "token endpoint answered without an access_token"
            return self._observation(UNREACHABLE, "protocol", detail, data, result.latency_ms)
        value, expires_in = parsed
        fresh_until = expires_at = None
        if expires_in is not None:
            # Renew shortly before the server's expiry: 10% of the lifetime, at most a minute.
            fresh_until = now + expires_in - min(60.0, expires_in / 10)
            expires_at = self._context.wall() + timedelta(seconds=expires_in)
        token = _Token(value, fresh_until, expires_at, result.cert_not_after)
        if fresh_until is not None:
            self._token = token
        return token

    def _judge(self, result: FetchResult | FetchFailure, token: _Token | None) -> Observation:
        data: dict[str, Any] = {"url": self._url}
        if token is not None and token.expires_at is not None:
            data["token_expires_at"] = token.expires_at.isoformat()
        if isinstance(result, FetchFailure):
            return self._observation(UNREACHABLE, result.error_class, result.detail, data)
        data["status"] = result.status
        summary = f"HTTP {result.status} in {result.latency_ms:.0f} ms"
        if _rejected(result):
            detail = f"{summary}, credentials rejected"
            return self._observation(INVALID, "auth", detail, data, result.latency_ms)
        if not 200 <= result.status < 300:
            return self._observation(UNREACHABLE, "http_status", summary, data, result.latency_ms)
        expiry = self._earliest_expiry(result, token)
        if expiry is not None:
            data["expires_at"] = expiry.at.isoformat()
            data["expiring"] = expiry.what
            left = expiry.at - self._context.wall()
            warn = timedelta(days=self.spec.expiry_warning_days)
            if self.spec.expiry_warning_days and left <= warn:
                when = (
                    f"expired {expiry.at:%Y-%m-%d %H:%M} UTC"
                    if left <= timedelta(0)
                    else f"expires in {days_text(left)} ({expiry.at:%Y-%m-%d %H:%M} UTC)"
                )
                detail = f"{summary}, {expiry.what} {when}"
                return self._observation(EXPIRING, "expiring", detail, data, result.latency_ms)
        return Observation(Health.HEALTHY, summary, latency_ms=result.latency_ms, data=data)

    def _earliest_expiry(self, result: FetchResult, token: _Token | None) -> _Expiry | None:
        candidates = [self._token_expiry] if self._token_expiry else []
        if result.cert_not_after is not None:
            candidates.append(_Expiry(result.cert_not_after, "TLS certificate"))
        if token is not None and token.cert_not_after is not None:
            candidates.append(_Expiry(token.cert_not_after, "token endpoint's TLS certificate"))
        return min(candidates, key=lambda e: e.at, default=None)

    def _observation(
        self,
        kind: str,
        error_class: str,
        detail: str,
        data: dict[str, Any] | None = None,
        latency_ms: float | None = None,
    ) -> Observation:
        return Observation(
            Health.UNHEALTHY,
            detail,
            kind_hint=kind,
            error_class=error_class,
            latency_ms=latency_ms,
            data=data if data is not None else {"url": self._url},
        )


def _rejected(result: FetchResult | FetchFailure) -> bool:
    return isinstance(result, FetchResult) and result.status in (401, 403)


def _oauth_error(body: bytes) -> str | None:
    """The RFC 6749 5.2 `error` code, if it is one (never free text from the server)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    code = document.get("error") if isinstance(document, dict) else None
    return code if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,64}", code) else None


def _token_response(body: bytes) -> tuple[str, float | None] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        return None
    expires_in: Any = document.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():  # some servers send a string
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        return token, None
    return token, float(expires_in)
