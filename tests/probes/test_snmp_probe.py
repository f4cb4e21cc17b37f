"""The SNMP probe against a real net-snmp agent (v2c and v3), plus the reboot arithmetic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.peers import SNMP_SYS_NAME, SNMP_V3_USERS, Snmpd
from tocsin.probes.base import ProbeContext
from tocsin.probes.observation import Health
from tocsin.probes.snmp import (
    SYS_UPTIME,
    TIMETICKS_MODULUS,
    SnmpProbe,
    SnmpSpec,
    UptimeReading,
    close_snmp_engine,
    rebooted,
    snmp_engine,
)
from tocsin.secrets import SecretError

SYS_NAME = "1.3.6.1.2.1.1.5.0"
SYS_SERVICES = "1.3.6.1.2.1.1.7.0"
DAY_TICKS = 86_400 * 100


class FakeMonotonic:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
async def context(tmp_path: Path, clock: FakeMonotonic) -> AsyncIterator[ProbeContext]:
    context = ProbeContext(base_dir=tmp_path, environ={}, monotonic=clock)
    try:
        yield context
    finally:
        await close_snmp_engine(context)


def spec(agent: Snmpd, **fields: Any) -> SnmpSpec:
    values: dict[str, Any] = {"type": "snmp", "host": "127.0.0.1", "port": agent.port}
    if fields.get("version", "2c") == "2c" and not any(k.startswith("community") for k in fields):
        values["community"] = "public"
    return SnmpSpec.model_validate(values | fields)


def v3_spec(agent: Snmpd, tmp_path: Path, user: str, **fields: Any) -> SnmpSpec:
    protocol, auth_key, priv_key = SNMP_V3_USERS[user]
    (tmp_path / "auth").write_text(fields.pop("auth_key", auth_key) + "\n")
    (tmp_path / "priv").write_text(fields.pop("priv_key", priv_key) + "\n")
    return spec(
        agent,
        version="3",
        user=user,
        auth_protocol="sha256" if protocol == "SHA-256" else "sha",
        auth_key_file="auth",
        priv_key_file="priv",
        **fields,
    )


async def test_it_reports_a_v2c_agent_healthy_with_its_uptime(
    snmpd: Snmpd, context: ProbeContext
) -> None:
    observation = await SnmpProbe(spec(snmpd), context).check()

    assert observation.health is Health.HEALTHY, observation.detail
    assert observation.detail.startswith("answered in ")
    assert isinstance(observation.data["sys_uptime_ticks"], int)
    assert SYS_UPTIME in observation.data["values"]
    assert "rebooted" not in observation.data


async def test_a_wrong_community_times_out_within_timeout_times_tries(
    snmpd: Snmpd, context: ProbeContext
) -> None:
    probe = SnmpProbe(
        spec(snmpd, community="not-the-community", timeout="300ms", retries=1), context
    )
    snmp_engine(context)  # created up front: its ~0.1 s start is not the probe's time

    started = time.monotonic()
    observation = await probe.check()
    elapsed = time.monotonic() - started

    assert observation.health is Health.UNHEALTHY
    assert (observation.kind_hint, observation.error_class) == ("device_offline", "timeout")
    assert "wrong community" in observation.detail
    assert 0.55 <= elapsed <= probe.spec.deadline + 0.2, elapsed  # 0.6 s of tries + slack
    assert "not-the-community" not in observation.detail


async def test_a_stopped_agent_is_offline(snmpd: Snmpd, context: ProbeContext) -> None:
    probe = SnmpProbe(spec(snmpd, timeout="200ms", retries=0), context)
    assert (await probe.check()).healthy

    snmpd.stop()
    observation = await probe.check()

    assert observation.health is Health.UNHEALTHY
    assert (observation.kind_hint, observation.error_class) == ("device_offline", "timeout")


@pytest.mark.parametrize("user", ["shauser", "sha256user"])
async def test_it_reaches_a_v3_agent_with_auth_and_aes_privacy(
    snmpd: Snmpd, context: ProbeContext, tmp_path: Path, user: str
) -> None:
    observation = await SnmpProbe(v3_spec(snmpd, tmp_path, user), context).check()

    assert observation.health is Health.HEALTHY, observation.detail


async def test_a_wrong_v3_auth_key_is_an_authentication_failure(
    snmpd: Snmpd, context: ProbeContext, tmp_path: Path
) -> None:
    wrong = v3_spec(snmpd, tmp_path, "shauser", auth_key="not-the-auth-key")

    observation = await SnmpProbe(wrong, context).check()

    assert observation.health is Health.UNHEALTHY
    assert observation.error_class == "auth"
    assert "not-the-auth-key" not in observation.detail


async def test_a_wrong_v3_privacy_key_goes_unanswered(
    snmpd: Snmpd, context: ProbeContext, tmp_path: Path
) -> None:
    wrong = v3_spec(snmpd, tmp_path, "shauser", priv_key="not-the-priv-key", timeout="200ms")

    observation = await SnmpProbe(wrong, context).check()

    assert (observation.health, observation.error_class) == (Health.UNHEALTHY, "timeout")
    assert "privacy key" in observation.detail


async def test_expected_oid_values_that_match_are_healthy(
    snmpd: Snmpd, context: ProbeContext
) -> None:
    oids = [{"oid": SYS_NAME, "expect": SNMP_SYS_NAME}, {"oid": SYS_SERVICES, "expect": 72}]

    observation = await SnmpProbe(spec(snmpd, oids=oids), context).check()

    assert observation.health is Health.HEALTHY, observation.detail
    assert observation.data["values"] == {SYS_NAME: SNMP_SYS_NAME, SYS_SERVICES: "72"}


@pytest.mark.parametrize(
    ("check", "words"),
    [
        pytest.param(
            {"oid": SYS_NAME, "expect": "another-name"}, "expected 'another-name'", id="text"
        ),
        pytest.param({"oid": SYS_SERVICES, "expect": 4}, "expected 4", id="number"),
        pytest.param({"oid": SYS_NAME, "expect": 72}, "expected 72", id="text-is-not-a-number"),
        pytest.param({"oid": "1.3.6.1.2.1.1.99.0"}, "does not exist", id="missing-oid"),
    ],
)
async def test_an_unexpected_or_missing_value_is_an_oid_mismatch(
    snmpd: Snmpd, context: ProbeContext, check: dict[str, Any], words: str
) -> None:
    observation = await SnmpProbe(spec(snmpd, oids=[check]), context).check()

    assert observation.health is Health.UNHEALTHY
    assert observation.error_class == "oid_mismatch"
    assert observation.kind_hint is None  # the device answers: it is not offline
    assert words in observation.detail


async def test_a_restarted_agent_is_noted_as_rebooted_and_stays_healthy(
    snmpd: Snmpd, context: ProbeContext, clock: FakeMonotonic
) -> None:
    probe = SnmpProbe(spec(snmpd), context)
    first = await probe.check()
    assert first.healthy
    assert "rebooted" not in first.data

    clock.now += 3600  # an hour on our clock: the agent's uptime should have grown as much
    snmpd.stop()
    snmpd.start()
    second = await probe.check()

    assert second.health is Health.HEALTHY
    assert second.data["rebooted"] is True
    assert "rebooted" in second.detail


async def test_an_agent_that_keeps_running_is_not_rebooted(
    snmpd: Snmpd, context: ProbeContext, clock: FakeMonotonic
) -> None:
    probe = SnmpProbe(spec(snmpd), context)
    await probe.check()
    clock.now += 0.5

    second = await probe.check()

    assert second.healthy
    assert "rebooted" not in second.data


@pytest.mark.parametrize(
    ("previous", "elapsed_s", "current", "expected"),
    [
        pytest.param(100 * DAY_TICKS, 60, 100 * DAY_TICKS + 6000, False, id="steady"),
        pytest.param(
            100 * DAY_TICKS, 60, 100 * DAY_TICKS + 5950, False, id="drift-inside-tolerance"
        ),
        pytest.param(100 * DAY_TICKS, 60, 3000, True, id="backwards"),
        pytest.param(500, 3600, 200 * 100, True, id="grew-but-less-than-elapsed"),
        pytest.param(TIMETICKS_MODULUS - 3000, 60, 3000, False, id="wrapped-on-time"),
        pytest.param(TIMETICKS_MODULUS - 3000, 60, 1000, True, id="wrapped-and-rebooted"),
        pytest.param(
            TIMETICKS_MODULUS - 3000, 60, TIMETICKS_MODULUS - 100, False, id="wrap-edge-slow"
        ),
        pytest.param(TIMETICKS_MODULUS - 3000, 20, TIMETICKS_MODULUS - 1000, False, id="near-wrap"),
        pytest.param(TIMETICKS_MODULUS - 3000, 20, 500, True, id="near-wrap-rebooted"),
        pytest.param(5 * DAY_TICKS, 0, 5 * DAY_TICKS - 1, False, id="same-instant-jitter"),
    ],
)
def test_reboot_detection_accounts_for_the_timeticks_wrap(
    previous: int, elapsed_s: float, current: int, expected: bool
) -> None:
    before = UptimeReading(previous, at=1000.0)
    now = UptimeReading(current, at=1000.0 + elapsed_s)

    assert rebooted(before, now, tolerance_s=2.0) is expected


def test_secrets_are_read_at_construction(tmp_path: Path) -> None:
    context = ProbeContext(base_dir=tmp_path, environ={"COMMUNITY": "from-env"})
    base = {"type": "snmp", "host": "127.0.0.1"}

    SnmpProbe(SnmpSpec.model_validate(base | {"community_env": "COMMUNITY"}), context)
    with pytest.raises(SecretError, match="missing-file"):
        SnmpProbe(SnmpSpec.model_validate(base | {"community_file": "missing-file"}), context)
    (tmp_path / "short").write_text("short\n")
    v3 = base | {"version": "3", "user": "u", "auth_key_file": "short"}
    with pytest.raises(SecretError, match="at least 8 characters") as caught:
        SnmpProbe(SnmpSpec.model_validate(v3), context)
    assert "short\n" not in str(caught.value)


async def test_one_v3_user_name_with_two_key_sets_works_against_both_agents(
    snmpd: Snmpd, other_snmpd: Snmpd, tmp_path: Path
) -> None:
    _, auth_key, priv_key = SNMP_V3_USERS["shauser"]
    environ = {"A1": auth_key, "P1": priv_key}
    environ |= {"A2": f"other-{auth_key}", "P2": f"other-{priv_key}"}
    context = ProbeContext(base_dir=tmp_path, environ=environ)
    base = {"type": "snmp", "host": "127.0.0.1", "version": "3", "user": "shauser"}
    first = SnmpSpec.model_validate(
        base | {"port": snmpd.port, "auth_key_env": "A1", "priv_key_env": "P1"}
    )
    second = SnmpSpec.model_validate(
        base | {"port": other_snmpd.port, "auth_key_env": "A2", "priv_key_env": "P2"}
    )
    probes = [SnmpProbe(first, context), SnmpProbe(second, context)]
    try:
        results = await asyncio.gather(*(p.check() for p in probes * 4))
    finally:
        await close_snmp_engine(context)

    assert [r.health for r in results] == [Health.HEALTHY] * 8, [r.detail for r in results]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({}, "exactly one of community", id="v2c-without-community"),
        pytest.param({"community": "a", "community_env": "B"}, "exactly one", id="two-communities"),
        pytest.param({"version": "3"}, "needs a user", id="v3-without-user"),
        pytest.param(
            {"version": "3", "user": "u", "priv_key_env": "P"},
            "authentication key",
            id="priv-without-auth",
        ),
        pytest.param({"community": "a", "oids": [{"oid": "sysUpTime.0"}]}, "oids", id="named-oid"),
        pytest.param({"community": "a", "timeout": "0s"}, "positive", id="zero-timeout"),
        pytest.param({"community": "a", "retries": 9}, "retries", id="too-many-retries"),
    ],
)
def test_invalid_specs_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SnmpSpec.model_validate({"type": "snmp", "host": "h"} | fields)


async def test_an_unresolvable_host_is_reported_not_raised(context: ProbeContext) -> None:
    probe = SnmpProbe(
        SnmpSpec.model_validate(
            {"type": "snmp", "host": "no-such-host.invalid", "community": "public"}
        ),
        context,
    )

    observation = await probe.check()

    assert (observation.health, observation.error_class) == (Health.UNHEALTHY, "dns")


async def test_an_address_is_used_as_it_is_and_a_name_is_resolved(
    snmpd: Snmpd, context: ProbeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pysnmp resolves even an address in a thread; at 10,000 subjects that was 7 % of the
    probe worker's time. An IPv4 address needs no resolver; a name still does."""
    asked: list[str] = []
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def counted(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return await resolve(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counted)

    by_address = await SnmpProbe(spec(snmpd), context).check()
    assert by_address.health is Health.HEALTHY, by_address.detail
    assert asked == []

    by_name = await SnmpProbe(spec(snmpd, host="localhost"), context).check()
    assert by_name.health is Health.HEALTHY, by_name.detail
    assert asked == ["localhost"]
