"""HTTP device probes against real aiohttp servers on loopback ports."""

from __future__ import annotations

import asyncio
import socket
import time
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import ValidationError

from tocsin.probes.base import ProbeContext
from tocsin.probes.http import HttpProbe, HttpSpec
from tocsin.probes.observation import Health
from tocsin.probes.tls import certificate_not_after

from ._http_fixtures import Clock, closed_port, make_tls, probe_context, serving

DEVICE_JSON = {"status": "ok", "checks": [{"name": "disk", "ok": True}], "uptime": 12}


def device_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="all systems ready")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status page")

    async def health_json(request: web.Request) -> web.Response:
        return web.json_response(DEVICE_JSON)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/json", health_json)
    app.router.add_get("/hang", hang)
    return app


def http_probe(context: ProbeContext, **spec: Any) -> HttpProbe:
    return HttpProbe(HttpSpec.model_validate({"type": "http", **spec}), context)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def context(tmp_path: Path, clock: Clock) -> AsyncIterator[ProbeContext]:
    async with probe_context(tmp_path, clock=clock) as ctx:
        yield ctx


@pytest.fixture
async def device() -> AsyncIterator[str]:
    async with serving(device_app()) as base:
        yield base


async def test_it_is_healthy_when_the_device_answers_200(
    context: ProbeContext, device: str
) -> None:
    observation = await http_probe(context, url=f"{device}/ok").check()

    assert observation.health is Health.HEALTHY
    assert observation.detail.startswith("HTTP 200 in ")
    assert observation.detail.endswith(" ms")
    assert observation.latency_ms is not None
    assert observation.data == {"url": f"{device}/ok", "status": 200}


async def test_a_500_is_unhealthy_with_the_status_in_the_detail(
    context: ProbeContext, device: str
) -> None:
    observation = await http_probe(context, url=f"{device}/status/500").check()

    assert observation.health is Health.UNHEALTHY
    assert observation.kind_hint == "device_offline"
    assert observation.error_class == "http_status"
    assert observation.detail.startswith("HTTP 500 in ")
    assert observation.data["status"] == 500


@pytest.mark.parametrize(
    ("code", "expect_status", "healthy"),
    [
        pytest.param(200, 204, False, id="200-when-204-expected"),
        pytest.param(204, [200, 204], True, id="204-in-the-list"),
        pytest.param(404, 404, True, id="404-expected"),
        pytest.param(302, None, False, id="redirect-not-followed"),
    ],
)
async def test_the_expected_status_decides(
    context: ProbeContext, device: str, code: int, expect_status: Any, healthy: bool
) -> None:
    spec: dict[str, Any] = {"url": f"{device}/status/{code}"}
    if expect_status is not None:
        spec["expect_status"] = expect_status
    observation = await http_probe(context, **spec).check()

    assert observation.healthy is healthy
    if not healthy:
        assert observation.error_class == "http_status"
    if expect_status == 204:
        assert observation.detail.endswith("expected 204")


async def test_a_body_without_the_expected_substring_is_a_body_mismatch(
    context: ProbeContext, device: str
) -> None:
    found = await http_probe(context, url=f"{device}/ok", expect_body="ready").check()
    missing = await http_probe(context, url=f"{device}/ok", expect_body="green").check()

    assert found.healthy
    assert missing.error_class == "body_mismatch"
    assert missing.kind_hint == "device_offline"
    assert missing.detail.endswith("body lacks 'green'")


@pytest.mark.parametrize(
    ("path", "expect_json", "problem"),
    [
        pytest.param(
            "/json", {"status": "ok", "checks.0.ok": True, "uptime": 12}, None, id="all-match"
        ),
        pytest.param(
            "/json", {"status": "degraded"}, 'JSON status is "ok", expected "degraded"', id="value"
        ),
        pytest.param("/json", {"checks.0.ok": 1}, "JSON checks.0.ok is true", id="bool-is-not-1"),
        pytest.param("/json", {"checks.3.ok": True}, "JSON has no checks.3.ok", id="no-path"),
        pytest.param("/ok", {"status": "ok"}, "body is not JSON", id="not-json"),
    ],
)
async def test_json_field_expectations(
    context: ProbeContext,
    device: str,
    path: str,
    expect_json: dict[str, Any],
    problem: str | None,
) -> None:
    observation = await http_probe(context, url=device + path, expect_json=expect_json).check()

    if problem is None:
        assert observation.healthy
    else:
        assert observation.error_class == "json_mismatch"
        assert problem in observation.detail


async def test_a_hung_device_times_out_in_time_without_delaying_another_probe(
    context: ProbeContext, device: str
) -> None:
    hung = http_probe(context, url=f"{device}/hang", timeout="200ms")
    quick = http_probe(context, url=f"{device}/ok")
    started = time.monotonic()
    finished: dict[str, float] = {}

    async def run(name: str, probe: HttpProbe) -> Any:
        observation = await probe.check()
        finished[name] = time.monotonic() - started
        return observation

    hung_result, quick_result = await asyncio.gather(run("hung", hung), run("quick", quick))

    assert hung_result.error_class == "timeout"
    assert hung_result.kind_hint == "device_offline"
    assert hung_result.detail == "timeout after 200 ms"
    assert 0.2 <= finished["hung"] < 1.0
    assert quick_result.healthy
    assert finished["quick"] < 0.2


async def test_a_refused_connection_is_reported_as_refused(context: ProbeContext) -> None:
    port = closed_port()
    observation = await http_probe(context, url=f"http://127.0.0.1:{port}/").check()

    assert observation.error_class == "refused"
    assert observation.kind_hint == "device_offline"
    assert observation.detail == f"connection refused by 127.0.0.1:{port}"


class NoSuchHostResolver(AbstractResolver):
    """A resolver that knows no names, so the test needs no DNS server."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_an_unresolvable_host_is_reported_as_dns(tmp_path: Path) -> None:
    connector = aiohttp.TCPConnector(resolver=NoSuchHostResolver(), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        context = ProbeContext(base_dir=tmp_path, resources={"http": session})
        observation = await http_probe(context, url="http://device.example/").check()

    assert observation.error_class == "dns"
    assert observation.detail == "cannot resolve device.example"


async def test_an_answer_slower_than_the_threshold_is_slow(
    context: ProbeContext, device: str
) -> None:
    ticks = iter([50.0, 52.5])  # the probe reads the clock before and after the request
    context.monotonic = lambda: next(ticks)
    observation = await http_probe(context, url=f"{device}/ok", max_latency="1s").check()

    assert observation.error_class == "slow"
    assert observation.latency_ms == 2500
    assert observation.detail == "HTTP 200 in 2500 ms, over the 1 s limit"


async def test_credentials_in_the_url_stay_out_of_the_observation(
    context: ProbeContext, device: str
) -> None:
    url = device.replace("http://", "http://admin:s3cret-pw@") + "/status/500"
    observation = await http_probe(context, url=url).check()

    assert "s3cret-pw" not in repr(observation)
    assert observation.data["url"] == f"{device}/status/500"


def tls_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    return app


@pytest.mark.parametrize(
    "not_after",
    [
        pytest.param(timedelta(days=400), id="utctime"),
        pytest.param(datetime(2100, 1, 1, tzinfo=UTC), id="generalizedtime"),
    ],
)
async def test_tls_verified_with_the_ca_file_is_healthy_and_reports_the_expiry(
    context: ProbeContext, clock: Clock, tmp_path: Path, not_after: timedelta | datetime
) -> None:
    expiry = clock.now + not_after if isinstance(not_after, timedelta) else not_after
    tls = make_tls(tmp_path, not_after=expiry)
    async with serving(tls_app(), tls=tls.server) as base:
        observation = await http_probe(context, url=base + "/", ca_file=str(tls.ca_file)).check()

    assert observation.healthy, observation.detail
    assert observation.data["cert_not_after"] == expiry.isoformat()


async def test_tls_without_the_ca_is_rejected_as_tls(context: ProbeContext, tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    async with serving(tls_app(), tls=tls.server) as base:
        observation = await http_probe(context, url=base + "/").check()

    assert observation.error_class == "tls"
    assert observation.detail.startswith("TLS certificate of 127.0.0.1:")


async def test_a_certificate_expiring_within_the_warning_days_is_cert_expiring(
    context: ProbeContext, clock: Clock, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path, not_after=clock.now + timedelta(days=5))
    async with serving(tls_app(), tls=tls.server) as base:
        warned = await http_probe(context, url=base + "/", ca_file=str(tls.ca_file)).check()
        quiet = await http_probe(
            context, url=base + "/", ca_file=str(tls.ca_file), expiry_warning_days=3
        ).check()

    assert warned.error_class == "cert_expiring"
    assert warned.kind_hint == "device_offline"
    assert f"TLS certificate expires in 5 days ({clock.now + timedelta(days=5):%Y-%m-%d})" in (
        warned.detail
    )
    assert quiet.healthy


async def test_without_verification_a_lapsed_self_signed_certificate_is_cert_expired(
    context: ProbeContext, clock: Clock, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path, not_after=clock.now - timedelta(days=1))
    async with serving(tls_app(), tls=tls.server) as base:
        observation = await http_probe(context, url=base + "/", verify_tls=False).check()

    assert observation.error_class == "cert_expired"
    assert observation.data["status"] == 200


def test_a_missing_ca_file_is_an_error_naming_it(tmp_path: Path) -> None:
    spec = HttpSpec.model_validate(
        {"type": "http", "url": "https://10.0.0.5/", "ca_file": "certs/ca.pem"}
    )
    with pytest.raises(ValueError, match=r"ca_file: cannot read .*certs/ca\.pem"):
        HttpProbe(spec, ProbeContext(base_dir=tmp_path))


def test_the_contract_example_parses() -> None:
    text = 'probe = { type = "http", url = "http://10.0.0.5/health", interval = "30s" }'
    spec = HttpSpec.model_validate(tomllib.loads(text)["probe"])

    assert spec.interval == timedelta(seconds=30)
    assert spec.timeout == timedelta(seconds=10)
    assert spec.method == "GET"
    assert spec.expect_status is None
    assert spec.verify_tls
    assert spec.expiry_warning_days == 14


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param({"url": "ftp://10.0.0.5/"}, "http:// or https://", id="scheme"),
        pytest.param({"colour": "red"}, "Extra inputs", id="unknown-key"),
        pytest.param({"timeout": "0s"}, "timeout must be positive", id="zero-timeout"),
        pytest.param({"timeout": 5}, "durations are strings", id="timeout-not-string"),
        pytest.param({"expect_status": 99}, "greater than or equal to 100", id="status-range"),
        pytest.param({"verify_tls": False, "ca_file": "ca.pem"}, "no effect", id="ca-no-verify"),
        pytest.param({"max_latency": "10s"}, "shorter than timeout", id="latency-vs-timeout"),
        pytest.param({"method": "BREW"}, "method", id="method"),
    ],
)
def test_invalid_specs_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HttpSpec.model_validate({"type": "http", "url": "http://10.0.0.5/", **extra})


def test_the_certificate_reader_refuses_garbage() -> None:
    assert certificate_not_after(b"") is None
    assert certificate_not_after(b"\x30\x82\xff\xff") is None
    assert certificate_not_after(b"not a certificate at all") is None
