"""SNMP probe: one GET per check (v2c community or v3 user), through one shared SnmpEngine.

- No answer within `timeout` x (`retries` + 1) is `device_offline` / `timeout`. A wrong v2c
  community looks exactly like that (the agent stays silent), so the detail says so.
- The retries are the probe's own way to ride out a lost UDP datagram; they never stand in for
  the tracker's debounce.
- A missing OID (NoSuchObject / NoSuchInstance) or a value other than the configured `expect`
  is `oid_mismatch`: the device answers, so it is not offline.
- sysUpTime.0 is always fetched alongside the configured OIDs. When it is lower than the last
  reading plus the time since, the device rebooted: `data["rebooted"]` is set, the detail says
  so and a log line records it. The subject stays healthy when it answers.

Library errors (pysnmp, OSError) stop here and become an Observation; only CancelledError
passes through.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

import structlog
from pyasn1.type import univ  # type: ignore[import-untyped]
from pydantic import Field, field_validator, model_validator
from pysnmp.carrier.asyncio.dgram.udp import (  # type: ignore[import-untyped]
    UdpAsyncioTransport,
)
from pysnmp.error import PySnmpError  # type: ignore[import-untyped]
from pysnmp.hlapi.v3arch.asyncio import (  # type: ignore[import-untyped]
    USM_AUTH_HMAC96_SHA,
    USM_AUTH_HMAC192_SHA256,
    USM_PRIV_CFB128_AES,
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
)
from pysnmp.proto import errind  # type: ignore[import-untyped]
from pysnmp.proto.rfc1905 import (  # type: ignore[import-untyped]
    EndOfMibView,
    NoSuchInstance,
    NoSuchObject,
)

from tocsin.durations import Duration
from tocsin.probes.base import ProbeContext, SpecModel
from tocsin.probes.observation import Health, Observation
from tocsin.secrets import SecretError, read_secret

log = structlog.get_logger("tocsin.probes.snmp")

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
TIMETICKS_MODULUS = 2**32  # TimeTicks is an unsigned 32-bit count of 1/100 s: wraps ~497 days
ENGINE_RESOURCE = "snmp_engine"
TARGET_TTL = 300.0  # seconds a resolved transport target is reused
_V3_USERS_RESOURCE = "snmp_v3_users"
_AUTH_ERRORS = (
    errind.WrongDigest,
    errind.UnknownUserName,
    errind.UnknownSecurityName,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.DecryptionError,
    errind.UnsupportedSecurityLevel,
    errind.NotInTimeWindow,
    errind.UnknownCommunityName,
)


class OidCheck(SpecModel):
    """One OID to GET (numeric, e.g. "1.3.6.1.2.1.1.5.0"), optionally with the value it must
    have: an integer for numeric types, text for strings (compared as net-snmp prints them)."""

    oid: Annotated[str, Field(pattern=r"^\.?[0-9]+(\.[0-9]+)+$")]
    """A numeric OID, e.g. "1.3.6.1.2.1.1.5.0"."""
    expect: int | str | None = None
    """The value it must have (an integer, or text as net-snmp prints it); unset: any."""

    @field_validator("oid")
    @classmethod
    def _strip_dot(cls, value: str) -> str:
        return value.lstrip(".")


# The default OID check, one (frozen) instance shared by every SNMP device that keeps the
# default: a fleet of them need not hold a copy each.
_UPTIME_CHECK = OidCheck(oid=SYS_UPTIME)


class SnmpSpec(SpecModel):
    """probe = { type = "snmp", host = "10.0.0.6", version = "2c", community = "public" }"""

    type: Literal["snmp"]
    """An SNMP GET."""
    host: Annotated[str, Field(min_length=1)]
    """The agent's host name or address."""
    port: Annotated[int, Field(ge=1, le=65535)] = 161
    """The agent's UDP port."""
    version: Literal["2c", "3"] = "2c"
    """SNMP version: 2c (a community) or 3 (a user)."""
    community: str | None = None
    """v2c: the community, written in the config (or community_file / community_env)."""
    community_file: str | None = None
    """v2c: a file holding the community."""
    community_env: str | None = None
    """v2c: an environment variable holding the community."""
    user: str | None = None
    """v3: the user name (required for v3)."""
    auth_protocol: Literal["sha", "sha256"] = "sha"
    """v3: the authentication protocol, HMAC-SHA-96 or HMAC-SHA-256."""
    auth_key_file: str | None = None
    """v3: a file holding the authentication key; without a key: noAuthNoPriv."""
    auth_key_env: str | None = None
    """v3: an environment variable holding the authentication key."""
    priv_protocol: Literal["aes"] = "aes"
    """v3: the privacy protocol (AES-128)."""
    priv_key_file: str | None = None
    """v3: a file holding the privacy key (needs an authentication key)."""
    priv_key_env: str | None = None
    """v3: an environment variable holding the privacy key."""
    oids: Annotated[list[OidCheck], Field(min_length=1)] = Field(
        default_factory=lambda: [_UPTIME_CHECK]
    )
    """The OIDs to GET; sysUpTime.0 is always fetched too, to notice reboots."""
    timeout: Duration = timedelta(seconds=1)
    """How long to wait for an answer, per try."""
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    """Tries after the first to ride out a lost datagram (not a debounce)."""
    interval: Duration | None = None
    """How often it runs; unset: the device's interval, else monitor.interval."""

    @model_validator(mode="after")
    def _credentials_fit_version(self) -> SnmpSpec:
        communities = [self.community, self.community_file, self.community_env]
        given = sum(c is not None for c in communities)
        v3_keys = [self.user, self.auth_key_file, self.auth_key_env]
        v3_keys += [self.priv_key_file, self.priv_key_env]
        if self.version == "2c":
            if given != 1:
                raise ValueError(
                    "v2c needs exactly one of community, community_file, community_env"
                )
            if any(k is not None for k in v3_keys):
                raise ValueError("user and *_key_* keys are for version = '3'")
        else:
            if given:
                raise ValueError("community keys are for version = '2c'")
            if not self.user:
                raise ValueError("version = '3' needs a user")
            if self.auth_key_file is not None and self.auth_key_env is not None:
                raise ValueError("give one of auth_key_file or auth_key_env")
            if self.priv_key_file is not None and self.priv_key_env is not None:
                raise ValueError("give one of priv_key_file or priv_key_env")
            has_auth = self.auth_key_file is not None or self.auth_key_env is not None
            has_priv = self.priv_key_file is not None or self.priv_key_env is not None
            if has_priv and not has_auth:
                raise ValueError("a privacy key needs an authentication key too")
        if self.timeout.total_seconds() <= 0:
            raise ValueError("timeout must be positive")
        return self

    @property
    def deadline(self) -> float:
        """Seconds a check may take at most: every try timing out, plus a little slack."""
        return self.timeout.total_seconds() * (self.retries + 1) + 0.5


def snmp_engine(context: ProbeContext, name: str = ENGINE_RESOURCE) -> Any:
    """The context's shared SnmpEngine, created on first use (creating one costs ~100 ms and
    it owns the UDP socket, so probes share it). `close_snmp_engine` releases it.

    Only a v3 user name configured with a second key set gets an engine of its own (`name`):
    one engine holds one key set per user name, and would swap keys under requests in flight.
    """
    engine = context.resources.get(name)
    if engine is None:
        engine = context.resources[name] = SnmpEngine()
    return engine


async def close_snmp_engine(context: ProbeContext) -> None:
    """Close the context's SnmpEngines, if any, inside the loop that used them."""
    for name in [n for n in context.resources if n.startswith(ENGINE_RESOURCE)]:
        context.resources.pop(name).close_dispatcher()
    await asyncio.sleep(0)  # UDP transports close on the loop's next turn


@dataclass(frozen=True)
class UptimeReading:
    ticks: int  # sysUpTime.0, 1/100 s
    at: float  # our monotonic clock when it was read, seconds


def rebooted(previous: UptimeReading, current: UptimeReading, tolerance_s: float) -> bool:
    """Whether sysUpTime went backwards: `current` is lower than `previous` plus the time that
    passed on our clock, by more than `tolerance_s` (clock drift, request latency).

    TimeTicks wraps at 2**32 (about 497 days): when the expected value has passed 2**32, the
    counter wrapped, and the reading is compared with the expected value past the wrap. Within
    `tolerance_s` of the wrap either reading is accepted.
    """
    elapsed = max(0.0, current.at - previous.at) * 100
    tolerance = tolerance_s * 100
    expected = previous.ticks + elapsed
    wraps = int((expected + tolerance) // TIMETICKS_MODULUS)
    return current.ticks + wraps * TIMETICKS_MODULUS < expected - tolerance


def format_uptime(ticks: int) -> str:
    seconds = ticks // 100
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


DRAIN_DATAGRAMS = 256  # answers read per wake-up of the engine's UDP socket, at most


class _DrainingUdp(UdpAsyncioTransport):  # type: ignore[misc]
    """pysnmp's UDP transport, reading every answer waiting on the socket per wake-up.

    asyncio's datagram transport reads one datagram per event-loop turn. All SNMP probes share
    one engine and so one socket: on a loop that also runs thousands of other checks, answers
    then arrive faster than one per turn, queue in the kernel's receive buffer (~200 KB, some
    200 answers) and past that are dropped, and checks of healthy agents time out. Measured at
    10,000 SNMP subjects: some 6 % of checks failed so, 12,000 datagrams dropped in 5 minutes.
    """

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        super().datagram_received(datagram, address)
        sock = getattr(self.transport, "_sock", None)  # asyncio's selector transport (not uvloop)
        if sock is None:
            return
        for _ in range(DRAIN_DATAGRAMS):
            try:
                datagram, address = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the transport's own next read reports it
            super().datagram_received(datagram, address)


class _DrainingTarget(UdpTransportTarget):  # type: ignore[misc]
    PROTO_TRANSPORT = _DrainingUdp

    async def _resolve_address(self, address: tuple[str, int]) -> tuple[str, int]:
        """An IPv4 address as it is; a name through the resolver (pysnmp's way). pysnmp asks
        the resolver, in a thread, even for an address: at 10,000 SNMP subjects that thread
        hand-off was 7 % of the probe worker's time."""
        try:
            return str(ipaddress.IPv4Address(address[0])), address[1]
        except ValueError:
            resolved: tuple[str, int] = await super()._resolve_address(address)
            return resolved


class SnmpProbe:
    """A PullProbe for one SNMP agent. Secrets are read here, at construction (SecretError);
    `check` never raises but CancelledError and returns within `spec.deadline`."""

    def __init__(self, spec: SnmpSpec, context: ProbeContext) -> None:
        self.spec = spec
        self._context = context
        self._engine = ENGINE_RESOURCE
        self._cached_target: tuple[float, Any] | None = None
        self._auth = self._auth_data(spec, context)
        self._oids = [c.oid for c in spec.oids]
        if SYS_UPTIME not in self._oids:
            self._oids.append(SYS_UPTIME)
        # Made (and resolved by pysnmp) once, not on every check: its checks never overlap.
        self._context_data = ContextData()
        self._var_binds = [ObjectType(ObjectIdentity(oid)) for oid in self._oids]
        self._last_uptime: UptimeReading | None = None
        self.timeout = spec.deadline

    def _auth_data(self, spec: SnmpSpec, context: ProbeContext) -> Any:
        def secret(name: str, file: str | None, env: str | None) -> str | None:
            if file is None and env is None:
                return None
            value = read_secret(
                file=file, env=env, base_dir=context.base_dir, environ=context.environ
            )
            if spec.version == "3" and len(value) < 8:
                raise SecretError(f"the SNMPv3 {name} must have at least 8 characters")
            return value

        if spec.version == "2c":
            community = spec.community or secret(
                "community", spec.community_file, spec.community_env
            )
            return CommunityData(community, mpModel=1)
        auth_key = secret("auth key", spec.auth_key_file, spec.auth_key_env)
        priv_key = secret("privacy key", spec.priv_key_file, spec.priv_key_env)
        self._engine = _engine_for_user(
            context, spec.user or "", (spec.auth_protocol, auth_key, priv_key)
        )
        sha = USM_AUTH_HMAC192_SHA256 if spec.auth_protocol == "sha256" else USM_AUTH_HMAC96_SHA
        return UsmUserData(
            spec.user,
            authKey=auth_key,
            privKey=priv_key,
            authProtocol=sha if auth_key else None,
            privProtocol=USM_PRIV_CFB128_AES if priv_key else None,
        )

    async def check(self) -> Observation:
        # Latency is real time; uptime readings use context.monotonic, which tests replace.
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.spec.deadline):
                result = await self._get()
        except TimeoutError:
            return self._offline(started)
        except _UnresolvedHost as exc:
            return Observation(
                Health.UNHEALTHY,
                f"cannot resolve {self.spec.host}: {exc}",
                kind_hint="device_offline",
                error_class="dns",
            )
        except (PySnmpError, OSError) as exc:
            return Observation(
                Health.UNHEALTHY,
                f"cannot query {self._where}: {exc}",
                kind_hint="device_offline",
                error_class="network",
            )
        error_indication, error_status, error_index, var_binds = result
        latency_ms = (time.monotonic() - started) * 1000
        if error_indication is not None:
            if isinstance(error_indication, errind.RequestTimedOut):
                return self._offline(started)
            if isinstance(error_indication, _AUTH_ERRORS):
                return Observation(
                    Health.UNHEALTHY,
                    f"SNMPv3 authentication failed at {self._where}: {error_indication}"
                    " (check user, keys and protocols)",
                    error_class="auth",
                    latency_ms=latency_ms,
                )
            return Observation(
                Health.UNHEALTHY,
                f"SNMP error from {self._where}: {error_indication}",
                error_class="snmp_error",
                latency_ms=latency_ms,
            )
        if error_status:
            at = var_binds[int(error_index) - 1][0] if error_index else "?"
            return Observation(
                Health.UNHEALTHY,
                f"{self._where} answered {error_status.prettyPrint()} at {at}",
                error_class="snmp_error",
                latency_ms=latency_ms,
            )
        return self._judge(var_binds, latency_ms)

    @property
    def _where(self) -> str:
        return f"{self.spec.host}:{self.spec.port}"

    async def _target(self) -> Any:
        """The transport target, resolved once and kept for TARGET_TTL seconds: creating it
        resolves the host name in a thread, about a sixth of a check's cost when done each time;
        re-resolving now and then follows a device whose name moves to another address."""
        now = self._context.monotonic()
        if self._cached_target is None or now - self._cached_target[0] > TARGET_TTL:
            try:
                target = await _DrainingTarget.create(
                    (self.spec.host, self.spec.port),
                    timeout=self.spec.timeout.total_seconds(),
                    retries=self.spec.retries,
                )
            except PySnmpError as exc:
                # pysnmp wraps the resolver's error; keep only its last words
                reason = str(exc).rsplit(": ", 1)[-1]
                raise _UnresolvedHost(reason) from None
            self._cached_target = (now, target)
        return self._cached_target[1]

    async def _get(self) -> tuple[Any, Any, Any, Any]:
        target = await self._target()
        result: tuple[Any, Any, Any, Any] = await get_cmd(
            snmp_engine(self._context, self._engine),
            self._auth,
            target,
            self._context_data,
            *self._var_binds,
            lookupMib=False,
        )
        return result

    def _offline(self, started: float) -> Observation:
        tries = self.spec.retries + 1
        detail = f"no SNMP answer from {self._where} within {self.spec.timeout.total_seconds():g} s"
        detail += f" x {tries} tries" if tries > 1 else ""
        if self.spec.version == "2c":
            detail += " (a wrong community also goes unanswered)"
        elif self.spec.priv_key_file or self.spec.priv_key_env:
            detail += " (a wrong privacy key also goes unanswered)"
        return Observation(
            Health.UNHEALTHY,
            detail,
            kind_hint="device_offline",
            error_class="timeout",
            latency_ms=(time.monotonic() - started) * 1000,
        )

    def _judge(self, var_binds: Any, latency_ms: float) -> Observation:
        values: dict[str, str] = {}
        problems: list[str] = []
        expected = {c.oid: c.expect for c in self.spec.oids}
        uptime: int | None = None
        for name, value in var_binds:
            oid = str(name)
            if isinstance(value, (NoSuchObject, NoSuchInstance, EndOfMibView)):
                if oid in expected:
                    problems.append(f"{oid} does not exist on the agent")
                continue
            values[oid] = _text(value)
            if oid == SYS_UPTIME and isinstance(value, univ.Integer):
                uptime = int(value)
            want = expected.get(oid)
            if want is not None and not _matches(value, want):
                problems.append(f"{oid} is {values[oid]!r}, expected {want!r}")
        data: dict[str, Any] = {"values": {k: v for k, v in values.items() if k in expected}}
        reboot_note = self._note_uptime(uptime, data)
        if problems:
            return Observation(
                Health.UNHEALTHY,
                "; ".join(problems) + reboot_note,
                error_class="oid_mismatch",
                latency_ms=latency_ms,
                data=data,
            )
        detail = f"answered in {latency_ms:.0f} ms"
        if uptime is not None:
            detail += f", up {format_uptime(uptime)}"
        return Observation(Health.HEALTHY, detail + reboot_note, latency_ms=latency_ms, data=data)

    def _note_uptime(self, uptime: int | None, data: dict[str, Any]) -> str:
        """Remember this reading; return a note for the detail when the device rebooted."""
        if uptime is None:
            return ""
        data["sys_uptime_ticks"] = uptime
        reading = UptimeReading(uptime, self._context.monotonic())
        previous, self._last_uptime = self._last_uptime, reading
        if previous is None or not rebooted(
            previous, reading, tolerance_s=self._tolerance(previous, reading)
        ):
            return ""
        data["rebooted"] = True
        log.warning(
            "snmp.device_rebooted",
            host=self.spec.host,
            port=self.spec.port,
            uptime_before_ticks=previous.ticks,
            uptime_now_ticks=uptime,
        )
        return f"; rebooted (uptime {format_uptime(uptime)}, was {format_uptime(previous.ticks)})"

    def _tolerance(self, previous: UptimeReading, current: UptimeReading) -> float:
        # Both readings may lag their answer by up to a request's deadline; clocks drift ~1%.
        return 2 * self.spec.deadline + 0.01 * max(0.0, current.at - previous.at)


class _UnresolvedHost(Exception):
    """The host name did not resolve (raised inside the probe, never out of it)."""


def _engine_for_user(context: ProbeContext, user: str, keys: tuple[str | None, ...]) -> str:
    """The name of the engine for this v3 user and key set: the shared one for the first key
    set seen with this user name, one of its own for any other."""
    users: dict[str, str] = context.resources.setdefault(_V3_USERS_RESOURCE, {})
    fingerprint = hashlib.sha256(repr(keys).encode()).hexdigest()[:16]
    if users.setdefault(user, fingerprint) == fingerprint:
        return ENGINE_RESOURCE
    return f"{ENGINE_RESOURCE}:{user}:{fingerprint}"


def _text(value: Any) -> str:
    if isinstance(value, univ.Integer):
        return str(int(value))
    return str(value.prettyPrint())


def _matches(value: Any, want: int | str) -> bool:
    if isinstance(want, int):
        return isinstance(value, univ.Integer) and int(value) == want
    return _text(value) == want
