"""The monitored subjects in the config: [[devices]], [[integrations]], [[spaces]],
[[mqtt.brokers]], [[maintenance]] windows, and each subject's overrides of the [monitor]
windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Annotated, Any, Literal, Protocol, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tocsin.durations import Duration
from tocsin.monitor.maintenance import Subject as MaintenanceSubject
from tocsin.monitor.maintenance import Target, Window, WindowError
from tocsin.probes.base import share_fields_set
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

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)  # one set for 100,000 subjects, not one each


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
    pull_probes: Literal["auto", "worker", "inline"] = "auto"
    """Where pull probes run: "worker", a child process on another core (the daemon's loop
    keeps the tracker, MQTT, the store and the API); "inline", the daemon's own event loop;
    "auto", a worker from 2,000 pull subjects when the daemon may run on more than one CPU.
    Read at start: a reload does not move the probes."""
    push_secret_file: str | None = None
    """The site secret push URLs derive from; default: a file push-secret created beside the
    SQLite database."""
    push_secret_env: str | None = None
    """The site secret from an environment variable instead."""
    group_threshold: Annotated[int, Field(ge=2, le=100_000)] = 3
    """This many devices of one space about to open device_offline tickets within group_window
    open one Multiple devices offline ticket for the space instead."""
    group_threshold_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    """Also group when this percentage of a space's devices (at least 2) are about to open
    tickets; the smaller of the two thresholds applies."""
    group_window: Duration | None = None
    """How close together the devices' tickets must be due to count as one incident; unset:
    monitor.debounce."""
    storm_limit: Annotated[int, Field(ge=0, le=1_000_000)] = 50
    """At most this many health-monitor tickets open per org per minute; past it, one
    Multiple devices offline ticket for the org (subject other:storm) lists the subjects that
    failed and takes the place of their tickets until the storm is over; 0: no cap."""


class DeviceConfig(WindowOverrides):
    """[[devices]]: a device watched by one probe; it may override the [monitor] windows."""

    org: Annotated[str, Field(pattern=ORG_SLUG)]
    """The slug of the org it belongs to."""
    id: Annotated[str, Field(pattern=SUBJECT_ID)]
    """Unique among the org's devices; no '/', 1-128 characters."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """What people read in tickets and webhooks."""
    space: Annotated[str, Field(pattern=SUBJECT_ID)] | None = None
    """The id of the space it is in (a [[spaces]] entry, or else a space of that id and name is
    implied); its group ticket (Multiple devices offline) covers it."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels, e.g. { rack = "A3" }."""
    depends_on: list[str] = Field(default_factory=list)
    """Ids of subjects in the same org it depends on (each must exist, no cycles): while one is
    failing or down, this subject opens no ticket of its own (it is unreachable, and listed on
    that parent's ticket); once none is, its debounce starts again."""
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
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels."""
    depends_on: list[str] = Field(default_factory=list)
    """Ids of subjects in the same org it depends on (each must exist, no cycles): while one is
    failing or down, this subject opens no ticket of its own (it is unreachable, and listed on
    that parent's ticket); once none is, its debounce starts again."""
    check: CredentialCheckSpec
    """The credential check: an authenticated HTTP request."""

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.org, "integration", self.id)


class SpaceConfig(_Model):
    """[[spaces]]: a place devices are in (a site, a floor, a room); devices name it by its id
    in their `space`. A space is a subject: its group ticket covers its devices."""

    org: Annotated[str, Field(pattern=ORG_SLUG)]
    """The slug of the org it belongs to."""
    id: Annotated[str, Field(pattern=SUBJECT_ID)]
    """Unique among the org's spaces, and no device or integration of the org has it; no '/',
    1-128 characters."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """What people read in tickets and webhooks."""
    parent: str | None = None
    """The id of another space of the org that this one is inside, e.g. a room's floor (no
    cycles). It acts as its dependency: while the parent space's group is down, this space
    opens no group ticket of its own."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels, e.g. { building = "B" }."""

    @property
    def key(self) -> SubjectKey:
        return SubjectKey(self.org, "space", self.id)


class MaintenanceConfig(_Model):
    """[[maintenance]]: a maintenance window. While it is active the subjects it covers open no
    tickets (they are still probed): exactly one of subject, space or labels says which; start
    and end (one-off) or cron and duration (recurring) say when."""

    org: Annotated[str, Field(pattern=ORG_SLUG)]
    """The slug of the org it belongs to."""
    subject: Annotated[str, Field(pattern=SUBJECT_ID)] | None = None
    """The id of one device, integration or space of the org (a space: only the space's own
    group ticket; use `space` for its devices too)."""
    space: Annotated[str, Field(pattern=SUBJECT_ID)] | None = None
    """The id of a space of the org: covers the space and every device in it."""
    labels: dict[str, str] | None = None
    """Covers the org's subjects that carry all these labels, e.g. { rack = "A3" }."""
    start: datetime | None = None
    """When a one-off window starts: a TOML date-time with an offset, e.g.
    2026-12-24T18:00:00Z (give end too)."""
    end: datetime | None = None
    """When a one-off window ends (after start, at most 366 days later)."""
    cron: str | None = None
    """A recurring window's starts: five crontab fields (minute hour day month weekday), UTC,
    e.g. "0 2 * * sun" (give duration too)."""
    duration: Duration | None = None
    """How long each occurrence of a recurring window lasts (at most 366 days)."""
    reason: Annotated[str, Field(max_length=500)] = ""
    """Why, as people read it (at most 500 characters)."""

    @model_validator(mode="after")
    def _a_window(self) -> MaintenanceConfig:
        try:
            refuse_never_firing(self.window("config"))
        except WindowError as exc:
            raise ValueError(f"{exc.field}: {exc.message}") from None
        return self

    def window(self, window_id: str) -> Window:
        """The window this entry defines, with id `window_id` (WindowError if it cannot be)."""
        return Window(
            id=window_id,
            org=self.org,
            target=Target(self.subject, self.space, self.labels),
            reason=self.reason,
            start=self.start,
            end=self.end,
            cron=self.cron,
            duration=self.duration,
            source="config",
        )


def refuse_never_firing(window: Window) -> Window:
    """A recurring window whose cron never fires (e.g. "0 0 30 2 *") is refused (WindowError):
    looking for its next start searches every year up to 9999, each time it is asked."""
    if window.cron is not None and window.next_change(_EPOCH) is None:
        raise WindowError("cron", f"{window.cron!r} never fires (no such date)")
    return window


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class _WithMaintenance(Protocol):
    @property
    def maintenance(self) -> Sequence[MaintenanceConfig]: ...


def config_windows(config: _WithMaintenance | Sequence[MaintenanceConfig]) -> list[Window]:
    """The config's maintenance windows (a Config, or its `maintenance` list), in config order,
    with ids "config-N": N counts that org's windows from 1."""
    entries = config if isinstance(config, Sequence) else config.maintenance
    counts: dict[str, int] = {}
    windows: list[Window] = []
    for entry in entries:
        counts[entry.org] = n = counts.get(entry.org, 0) + 1
        windows.append(entry.window(f"config-{n}"))
    return windows


@dataclass(frozen=True)
class SpaceInfo:
    """A space of the config, declared in [[spaces]] or implied by a device's `space`."""

    key: SubjectKey
    name: str
    parent: SubjectKey | None
    labels: Mapping[str, str]


_NO_LABELS: Mapping[str, str] = MappingProxyType({})


def spaces_of(
    spaces: Sequence[SpaceConfig], devices: Sequence[DeviceConfig]
) -> dict[SubjectKey, SpaceInfo]:
    """Every space of the config: the declared ones, then those only a device names (name = id,
    no parent), in config order."""
    found: dict[SubjectKey, SpaceInfo] = {}
    for space in spaces:
        key = space.key
        if key not in found:
            parent = None if space.parent is None else SubjectKey(space.org, "space", space.parent)
            found[key] = SpaceInfo(key, space.name, parent, space.labels)
    for device in devices:
        if device.space is not None:
            key = SubjectKey(device.org, "space", device.space)
            if key not in found:
                found[key] = SpaceInfo(key, device.space, None, _NO_LABELS)
    return found


def members_of(devices: Iterable[DeviceConfig]) -> dict[SubjectKey, list[SubjectKey]]:
    """Each space's devices (space key -> their keys), in config order; a space no device
    names is not in it."""
    members: dict[SubjectKey, list[SubjectKey]] = {}
    for device in devices:
        if device.space is not None:
            space = SubjectKey(device.org, "space", device.space)
            members.setdefault(space, []).append(SubjectKey(device.org, "device", device.id))
    return members


class MqttConfig(_Model):
    """[mqtt]: the brokers mqtt probes use."""

    brokers: list[BrokerSpec] = Field(default_factory=list)
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
    spaces: Sequence[SpaceConfig] = (),
    maintenance: Sequence[MaintenanceConfig] = (),
) -> list[tuple[str, str]]:
    """Problems that span keys: unknown orgs and brokers, duplicate ids, a space id that is
    also a device's or integration's, dangling depends_on, space parents and maintenance
    subjects, cycles, unreadable files (secrets, CA files). Each as (key path, message);
    values never shown.

    Linear in the subjects, of which there may be 100,000: a key path is spelled only for a
    problem, and a file or variable that many subjects name is read once."""
    problems: list[tuple[str, str]] = []
    brokers: set[str] = set()
    for i, broker in enumerate(mqtt.brokers):
        if broker.name in brokers:
            problems.append((f"mqtt.brokers[{i}].name", f"broker {broker.name!r} is defined twice"))
        brokers.add(broker.name)
    subjects: tuple[tuple[str, str, Sequence[Subject]], ...] = (
        ("devices", "device", devices),
        ("integrations", "integration", integrations),
    )
    # (org, type, id), as in SubjectKey: a plain tuple hashes without a call into Python.
    seen: dict[tuple[str, str, str], tuple[str, int]] = {}
    for where, kind, items in subjects:
        for i, subject in enumerate(items):
            if subject.org not in orgs:
                problems.append((f"{where}[{i}].org", f"no org {subject.org!r} in [[orgs]]"))
            place = (where, i)
            first = seen.setdefault((subject.org, kind, subject.id), place)
            if first is not place:
                message = f"{subject.id!r} is also {first[0]}[{first[1]}]"
                problems.append((f"{where}[{i}].id", message))
            probe = subject.probe if isinstance(subject, DeviceConfig) else None
            if isinstance(probe, MqttProbeSpec) and probe.broker not in brokers:
                message = f"no broker {probe.broker!r} in [[mqtt.brokers]]"
                problems.append((f"{where}[{i}].probe.broker", message))
    ids = {(org, subject_id) for org, _, subject_id in seen}
    # Spaces: (org, id) -> the key path that names it first, [[spaces]] before devices' `space`.
    space_ids: dict[tuple[str, str], str] = {}
    for i, space in enumerate(spaces):
        if space.org not in orgs:
            problems.append((f"spaces[{i}].org", f"no org {space.org!r} in [[orgs]]"))
        path = f"spaces[{i}].id"
        first_path = space_ids.setdefault((space.org, space.id), path)
        if first_path is not path:
            problems.append((path, f"{space.id!r} is also {first_path.removesuffix('.id')}"))
        else:
            problems += _space_clashes(seen, space.org, space.id, path)
    for i, device in enumerate(devices):
        if device.space is not None and (device.org, device.space) not in space_ids:
            path = f"devices[{i}].space"
            space_ids[device.org, device.space] = path
            problems += _space_clashes(seen, device.org, device.space, path)
    # (org, id) -> [(its parent's id, the key path naming it)]: ids resolve within the org.
    graph: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for where, _, items in subjects:
        for i, subject in enumerate(items):
            for j, parent in enumerate(subject.depends_on):
                path = f"{where}[{i}].depends_on[{j}]"
                if (subject.org, parent) in ids:
                    graph.setdefault((subject.org, subject.id), []).append((parent, path))
                elif (subject.org, parent) not in space_ids:  # a space: no depends_on of its own
                    problems.append((path, f"no subject {parent!r} in the org"))
    problems += _cycles(graph)
    # The spaces' parent chains: a graph of their own, spaces' ids not mixed with subjects'.
    space_graph: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i, space in enumerate(spaces):
        if space.parent is not None:
            path = f"spaces[{i}].parent"
            if (space.org, space.parent) not in space_ids:
                problems.append((path, f"no space {space.parent!r} in the org"))
            else:
                space_graph.setdefault((space.org, space.id), []).append((space.parent, path))
    problems += _cycles(space_graph)
    for i, entry in enumerate(maintenance):
        if entry.org not in orgs:
            problems.append((f"maintenance[{i}].org", f"no org {entry.org!r} in [[orgs]]"))
            continue
        if entry.subject is not None:
            known = (entry.org, entry.subject)
            if known not in ids and known not in space_ids:
                message = f"no subject {entry.subject!r} in the org"
                problems.append((f"maintenance[{i}].subject", message))
        if entry.space is not None and (entry.org, entry.space) not in space_ids:
            problems.append((f"maintenance[{i}].space", f"no space {entry.space!r} in the org"))
    # (the spec's key path, as a template for its index; its index; the spec)
    specs: list[tuple[str, int, BaseModel]] = [
        ("mqtt.brokers[{}]", i, broker) for i, broker in enumerate(mqtt.brokers)
    ]
    specs += [("devices[{}].probe", i, d.probe) for i, d in enumerate(devices)]
    specs += [("integrations[{}].check", i, s.check) for i, s in enumerate(integrations)]
    specs.append(("monitor", 0, monitor))
    read: dict[tuple[bool, str], str | None] = {}  # (is a variable, name) -> problem, or None
    for path, i, spec in specs:
        for key, value in _file_and_env_keys(spec):
            variable = key.endswith("_env")
            if (variable, value) not in read:
                try:
                    if variable:
                        read_secret(env=value, environ=environ)
                    else:
                        read_secret(file=value, base_dir=base_dir, environ=environ)
                    read[variable, value] = None
                except SecretError as exc:
                    read[variable, value] = str(exc)
            problem = read[variable, value]
            if problem is not None:
                problems.append((f"{path.format(i)}.{key}", problem))
    return problems


def _space_clashes(
    seen: Mapping[tuple[str, str, str], object], org: str, space_id: str, path: str
) -> list[tuple[str, str]]:
    """A space id that is also a device or integration id of the org, at `path`."""
    return [
        (
            path,
            f"{space_id!r} is also {article} {kind} id in the org: a depends_on id must name "
            "one subject",
        )
        for kind, article in (("device", "a"), ("integration", "an"))
        if (org, kind, space_id) in seen
    ]


def _cycles(graph: dict[tuple[str, str], list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """A problem for each edge that closes a cycle (a depends_on: a subject cannot wait for
    itself; a space's parent: a space cannot be inside itself). `graph` is (org, id) -> [(the
    parent's id in that org, the key path naming it)], one namespace of ids."""
    problems: list[tuple[str, str]] = []
    done: set[tuple[str, str]] = set()
    for start in graph:
        if start in done:
            continue
        # Depth first, iteratively: `trail` is the path from `start`, `on_trail` its members.
        trail: list[tuple[tuple[str, str], int]] = [(start, 0)]
        on_trail = {start}
        while trail:
            node, at = trail[-1]
            edges = graph.get(node, [])
            if at == len(edges):
                trail.pop()
                on_trail.discard(node)
                done.add(node)
                continue
            trail[-1] = (node, at + 1)
            parent, path = edges[at]
            child = (node[0], parent)
            if child in on_trail:
                names = [n[1] for n, _ in trail[[n for n, _ in trail].index(child) :]]
                problems.append((path, "a cycle: " + " -> ".join([*names, parent])))
            elif child not in done:
                trail.append((child, 0))
                on_trail.add(child)
    return problems


def _file_and_env_keys(model: BaseModel) -> list[tuple[str, str]]:
    """Every `*_file` / `*_env` value in a spec, nested models included, with its key path
    below the spec."""
    found: list[tuple[str, str]] = []
    for name in _source_fields(type(model)):
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += [(f"{name}.{key}", text) for key, text in _file_and_env_keys(value)]
        elif isinstance(value, str) and name.endswith(("_file", "_env")):
            found.append((name, value))
    return found


@cache
def _source_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a spec class that may hold a `*_file` / `*_env` value or a nested model,
    in field order: the others need not be looked at, subject by subject."""
    return tuple(
        name
        for name, field in model.model_fields.items()
        if name.endswith(("_file", "_env")) or _may_hold_model(field.annotation)
    )


def _may_hold_model(annotation: Any) -> bool:
    """Whether a field's value may be a model: a model class, or a union or Annotated with one
    (not a list of models: those are not looked into)."""
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel) or annotation is object
    if annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _may_hold_model(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_may_hold_model(member) for member in get_args(annotation))
    return False


def maintenance_subjects(
    devices: Iterable[DeviceConfig],
    integrations: Iterable[IntegrationConfig],
    spaces: Mapping[SubjectKey, SpaceInfo],
) -> list[MaintenanceSubject]:
    """What maintenance windows match on, for every subject: its id, a device's space, labels."""
    matched = [MaintenanceSubject(d.key, d.space, d.labels) for d in devices]
    matched += [MaintenanceSubject(i.key, None, i.labels) for i in integrations]
    matched += [MaintenanceSubject(key, None, info.labels) for key, info in spaces.items()]
    return matched
