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
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WindowOverrides(_Model):
    """Per-subject overrides of the [monitor] windows; unset keys take the global value."""

    interval: Duration | None = None
    debounce: Duration | None = None
    recovery: Duration | None = None
    reopen_window: Duration | None = None
    flap_window: Duration | None = None
    flap_threshold: Annotated[int, Field(ge=1)] | None = None
    auto_resolve: bool | None = None
    auto_resolve_in_progress: bool | None = None


class MonitorDefaults(_Model):
    """[monitor]: the defaults every subject starts from, and the monitor's own limits."""

    debounce: Duration = timedelta(minutes=2)
    recovery: Duration = timedelta(minutes=1)
    reopen_window: Duration = timedelta(hours=24)
    interval: Duration = timedelta(seconds=30)
    flap_window: Duration = timedelta(minutes=10)
    flap_threshold: Annotated[int, Field(ge=1)] = 5
    auto_resolve: bool = True
    auto_resolve_in_progress: bool = True
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 256
    per_host_concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    push_secret_file: str | None = None
    push_secret_env: str | None = None


class DeviceConfig(WindowOverrides):
    org: Annotated[str, Field(pattern=ORG_SLUG)]
    id: Annotated[str, Field(pattern=SUBJECT_ID)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    space: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    labels: dict[str, str] = {}
    depends_on: list[str] = []
    probe: DeviceProbe

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.org, "device", self.id)


class IntegrationConfig(WindowOverrides):
    org: Annotated[str, Field(pattern=ORG_SLUG)]
    id: Annotated[str, Field(pattern=SUBJECT_ID)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    labels: dict[str, str] = {}
    depends_on: list[str] = []
    check: CredentialCheckSpec

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.org, "integration", self.id)


class MqttConfig(_Model):
    brokers: list[BrokerSpec] = []


Subject = DeviceConfig | IntegrationConfig


def windows_for(defaults: MonitorDefaults, subject: WindowOverrides) -> Windows:
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
