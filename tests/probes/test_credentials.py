"""Integration credential checks against a real receiver that checks the credentials."""

from __future__ import annotations

import asyncio
import base64
import json
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from tocsin.probes.base import ProbeContext
from tocsin.probes.credentials import (
    BasicAuth,
    BearerAuth,
    CredentialCheck,
    CredentialCheckSpec,
    jwt_expiry,
)
from tocsin.probes.observation import Health, Observation
from tocsin.secrets import SecretError

from ._http_fixtures import Clock, closed_port, make_tls, probe_context, serving

BEARER = "bearer-7f3a9c"
PASSWORD = "pw-5d1e88"
API_KEY = "key-a41b07"
CLIENT_ID = "tocsin-client"
CLIENT_SECRET = "client-secret-9e2f"
SECRETS = (BEARER, PASSWORD, API_KEY, CLIENT_SECRET)


def make_jwt(exp: datetime) -> str:
    def segment(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment({'exp': exp.timestamp()})}.sig"


@dataclass
class Receiver:
    """An integration API: /me checks any of the credentials it knows, /token issues
    client-credentials tokens."""

    bearers: set[str] = field(default_factory=lambda: {BEARER})
    basics: set[tuple[str, str]] = field(default_factory=lambda: {("svc", PASSWORD)})
    api_keys: set[str] = field(default_factory=lambda: {API_KEY})
    clients: dict[str, str] = field(default_factory=lambda: {CLIENT_ID: CLIENT_SECRET})
    issued: set[str] = field(default_factory=set)
    expires_in: Any = 3600
    reject_status: int = 401
    fail: bool = False
    token_answer: dict[str, Any] | None = None
    token_requests: int = 0

    def revoke_all(self) -> None:
        self.bearers.clear()
        self.basics.clear()
        self.api_keys.clear()
        self.clients.clear()
        self.issued.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/me", self.me)
        app.router.add_post("/token", self.token)
        app.router.add_get("/hang", self.hang)
        return app

    async def me(self, request: web.Request) -> web.Response:
        if self.fail:
            return web.Response(status=500, text="internal error")
        authorization = request.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        accepted = (
            (scheme == "Bearer" and value in self.bearers | self.issued)
            or (scheme == "Basic" and _basic_pair(value) in self.basics)
            or request.headers.get("X-API-Key") in self.api_keys
        )
        if not accepted:
            return web.json_response({"error": "unauthorized"}, status=self.reject_status)
        return web.json_response({"name": "tocsin"})

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self.fail:
            return web.Response(status=500, text="internal error")
        form = await request.post()
        assert form.get("grant_type") == "client_credentials"
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            client = _basic_pair(authorization.removeprefix("Basic "))
        else:
            client = (str(form.get("client_id")), str(form.get("client_secret")))
        if self.clients.get(client[0]) != client[1]:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": f"secret {client[1]} is not the one for {client[0]}",
                },
                status=401,
            )
        if self.token_answer is not None:
            return web.json_response(self.token_answer)
        access_token = f"access-{self.token_requests}"
        self.issued.add(access_token)
        return web.json_response(
            {"access_token": access_token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _basic_pair(value: str) -> tuple[str, str]:
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def context(tmp_path: Path, clock: Clock) -> AsyncIterator[ProbeContext]:
    async with probe_context(tmp_path, clock=clock) as ctx:
        ctx.monotonic = clock.monotonic
        yield ctx


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def base(receiver: Receiver) -> AsyncIterator[str]:
    async with serving(receiver.app()) as url:
        yield url


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    (tmp_path / name).write_text(value + "\n")
    return name  # relative: resolved against ProbeContext.base_dir


AuthFactory = Callable[[Path, str], dict[str, Any]]

AUTHS: dict[str, AuthFactory] = {
    "bearer": lambda tmp, base: {"bearer_file": secret_file(tmp, "bearer", BEARER)},
    "basic": lambda tmp, base: {
        "type": "basic",
        "username": "svc",
        "password_file": secret_file(tmp, "password", PASSWORD),
    },
    "api_key": lambda tmp, base: {
        "type": "api_key",
        "header": "X-API-Key",
        "key_file": secret_file(tmp, "key", API_KEY),
    },
    "oauth2": lambda tmp, base: {
        "type": "oauth2",
        "token_url": f"{base}/token",
        "client_id": CLIENT_ID,
        "client_secret_file": secret_file(tmp, "client", CLIENT_SECRET),
    },
    "oauth2-post": lambda tmp, base: {
        "token_url": f"{base}/token",
        "client_id": CLIENT_ID,
        "client_secret_file": secret_file(tmp, "client", CLIENT_SECRET),
        "client_auth": "post",
    },
}
ALL_AUTHS = pytest.mark.parametrize("auth", list(AUTHS))


def credential_check(
    context: ProbeContext, url: str, auth: dict[str, Any], **extra: Any
) -> CredentialCheck:
    spec = CredentialCheckSpec.model_validate({"type": "http", "url": url, "auth": auth, **extra})
    return CredentialCheck(spec, context)


def assert_no_secret(observation: Observation) -> None:
    text = repr(observation)
    for secret in SECRETS:
        assert secret not in text
    assert base64.b64encode(f"svc:{PASSWORD}".encode()).decode() not in text


@ALL_AUTHS
async def test_valid_credentials_are_healthy(
    context: ProbeContext, tmp_path: Path, base: str, auth: str
) -> None:
    observation = await credential_check(context, f"{base}/me", AUTHS[auth](tmp_path, base)).check()

    assert observation.health is Health.HEALTHY, observation.detail
    assert observation.detail.startswith("HTTP 200 in ")
    assert observation.data["status"] == 200
    assert_no_secret(observation)


@ALL_AUTHS
@pytest.mark.parametrize("status", [401, 403])
async def test_revoked_credentials_are_invalid(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver, auth: str, status: int
) -> None:
    receiver.reject_status = status
    receiver.revoke_all()
    observation = await credential_check(context, f"{base}/me", AUTHS[auth](tmp_path, base)).check()

    assert observation.health is Health.UNHEALTHY
    assert observation.kind_hint == "integration_credentials_invalid"
    assert observation.error_class == "auth"
    if auth.startswith("oauth2"):
        # The client secret is what was revoked: the token endpoint says so.
        assert observation.detail == "token endpoint answered HTTP 401 (invalid_client)"
    else:
        assert observation.detail.endswith(", credentials rejected")
        assert observation.data["status"] == status
    assert_no_secret(observation)


@ALL_AUTHS
async def test_a_server_error_is_unreachable(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver, auth: str
) -> None:
    receiver.fail = True
    observation = await credential_check(context, f"{base}/me", AUTHS[auth](tmp_path, base)).check()

    assert observation.kind_hint == "integration_unreachable"
    assert observation.error_class == "http_status"
    if auth.startswith("oauth2"):
        assert observation.detail == "token endpoint answered HTTP 500"
    else:
        assert observation.detail.startswith("HTTP 500 in ")
    assert_no_secret(observation)


async def test_a_hung_integration_times_out_as_unreachable(
    context: ProbeContext, tmp_path: Path, base: str
) -> None:
    check = credential_check(
        context, f"{base}/hang", AUTHS["bearer"](tmp_path, base), timeout="200ms"
    )
    observation = await asyncio.wait_for(check.check(), timeout=2)

    assert observation.kind_hint == "integration_unreachable"
    assert observation.error_class == "timeout"
    assert observation.detail == "timeout after 200 ms"


async def test_a_refused_connection_is_unreachable(context: ProbeContext, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    observation = await credential_check(context, url, AUTHS["oauth2"](tmp_path, url)).check()

    assert observation.kind_hint == "integration_unreachable"
    assert observation.error_class == "refused"
    assert observation.detail.startswith("token endpoint: connection refused by 127.0.0.1:")


async def test_the_oauth_token_is_reused_until_shortly_before_it_expires(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver, clock: Clock
) -> None:
    check = credential_check(context, f"{base}/me", AUTHS["oauth2"](tmp_path, base))

    assert (await check.check()).healthy
    clock.mono += 3600 - 61
    assert (await check.check()).healthy
    assert receiver.token_requests == 1
    clock.mono += 2  # within a minute of expires_in: renew
    assert (await check.check()).healthy
    assert receiver.token_requests == 2


async def test_a_cached_token_revoked_early_is_replaced_at_once(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver
) -> None:
    check = credential_check(context, f"{base}/me", AUTHS["oauth2"](tmp_path, base))
    await check.check()
    receiver.issued.clear()

    observation = await check.check()

    assert observation.healthy
    assert receiver.token_requests == 2


async def test_a_token_answer_without_an_access_token_is_unreachable(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver
) -> None:
    receiver.token_answer = {"token_type": "Bearer"}
    observation = await credential_check(
        context, f"{base}/me", AUTHS["oauth2"](tmp_path, base)
    ).check()

    assert observation.kind_hint == "integration_unreachable"
    assert observation.error_class == "protocol"


async def test_a_short_oauth_expires_in_is_recorded_but_is_no_warning(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver, clock: Clock
) -> None:
    # Access tokens from the client-credentials grant are renewed as they lapse; only the
    # client secret is a credential, and its rejection shows as "auth".
    receiver.expires_in = "300"  # some servers send a string
    observation = await credential_check(
        context, f"{base}/me", AUTHS["oauth2"](tmp_path, base)
    ).check()

    assert observation.healthy
    assert observation.data["token_expires_at"] == (clock.now + timedelta(seconds=300)).isoformat()
    assert "expires_at" not in observation.data


@pytest.mark.parametrize(
    ("days_left", "expiring"),
    [pytest.param(3, True, id="3-days"), pytest.param(100, False, id="100-days")],
)
async def test_a_jwt_bearer_near_its_exp_is_expiring(
    context: ProbeContext,
    tmp_path: Path,
    base: str,
    receiver: Receiver,
    clock: Clock,
    days_left: int,
    expiring: bool,
) -> None:
    exp = clock.now + timedelta(days=days_left)
    token = make_jwt(exp)
    receiver.bearers.add(token)
    auth = {"bearer_env": "BMS_TOKEN"}
    context.environ = {"BMS_TOKEN": token}

    observation = await credential_check(context, f"{base}/me", auth).check()

    assert observation.data["expires_at"] == exp.isoformat()
    assert observation.data["expiring"] == "bearer token"
    assert token not in repr(observation)
    if expiring:
        assert observation.health is Health.UNHEALTHY
        assert observation.kind_hint == "integration_credentials_expiring"
        assert observation.error_class == "expiring"
        assert f"bearer token expires in 3 days ({exp:%Y-%m-%d %H:%M} UTC)" in observation.detail
    else:
        assert observation.healthy


async def test_an_accepted_but_lapsed_jwt_is_still_expiring(
    context: ProbeContext, tmp_path: Path, base: str, receiver: Receiver, clock: Clock
) -> None:
    token = make_jwt(clock.now - timedelta(hours=2))
    receiver.bearers.add(token)
    context.environ = {"BMS_TOKEN": token}

    observation = await credential_check(context, f"{base}/me", {"bearer_env": "BMS_TOKEN"}).check()

    assert observation.error_class == "expiring"
    assert "bearer token expired" in observation.detail


async def test_a_server_certificate_near_its_end_is_expiring(
    context: ProbeContext, tmp_path: Path, receiver: Receiver, clock: Clock
) -> None:
    not_after = clock.now + timedelta(days=5)
    tls = make_tls(tmp_path, not_after=not_after)
    async with serving(receiver.app(), tls=tls.server) as url:
        observation = await credential_check(
            context, f"{url}/me", AUTHS["api_key"](tmp_path, url), ca_file=str(tls.ca_file)
        ).check()

    assert observation.kind_hint == "integration_credentials_expiring"
    assert observation.data["expires_at"] == not_after.isoformat()
    assert "TLS certificate expires in 5 days" in observation.detail


async def test_an_untrusted_certificate_is_unreachable_as_tls(
    context: ProbeContext, tmp_path: Path, receiver: Receiver
) -> None:
    tls = make_tls(tmp_path)
    async with serving(receiver.app(), tls=tls.server) as url:
        observation = await credential_check(
            context, f"{url}/me", AUTHS["bearer"](tmp_path, url)
        ).check()

    assert observation.kind_hint == "integration_unreachable"
    assert observation.error_class == "tls"


def test_a_missing_secret_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    context = ProbeContext(base_dir=tmp_path)
    spec = CredentialCheckSpec.model_validate(
        {"type": "http", "url": "https://bms.example/api/me", "auth": {"bearer_file": "bms"}}
    )

    with pytest.raises(SecretError, match=rf"^auth\.bearer_file: cannot read {tmp_path}/bms "):
        CredentialCheck(spec, context)


def test_a_missing_secret_variable_names_the_key_and_the_variable(tmp_path: Path) -> None:
    context = ProbeContext(base_dir=tmp_path, environ={"OTHER": "x"})
    spec = CredentialCheckSpec.model_validate(
        {
            "type": "http",
            "url": "https://bms.example/api/me",
            "auth": {"type": "basic", "username": "svc", "password_env": "BMS_PASSWORD"},
        }
    )

    with pytest.raises(SecretError, match=r"^auth\.password_env: .*BMS_PASSWORD"):
        CredentialCheck(spec, context)


def test_the_contract_example_parses_as_bearer_auth() -> None:
    text = (
        'check = { type = "http", url = "https://bms.example/api/me", '
        'auth = { bearer_file = "/etc/tocsin/secrets/bms" }, interval = "15m" }'
    )
    spec = CredentialCheckSpec.model_validate(tomllib.loads(text)["check"])

    assert spec.auth == BearerAuth(bearer_file="/etc/tocsin/secrets/bms")
    assert spec.interval == timedelta(minutes=15)
    assert spec.cron is None
    assert spec.timeout == timedelta(seconds=10)
    assert spec.expiry_warning_days == 14


def test_a_cron_schedule_is_kept_as_written() -> None:
    spec = CredentialCheckSpec.model_validate(
        {
            "type": "http",
            "url": "https://bms.example/api/me",
            "auth": {"username": "svc", "password_env": "P"},
            "cron": "*/30 6-18 * * mon-fri",
        }
    )

    assert spec.cron == "*/30 6-18 * * mon-fri"
    assert isinstance(spec.auth, BasicAuth)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param({"cron": "61 * * * *"}, "not a crontab schedule", id="cron-range"),
        pytest.param({"cron": "* * *"}, "not a crontab schedule", id="cron-fields"),
        pytest.param({"cron": "0 * * * *", "interval": "1h"}, "not both", id="cron-and-interval"),
        pytest.param({"auth": {"token": "x"}}, "give type = 'bearer'", id="auth-unguessable"),
        pytest.param({"auth": {"type": "digest"}}, "give type = 'bearer'", id="unknown-type"),
        pytest.param({"auth": {"bearer_file": "a", "bearer_env": "B"}}, "exactly one", id="two"),
        pytest.param({"auth": {"type": "bearer"}}, "exactly one", id="no-source"),
        pytest.param(
            {"auth": {"username": "a:b", "password_env": "P"}}, "pattern", id="colon-in-username"
        ),
        pytest.param(
            {"auth": {"header": "X Key", "key_env": "K"}}, "pattern", id="header-not-a-token"
        ),
        pytest.param({"expiry_warning_days": -1}, "greater than or equal to 0", id="warning-days"),
        pytest.param({"url": "bms.example/api"}, "http:// or https://", id="url"),
    ],
)
def test_invalid_check_specs_are_refused(extra: dict[str, Any], message: str) -> None:
    raw = {"type": "http", "url": "https://bms.example/api/me", "auth": {"bearer_env": "T"}}
    with pytest.raises(ValidationError, match=message):
        CredentialCheckSpec.model_validate(raw | extra)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("opaque-token", id="not-a-jwt"),
        pytest.param("a.b.c", id="payload-not-base64-json"),
        pytest.param("e30.W10.x", id="payload-not-an-object"),
        pytest.param("e30.eyJleHAiOiB0cnVlfQ.x", id="exp-is-a-bool"),
        pytest.param("e30.eyJleHAiOiAxZTMwMH0.x", id="exp-out-of-range"),
    ],
)
def test_tokens_without_a_readable_exp_have_no_expiry(token: str) -> None:
    assert jwt_expiry(token) is None
