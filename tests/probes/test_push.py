"""Push heartbeats: keys, expiry edges on an injected monotonic clock, the /ping handler."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.probes.push import KEY_PATTERN, PushRegistry, PushSpec, derived_key, ping_handler
from tocsin.secrets import SecretError

from ._http_fixtures import serving

SITE_SECRET = b"site-secret-for-tests-0123456789"
CAMERA = SubjectKey("acme", "device", "lobby-cam-1")
BACKUP = SubjectKey("acme", "other", "nightly-backup")
BMS = SubjectKey("acme", "integration", "bms")


def push(timeout: str = "5m", **extra: Any) -> PushSpec:
    return PushSpec.model_validate({"type": "push", "timeout": timeout, **extra})


@dataclass
class Collected:
    """A sink that keeps what it is told."""

    seen: list[tuple[SubjectKey, Observation]] = field(default_factory=list)

    def __call__(self, subject: SubjectKey, observation: Observation) -> None:
        self.seen.append((subject, observation))


@dataclass
class Mono:
    now: float = 500.0

    def __call__(self) -> float:
        return self.now


def test_derived_keys_are_stable_unguessable_and_url_safe() -> None:
    key = derived_key(SITE_SECRET, CAMERA)

    assert key == derived_key(SITE_SECRET, CAMERA)
    assert key != derived_key(SITE_SECRET, BACKUP)
    assert key != derived_key(b"another-site-secret-0123456789", CAMERA)
    assert KEY_PATTERN.fullmatch(key)
    assert len(key) >= 22


def test_register_returns_the_key_a_ping_resolves() -> None:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(CAMERA, push(), now_mono=0)

    assert registry.ping(key, 1.0) == CAMERA
    assert registry.ping(key[:-1] + "x", 1.0) is None
    assert registry.ping("", 1.0) is None


def test_a_subject_never_pinged_fails_once_its_window_since_start_has_passed() -> None:
    registry = PushRegistry(SITE_SECRET)
    registry.register(CAMERA, push("5m", grace="1m"), now_mono=100)

    assert registry.expired(100 + 359) == []
    [(subject, observation)] = registry.expired(100 + 360)
    assert registry.expired(100 + 361) == []  # once per silence, not every tick

    assert subject == CAMERA
    assert observation.health is Health.UNHEALTHY
    assert observation.kind_hint == "device_offline"
    assert observation.error_class == "no_ping"
    assert observation.detail == "no ping in 6m since start"


def every_second(
    registry: PushRegistry, start: int, stop: int
) -> dict[int, list[tuple[SubjectKey, Observation]]]:
    """Call `expired` once a second from `start` to `stop`, as the daemon does (a call that
    comes more than 5 s late is a stall, which no window counts); what it reported, by time."""
    reports = {}
    for now in range(start, stop + 1):
        if found := registry.expired(now):
            reports[now] = found
    return reports


def test_a_ping_restarts_the_window_and_the_next_silence_is_reported_again() -> None:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(CAMERA, push("5m"), now_mono=0)
    registry.ping(key, 200)

    [(at_first, [(_, first)])] = every_second(registry, 200, 509).items()
    registry.ping(key, 510)
    [(at_second, [(_, second)])] = every_second(registry, 510, 900).items()

    assert (at_first, at_second) == (500, 810)
    assert first.detail == second.detail == "no ping for 5m"
    assert first.data == {"timeout": "5m"}


def test_next_deadline_is_the_earliest_unreported_window_end() -> None:
    registry = PushRegistry(SITE_SECRET)
    assert registry.next_deadline() is None
    registry.register(CAMERA, push("5m"), now_mono=0)
    registry.register(BACKUP, push("1m"), now_mono=0)

    assert registry.next_deadline() == 60
    registry.expired(60)
    assert registry.next_deadline() == 300


def test_an_integration_that_stops_pinging_is_unreachable() -> None:
    registry = PushRegistry(SITE_SECRET)
    registry.register(BMS, push("1m"), now_mono=0)

    [(_, observation)] = registry.expired(60)

    assert observation.kind_hint == "integration_unreachable"


def test_re_registering_keeps_the_ping_history() -> None:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(CAMERA, push("5m"), now_mono=0)
    registry.ping(key, 100)

    assert registry.register(CAMERA, push("10m"), now_mono=200) == key
    assert registry.expired(699) == []
    [(_, observation)] = registry.expired(700)
    assert observation.detail == "no ping for 10m"


def test_an_unregistered_subject_is_forgotten() -> None:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(CAMERA, push(), now_mono=0)
    registry.unregister(CAMERA)

    assert registry.ping(key, 1) is None
    assert registry.expired(10_000) == []
    assert registry.subjects() == []


def test_an_explicit_key_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "cam.key").write_text("flashed-into-the-firmware-0001\n")
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(CAMERA, push(key_file="cam.key"), now_mono=0, base_dir=tmp_path)

    assert key == "flashed-into-the-firmware-0001"
    assert registry.ping(key, 1) == CAMERA


def test_an_explicit_key_from_the_environment_is_used() -> None:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(
        BACKUP, push(key_env="BACKUP_KEY"), now_mono=0, environ={"BACKUP_KEY": "b" * 22}
    )

    assert key == "b" * 22


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, r"key_file: cannot read .*/cam\.key", id="missing"),
        pytest.param("too-short", r"key_file: the key in cam\.key must be 22", id="short"),
        pytest.param("has spaces in it and more", r"must be 22 to 128 characters", id="charset"),
    ],
)
def test_a_bad_key_file_is_a_secret_error_naming_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "cam.key").write_text(content)
    registry = PushRegistry(SITE_SECRET)

    with pytest.raises(SecretError, match=message) as caught:
        registry.register(CAMERA, push(key_file="cam.key"), now_mono=0, base_dir=tmp_path)
    if content is not None:
        assert content not in str(caught.value)


def test_two_subjects_cannot_share_a_key() -> None:
    registry = PushRegistry(SITE_SECRET)
    environ = {"K": "k" * 24}
    registry.register(CAMERA, push(key_env="K"), now_mono=0, environ=environ)

    with pytest.raises(ValueError, match="same push key as acme/device/lobby-cam-1"):
        registry.register(BACKUP, push(key_env="K"), now_mono=0, environ=environ)


def test_a_short_site_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PushRegistry(b"short")


def test_the_issue_example_parses() -> None:
    spec = PushSpec.model_validate(
        tomllib.loads('probe = { type = "push", timeout = "5m" }')["probe"]
    )

    assert spec.timeout == timedelta(minutes=5)
    assert spec.grace == timedelta(0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({}, "timeout", id="timeout-required"),
        pytest.param({"timeout": "0s"}, "timeout must be positive", id="zero"),
        pytest.param({"timeout": "5m", "key_file": "a", "key_env": "B"}, "not both", id="two-keys"),
        pytest.param({"timeout": "5m", "interval": "1m"}, "Extra inputs", id="unknown-key"),
    ],
)
def test_invalid_push_specs_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PushSpec.model_validate({"type": "push", **raw})


@dataclass
class PingServer:
    base: str
    key: str
    registry: PushRegistry
    sink: Collected
    mono: Mono


@pytest.fixture
async def server() -> AsyncIterator[PingServer]:
    registry = PushRegistry(SITE_SECRET)
    key = registry.register(BACKUP, push("1h"), now_mono=0)
    sink, mono = Collected(), Mono()
    app = web.Application()
    handler = ping_handler(registry, sink, monotonic=mono)
    app.router.add_get("/ping/{key}", handler)
    app.router.add_post("/ping/{key}", handler)
    async with serving(app) as base:
        yield PingServer(base, key, registry, sink, mono)


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        return r.status, await r.text()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_ping_answers_ok_and_reports_the_subject_healthy(
    server: PingServer, method: str
) -> None:
    server.mono.now = 1800

    assert await call(method, f"{server.base}/ping/{server.key}") == (200, "OK")
    [(subject, observation)] = server.sink.seen
    assert subject == BACKUP
    assert observation.health is Health.HEALTHY
    assert server.registry.expired(1800 + 3599) == []
    assert len(server.registry.expired(1800 + 3600)) == 1


async def test_an_unknown_key_is_404_and_reports_nothing(server: PingServer) -> None:
    status, text = await call("POST", f"{server.base}/ping/{'x' * 32}", data="fail")

    assert (status, text) == (404, "not found")
    assert server.sink.seen == []


@pytest.mark.parametrize(
    ("query", "body", "detail"),
    [
        pytest.param("?status=fail", None, "failure reported by ping", id="query"),
        pytest.param(
            "?status=fail",
            "disk full\n  on /backup",
            "failure reported by ping: disk full on /backup",
            id="query-and-message",
        ),
        pytest.param("", "FAIL", "failure reported by ping", id="plain-body"),
        pytest.param(
            "",
            '{"status": "fail", "message": "exit code 3"}',
            "failure reported by ping: exit code 3",
            id="json-body",
        ),
    ],
)
async def test_an_explicit_failure_reports_the_subject_unhealthy(
    server: PingServer, query: str, body: str | None, detail: str
) -> None:
    status, _ = await call("POST", f"{server.base}/ping/{server.key}{query}", data=body)

    assert status == 200
    [(subject, observation)] = server.sink.seen
    assert subject == BACKUP
    assert observation.health is Health.UNHEALTHY
    assert observation.kind_hint == "device_offline"
    assert observation.error_class == "fail_signal"
    assert observation.detail == detail


async def test_a_long_failure_message_is_cut(server: PingServer) -> None:
    await call("POST", f"{server.base}/ping/{server.key}?status=fail", data="x" * 20_000)

    [(_, observation)] = server.sink.seen
    assert observation.detail == "failure reported by ping: " + "x" * 200


async def test_an_unknown_status_is_400(server: PingServer) -> None:
    status, _ = await call("GET", f"{server.base}/ping/{server.key}?status=maybe")

    assert status == 400
    assert server.sink.seen == []
