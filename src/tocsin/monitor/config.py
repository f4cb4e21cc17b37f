"""The monitored subjects in the config: [[devices]], [[integrations]], [[mqtt.brokers]], and
each subject's overrides of the [monitor] windows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tocsin.durations import Duration
from tocsin.probes.credentials import CredentialCheckSpec
from tocsin.probes.http import HttpSpec
from tocsin.probes.mqtt import BrokerSpec, MqttProbeSpec
from tocsin.probes.observation import SubjectKey
from tocsin.probes.push import PushSpec
from tocsin.probes.snmp import SnmpSpec
from tocsin.secrets import SecretError, read_secret
from tocsin.tracker import Windows

SUBJECT_ID = r"^[^\s/][^/]{0,127}$"
ORG_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"

DeviceProbe = Annotated[HttpSpec | SnmpSpec | MqttProbeSpec | PushSpec, Field(discriminator="type")]


class _Model(BaseModel):
    # The docstring under each field is its description (the README's config reference).
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


class WindowOverrides(_Model):
    """Per-subject overrides of the [monitor] windows; unset keys take the global value."""

    interval: Duration | None = None
    """How often its pull probe runs (the probe's own interval wins); unset: monitor.interval."""
    debounce: Duration | None = None
    """Unhealthy this long before a ticket opens; unset: monitor.debounce."""
    recovery: Duration | None = None
    """Healthy this long before its ticket auto-resolves; unset: monitor.recovery."""
    reopen_window: Duration | None = None
    """Failing again this soon after a resolution reopens it; unset: monitor.reopen_window."""
    flap_window: Duration | None = None
    """The window health flips are counted in; unset: monitor.flap_window."""
    flap_threshold: Annotated[int, Field(ge=1)] | None = None
    """More flips than this within flap_window is flapping; unset: monitor.flap_threshold."""
    auto_resolve: bool | None = None
    """Resolve its ticket on recovery (false: a comment only); unset: monitor.auto_resolve."""
    auto_resolve_in_progress: bool | None = None
    """Auto-resolve an In Progress ticket too; unset: monitor.auto_resolve_in_progress."""


class MonitorDefaults(_Model):
    """[monitor]: the defaults every subject starts from, and the monitor's own limits."""

    debounce: Duration = timedelta(minutes=2)
    """Continuously unhealthy this long before a ticket opens."""
    recovery: Duration = timedelta(minutes=1)
    """Continuously healthy this long before the ticket auto-resolves."""
    reopen_window: Duration = timedelta(hours=24)
    """Failing again within this time after the resolution reopens the same ticket."""
    interval: Duration = timedelta(seconds=30)
    """How often pull probes (http, snmp, credential checks) run."""
    flap_window: Duration = timedelta(minutes=10)
    """The window in which health flips are counted."""
    flap_threshold: Annotated[int, Field(ge=1)] = 5
    """More health flips than this within flap_window mark a subject flapping: one note, no
    resolve/reopen churn."""
    auto_resolve: bool = True
    """Resolve a ticket when its subject recovers; false: the monitor only comments."""
    auto_resolve_in_progress: bool = True
    """Auto-resolve In Progress tickets too; false: leave them to the person working them."""
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 256
    """Pull probes running at once, overall."""
    per_host_concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    """Pull probes running at once against one host."""
    push_secret_file: str | None = None
    """The site secret push URLs derive from; default: a file push-secret created beside the
    SQLite database."""
    push_secret_env: str | None = None
    """The site secret from an environment variable instead."""


class DeviceConfig(WindowOverrides):
    """[[devices]]: a device watched by one probe; it may override the [monitor] windows."""

    org: Annotated[str, Field(pattern=ORG_SLUG)]
    """The slug of the org it belongs to."""
    id: Annotated[str, Field(pattern=SUBJECT_ID)]
    """Unique among the org's devices; no '/', 1-128 characters."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """What people read in tickets and webhooks."""
    space: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """Where it is, e.g. a room."""
    labels: dict[str, str] = {}
    """Free-form labels, e.g. { rack = "A3" }."""
    depends_on: list[str] = []
    """Ids of subjects in the same org it depends on (each must exist)."""
    probe: DeviceProbe
    """How it is probed; its type (http, snmp, mqtt or push) picks the other keys."""

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.org, "device", self.id)


class IntegrationConfig(WindowOverrides):
    """[[integrations]]: a third-party API whose credentials tocsin checks."""

    org: Annotated[str, Field(pattern=ORG_SLUG)]
    """The slug of the org it belongs to."""
    id: Annotated[str, Field(pattern=SUBJECT_ID)]
    """Unique among the org's integrations; no '/', 1-128 characters."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """What people read in tickets and webhooks."""
    labels: dict[str, str] = {}
    """Free-form labels."""
    depends_on: list[str] = []
    """Ids of subjects in the same org it depends on (each must exist)."""
    check: CredentialCheckSpec
    """The credential check: an authenticated HTTP request."""

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.org, "integration", self.id)


class MqttConfig(_Model):
    """[mqtt]: the brokers mqtt probes use."""

    brokers: list[BrokerSpec] = []
    """One connection per broker; each broker is itself watched (integration mqtt-broker:NAME)."""


Subject = DeviceConfig | IntegrationConfig


def windows_for(
    defaults: MonitorDefaults, subject: WindowOverrides, *, confirm_by_checks: bool = False
) -> Windows:
    def pick(name: str) -> Any:
        own = getattr(subject, name)
        return getattr(defaults, name) if own is None else own

    return Windows(
        debounce=pick("debounce"),
        recovery=pick("recovery"),
        reopen_window=pick("reopen_window"),
        flap_window=pick("flap_window"),
        flap_threshold=pick("flap_threshold"),
        auto_resolve=pick("auto_resolve"),
        auto_resolve_in_progress=pick("auto_resolve_in_progress"),
        confirm_by_checks=confirm_by_checks,
    )


def interval_for(defaults: MonitorDefaults, subject: Subject) -> timedelta:
    spec_interval = getattr(
        subject.probe if isinstance(subject, DeviceConfig) else subject.check, "interval", None
    )
    return spec_interval or subject.interval or defaults.interval


def cross_check(
    orgs: set[str],
    devices: list[DeviceConfig],
    integrations: list[IntegrationConfig],
    mqtt: MqttConfig,
    monitor: MonitorDefaults,
    base_dir: Path | None,
    environ: Mapping[str, str],
) -> list[tuple[str, str]]:
    """Problems that span keys: unknown orgs and brokers, duplicate ids, dangling depends_on,
    unreadable files (secrets, CA files). Each as (key path, message); values never shown."""
    problems: list[tuple[str, str]] = []
    seen: dict[SubjectKey, str] = {}
    brokers = {b.name for b in mqtt.brokers}
    names = [b.name for b in mqtt.brokers]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append((f"mqtt.brokers[{i}].name", f"broker {name!r} is defined twice"))
    subjects: list[tuple[str, Subject]] = [(f"devices[{i}]", d) for i, d in enumerate(devices)]
    subjects += [(f"integrations[{i}]", s) for i, s in enumerate(integrations)]
    for path, subject in subjects:
        if subject.org not in orgs:
            problems.append((f"{path}.org", f"no org {subject.org!r} in [[orgs]]"))
        if subject.key in seen:
            problems.append((f"{path}.id", f"{subject.id!r} is also {seen[subject.key]}"))
        seen.setdefault(subject.key, path)
        probe = subject.probe if isinstance(subject, DeviceConfig) else None
        if isinstance(probe, MqttProbeSpec) and probe.broker not in brokers:
            message = f"no broker {probe.broker!r} in [[mqtt.brokers]]"
            problems.append((f"{path}.probe.broker", message))
    for path, subject in subjects:
        for j, parent in enumerate(subject.depends_on):
            if not any(k.org == subject.org and k.id == parent for k in seen):
                problems.append((f"{path}.depends_on[{j}]", f"no subject {parent!r} in the org"))
    files: list[tuple[str, BaseModel]] = [
        (f"mqtt.brokers[{i}]", b) for i, b in enumerate(mqtt.brokers)
    ]
    files += [(f"{path}.probe", s.probe) for path, s in subjects if isinstance(s, DeviceConfig)]
    files += [
        (f"{path}.check", s.check) for path, s in subjects if isinstance(s, IntegrationConfig)
    ]
    files.append(("monitor", monitor))
    for path, model in files:
        for key, value in _file_and_env_keys(model, path):
            try:
                if key.endswith("_env"):
                    read_secret(env=value, environ=environ)
                else:
                    read_secret(file=value, base_dir=base_dir, environ=environ)
            except SecretError as exc:
                problems.append((key, str(exc)))
    return problems


def _file_and_env_keys(model: BaseModel, path: str) -> Iterator[tuple[str, str]]:
    """Every `*_file` / `*_env` value in a spec, nested models included, with its key path."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _file_and_env_keys(value, f"{path}.{name}")
        elif isinstance(value, str) and name.endswith(("_file", "_env")):
            yield f"{path}.{name}", value
