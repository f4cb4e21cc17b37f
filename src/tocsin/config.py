"""The operator's config: TOML text parsed into validated pydantic models.

`parse(text)` is the whole contract (tests pass inline TOML); `load(path)` only reads the file and
resolves relative paths against its folder. Every problem is reported with its key path, e.g.
``orgs[0].tokens[1].token_file: cannot read /etc/tocsin/tokens/ops (No such file or directory)``.
Secrets are read here and kept only as SHA-256 digests; their values never reach a message.
Web sign-in passwords are in the config only as argon2 hashes, and those are not quoted either.
"""

from __future__ import annotations

import base64
import binascii
import gc
import hashlib
import os
import re
import zlib
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from argon2 import extract_parameters
from argon2.exceptions import InvalidHashError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tocsin import toml
from tocsin.durations import Duration
from tocsin.monitor.config import (
    DeviceConfig,
    IntegrationConfig,
    MaintenanceConfig,
    MonitorDefaults,
    MqttConfig,
    SpaceConfig,
    cross_check,
)
from tocsin.secrets import SecretError, read_secret

DEFAULT_STATE_DIR = Path("/var/lib/tocsin")
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The config is invalid; `problems` names every one with its key path."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Model(BaseModel):
    # use_attribute_docstrings: the docstring under each field is its description, which the
    # config reference in README.md is generated from (tocsin.docs).
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


class ServerConfig(_Model):
    """[server]: the HTTP API."""

    listen: str = "127.0.0.1:8080"
    """Where the HTTP API listens: HOST:PORT, or [IPv6]:PORT."""
    public_url: str | None = None
    """The base of links in webhooks and pages (http or https); default: http://<listen>."""
    event_loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"
    """The event loop: Python's own asyncio loop, or uvloop (libuv); auto: uvloop if installed."""

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, port = split_host_port(value)
        if not host or not 0 <= port < 65536:  # 0: any free port (tests, embedding)
            raise ValueError("expected HOST:PORT, e.g. '127.0.0.1:8080' or '[::1]:8080'")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str:
        """Where links in webhooks and pages point: public_url, else the listen address."""
        if self.public_url:
            return self.public_url
        return f"http://{self.listen}"


class WebConfig(_Model):
    """[web]: signing in to the web pages; who may sign in is each org's [[orgs.users]]."""

    session_lifetime: Duration = timedelta(hours=12)
    """How long a sign-in lasts before the person must sign in again; 1m to 90d."""
    login_delay: Duration = timedelta(seconds=1)
    """How long a failed sign-in waits before it is answered, to slow password guessing; 0s to
    30s."""
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    """Addresses or networks of reverse proxies in front of tocsin (e.g. "127.0.0.1",
    "10.0.0.0/8"): from these, the client is the nearest address in X-Forwarded-For that is
    not itself a proxy (sign-in attempts take turns per client). Empty: the peer's address."""

    @field_validator("session_lifetime")
    @classmethod
    def _check_session_lifetime(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(days=90):
            raise ValueError("between 1m and 90d")
        return value

    @field_validator("login_delay")
    @classmethod
    def _check_login_delay(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(seconds=30):
            raise ValueError("between 0s and 30s")
        return value


class StoreConfig(_Model):
    """[store]: where tickets, their timelines and webhook deliveries are kept."""

    url: str | None = None
    """SQLAlchemy async URL of the store; default: SQLite at $STATE_DIRECTORY/tocsin.db, else
    /var/lib/tocsin/tocsin.db. A relative SQLite path is relative to the config file.
    PostgreSQL: postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE."""


# [monitor]: the windows every subject starts from (see tocsin.monitor.config).
MonitorConfig = MonitorDefaults


class LogConfig(_Model):
    """[log]: what is logged to stderr (journald under systemd), secrets always redacted."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe level logged."""
    format: Literal["auto", "json", "console"] = "auto"
    """json: JSON lines; console: readable lines; auto: JSON unless stderr is a terminal."""


class RetentionConfig(_Model):
    """[retention]: how long to keep finished things; unset keeps them for ever (the default)."""

    resolved_tickets: Duration | None = None
    """Delete a ticket this long after it was resolved, with its timeline and deliveries;
    at least monitor.reopen_window. Unset: keep."""
    delivered_webhooks: Duration | None = None
    """Delete a webhook delivery this long after it succeeded. Unset: keep."""
    every: Duration = timedelta(hours=1)
    """How often to prune (and once at start)."""


TriggerName = Literal[
    "ticket.opened", "ticket.started", "ticket.comment_added", "ticket.resolved", "ticket.reopened"
]
ALL_TRIGGERS: tuple[TriggerName, ...] = (
    "ticket.opened",
    "ticket.started",
    "ticket.comment_added",
    "ticket.resolved",
    "ticket.reopened",
)
WEBHOOK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Headers tocsin sets itself on every delivery; `headers` may not replace them.
RESERVED_WEBHOOK_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length"}
    | {"host", "transfer-encoding", "connection", "user-agent"}
)


class WebhookConfig(_Model):
    """A [[webhooks]] endpoint. Its signing secret is `whsec_<base64>`, from secret_file or
    secret_env; during a rotation the old one stays in previous_secret_file or
    previous_secret_env and every delivery carries both signatures."""

    name: Annotated[str, Field(pattern=WEBHOOK_NAME_PATTERN)]
    """Lowercase letters, digits, - and _; names the endpoint in the CLI, logs and tickets."""
    url: str
    """Where deliveries are POSTed (http or https); redirects are not followed."""
    orgs: list[str] = Field(default_factory=list)
    """The orgs whose tickets it receives; empty: every org in the config."""
    triggers: list[TriggerName] = Field(default_factory=lambda: list(ALL_TRIGGERS))
    """The ticket triggers it receives; default: all five."""
    secret_file: str | None = None
    """A file holding the signing secret, whsec_<base64> (or give secret_env)."""
    secret_env: str | None = None
    """An environment variable holding the signing secret (or give secret_file)."""
    previous_secret_file: str | None = None
    """During a rotation: a file with the old secret; deliveries then carry both signatures."""
    previous_secret_env: str | None = None
    """During a rotation: an environment variable with the old secret."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (not the webhook-* and other headers tocsin sets)."""
    timeout: Duration = timedelta(seconds=15)
    """How long one attempt may take, at most 5m; then it counts as failed."""
    format: Literal["standard", "slack", "teams"] = "standard"
    """standard: the JSON event; slack: {"text": ...} (Slack, Mattermost); teams: an Adaptive
    Card. All are signed."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("triggers")
    @classmethod
    def _check_triggers(cls, value: list[TriggerName]) -> list[TriggerName]:
        if not value:
            raise ValueError("name at least one trigger (leave the key out for all five)")
        return list(dict.fromkeys(value))

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_WEBHOOK_HEADERS:
                raise ValueError(f"{name!r} is set by tocsin and cannot be replaced")
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of {name!r} must be one line")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=5):
            raise ValueError("a timeout above 0 and at most 5m")
        return value

    @model_validator(mode="after")
    def _secret_sources(self) -> WebhookConfig:
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret_file or secret_env")
        if self.previous_secret_file is not None and self.previous_secret_env is not None:
            raise ValueError("give at most one of previous_secret_file or previous_secret_env")
        return self


def _default_schedule() -> list[timedelta]:
    return [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    ]


class WebhookDeliveryConfig(_Model):
    """[webhook_delivery]: retries, pacing and endpoint health, for every endpoint."""

    schedule: list[Duration] = Field(default_factory=_default_schedule)
    """Delays before the 2nd, 3rd, ... attempt; after the last, a delivery is failed."""
    jitter: Annotated[float, Field(ge=0.0, le=0.5, strict=False)] = 0.1
    """Each delay is spread by up to this fraction either way."""
    disable_after: Duration = timedelta(days=5)
    """An endpoint failing (no success) for longer is disabled; its backlog is kept."""
    ticket_after: Duration | None = None
    """Failing this long opens a webhook_endpoint_failing ticket; default: monitor.debounce."""
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 256
    """Attempts in flight in all; an endpoint holds at most per_endpoint_concurrency of them,
    so endpoints that hang (until their timeout) cannot take every slot."""
    per_endpoint_concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    """Attempts in flight to one endpoint."""
    poll_interval: Duration = timedelta(milliseconds=500)
    """How often new triggers and due retries are looked for when nothing else wakes it."""
    lease: Duration = timedelta(seconds=30)
    """How long a claim outlives the longest it may take (8 x the endpoint's timeout: claims run
    ahead of the sends, a storm's in bigger batches): a crashed sender's claims are taken
    again after that."""
    process: Literal["auto", "worker", "inline"] = "auto"
    """Where delivery runs: "worker", a child process on another core with its own connection
    to the store (a storm's webhooks do not wait for its tickets, nor the other way round);
    "inline", the daemon's own event loop; "auto", a worker when there is an endpoint, 20,000
    subjects or more and more than one CPU. A reload that changes it restarts delivery."""

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: list[timedelta]) -> list[timedelta]:
        if len(value) > 50 or any(d < timedelta(0) for d in value):
            raise ValueError("at most 50 delays, none negative ([] tries once)")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _check_poll(cls, value: timedelta) -> timedelta:
        if not timedelta(milliseconds=10) <= value <= timedelta(minutes=1):
            raise ValueError("between 10ms and 1m")
        return value

    @model_validator(mode="after")
    def _per_endpoint_within_total(self) -> WebhookDeliveryConfig:
        if self.per_endpoint_concurrency > self.concurrency:
            raise ValueError("per_endpoint_concurrency cannot exceed concurrency")
        return self


Scope = Literal["read", "write", "workflow"]


class TokenConfig(_Model):
    """[[orgs.tokens]]: an API bearer token, with exactly one of token_file, token_env or
    token_sha256. tocsin keeps only its SHA-256 in memory."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    """Unique in the org; the actor on the timeline unless a request names another."""
    scope: Scope
    """read: reads; write: everything (people); workflow: reads, opens workflow tickets,
    comments and resolves."""
    token_file: str | None = None
    """A file holding the token itself, on one line."""
    token_env: str | None = None
    """An environment variable holding the token."""
    token_sha256: str | None = None
    """The token's SHA-256 in hex (64 characters): no secret in the config."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> TokenConfig:
        given = [k for k in ("token_file", "token_env", "token_sha256") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of token_file, token_env or token_sha256")
        if self.token_sha256 is not None and not re.fullmatch(
            r"[0-9a-fA-F]{64}", self.token_sha256
        ):
            raise ValueError("token_sha256 must be 64 hex characters (the SHA-256 of the token)")
        return self


# The prefixes of argon2's encoded hashes, by variant (`tocsin users hash` makes argon2id).
ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")


class UserConfig(_Model):
    """[[orgs.users]]: a person who signs in to the web pages with a name and password. The
    config holds only the password's argon2 hash: `tocsin users hash` makes one."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    """Unique in the org and not the name of one of its tokens: the actor on the timeline."""
    role: Literal["read", "write"]
    """read: reads; write: everything (as a write token may)."""
    password_argon2: str
    """The password's argon2 hash, `$argon2id$v=19$...` as `tocsin users hash` prints it: no
    password in the config."""

    @field_validator("password_argon2")
    @classmethod
    def _check_argon2_hash(cls, value: str) -> str:
        # The message never quotes the value: a password pasted here by mistake stays unlogged.
        problem = "not an argon2 hash ($argon2id$...): make one with `tocsin users hash`"
        if not value.startswith(ARGON2_PREFIXES):
            raise ValueError(problem)
        try:
            extract_parameters(value)
        except InvalidHashError:
            raise ValueError(problem) from None
        return value


def _refuse_duplicates(rule: str, names: list[str]) -> None:
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"{rule}: {', '.join(duplicates)}")


class OrgConfig(_Model):
    """[[orgs]]: an organisation. Tickets, subjects, tokens and users each belong to one."""

    slug: Annotated[str, Field(pattern=SLUG_PATTERN)]
    """Lowercase letters, digits and dashes; used in URLs and --org."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """The org's name, as people read it."""
    report_issue: bool = False
    """People may file tickets through Report issue (source user, with a write token)."""
    tokens: list[TokenConfig] = Field(default_factory=list)
    """The org's API tokens."""
    users: list[UserConfig] = Field(default_factory=list)
    """The people who may sign in to the org's web pages."""

    @field_validator("tokens")
    @classmethod
    def _unique_token_names(cls, tokens: list[TokenConfig]) -> list[TokenConfig]:
        _refuse_duplicates("token names must be unique in an org", [t.name for t in tokens])
        return tokens

    @field_validator("users")
    @classmethod
    def _unique_actor_names(cls, users: list[UserConfig], info: ValidationInfo) -> list[UserConfig]:
        names = [u.name for u in users]
        _refuse_duplicates("user names must be unique in an org", names)
        # A token and a user of one name would be the same actor on the timeline.
        tokens: list[TokenConfig] = info.data.get("tokens", [])  # absent: tokens were invalid
        shared = sorted(set(names) & {t.name for t in tokens})
        if shared:
            raise ValueError(
                f"a user cannot have the name of a token of the org: {', '.join(shared)}"
            )
        return users


class Config(_Model):
    """The whole config file."""

    server: ServerConfig = ServerConfig()
    """The HTTP API."""
    web: WebConfig = WebConfig()
    """Signing in to the web pages."""
    store: StoreConfig = StoreConfig()
    """The ticket store."""
    monitor: MonitorDefaults = MonitorDefaults()
    """The health monitor's defaults and limits."""
    log: LogConfig = LogConfig()
    """Logging."""
    retention: RetentionConfig = RetentionConfig()
    """How long resolved tickets and delivered webhooks are kept."""
    orgs: list[OrgConfig] = Field(default_factory=list)
    """The organisations, their API tokens and the people who sign in to the web pages."""
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    """Endpoints that receive signed ticket triggers."""
    webhook_delivery: WebhookDeliveryConfig = WebhookDeliveryConfig()
    """Retries, pacing and health of every webhook endpoint."""
    mqtt: MqttConfig = MqttConfig()
    """MQTT brokers that mqtt probes watch devices through."""
    devices: list[DeviceConfig] = Field(default_factory=list)
    """Devices to watch, each with one probe."""
    integrations: list[IntegrationConfig] = Field(default_factory=list)
    """Integrations whose credentials are checked."""
    spaces: list[SpaceConfig] = Field(default_factory=list)
    """Places devices are in (sites, floors, rooms), each a subject whose group ticket covers
    its devices; a device's `space` that no entry declares is implied."""
    maintenance: list[MaintenanceConfig] = Field(default_factory=list)
    """Maintenance windows: while one is active, the subjects it covers open no tickets (the
    API and `tocsin maintenance` add more at run time)."""

    @field_validator("webhooks")
    @classmethod
    def _unique_webhook_names(cls, webhooks: list[WebhookConfig]) -> list[WebhookConfig]:
        _refuse_duplicates("webhook names must be unique", [w.name for w in webhooks])
        return webhooks

    @field_validator("orgs")
    @classmethod
    def _unique_slugs(cls, orgs: list[OrgConfig]) -> list[OrgConfig]:
        _refuse_duplicates("org slugs must be unique", [o.slug for o in orgs])
        return orgs

    @model_validator(mode="after")
    def _retention_outlives_reopen_window(self) -> Config:
        kept = self.retention.resolved_tickets
        if kept is not None and kept < self.monitor.reopen_window:
            raise ValueError(
                "retention.resolved_tickets must be at least monitor.reopen_window: the monitor "
                "may still reopen a resolved ticket inside that window"
            )
        return self

    def org(self, slug: str) -> OrgConfig | None:
        return next((o for o in self.orgs if o.slug == slug), None)


@dataclass(frozen=True)
class ApiToken:
    """A bearer token as the API knows it: its digest, never its value."""

    org: str
    name: str
    scope: Scope
    sha256: bytes


@dataclass(frozen=True)
class Settings:
    """A validated config with its secrets resolved: what the daemon and the CLI run on."""

    config: Config
    store_url: str
    tokens: tuple[ApiToken, ...]
    # Each webhook's signing keys (decoded from whsec_), current first: never logged or shown.
    webhook_keys: Mapping[str, tuple[bytes, ...]] = field(default_factory=dict, repr=False)
    # Where relative paths point and where *_env secrets come from: probes read theirs at start.
    base_dir: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The daemon's own: the text it runs on, compressed (load(keep_source=True)), for a
    # reload's child process to tell what changed (tocsin.reparse). Empty elsewhere.
    source: bytes = field(default=b"", repr=False, compare=False)


def reuse_unchanged(old: Config, new: Config) -> int:
    """Put the running config's subject objects in place of equal ones in a freshly parsed
    config (a reload); return how many. What runs (probes, the MQTT monitor's devices, the
    worker's schedule) keeps the objects it was built from, so without this a reload leaves two
    copies of every unchanged subject alive, and each reload fragments the heap further:
    measured at 10,000 subjects, +24 and +16 MiB for the first two reloads."""
    return _reuse(old.devices, new.devices) + _reuse(old.integrations, new.integrations)


def _reuse(old: list[Any], new: list[Any]) -> int:
    running = {(s.org, s.id): s for s in old}
    reused = 0
    for i, subject in enumerate(new):
        same = running.get((subject.org, subject.id))
        if same is not None and same == subject:
            new[i] = same
            reused += 1
    return reused


def split_host_port(listen: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", listen)
    if not match:
        return "", -1
    host = match.group(1) or match.group(3)
    return host, int(match.group(2) or match.group(4))


def parse(
    text: str, *, base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Validate config text and resolve its secrets; raise ConfigError naming every problem."""
    # None of the objects made here is garbage, yet a config of 100,000 subjects makes millions
    # of them, and each full collection on the way walks all made so far: that took longer
    # than the validation itself.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _parse(text, base_dir, env)
    finally:
        if collecting:
            gc.enable()


def _parse(text: str, base_dir: Path | None, env: Mapping[str, str] | None) -> Settings:
    try:
        raw = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"not valid TOML: {exc}")]) from None
    _validate_subjects(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_problem(error) for error in exc.errors()]) from None
    environ = os.environ if env is None else env
    tokens, problems = _resolve_tokens(config, base_dir, environ)
    webhook_keys, webhook_problems = _resolve_webhooks(config, base_dir, environ)
    problems += webhook_problems
    problems += [
        Problem(path, message)
        for path, message in cross_check(
            {o.slug for o in config.orgs},
            config.devices,
            config.integrations,
            config.mqtt,
            config.monitor,
            base_dir,
            environ,
            config.spaces,
            config.maintenance,
        )
    ]
    if problems:
        raise ConfigError(problems)
    return Settings(
        config=config,
        store_url=_store_url(config, base_dir, environ),
        tokens=tokens,
        webhook_keys=webhook_keys,
        base_dir=base_dir,
        environ=environ,
    )


def load(
    path: str | Path, *, env: Mapping[str, str] | None = None, keep_source: bool = False
) -> Settings:
    """Read and parse a config file; relative paths in it are relative to its folder. With
    `keep_source`, the Settings keep the text, compressed (the daemon's, for its reloads)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", f"cannot read {file}: {_reason(exc)}")]) from None
    if not keep_source:
        return parse(text, base_dir=file.resolve().parent, env=env)
    # zlib lets go of the GIL: an 18 MB config is compressed while it is parsed.
    with ThreadPoolExecutor(1, thread_name_prefix="tocsin-config") as pool:
        source = pool.submit(zlib.compress, text.encode(), 1)
        settings = parse(text, base_dir=file.resolve().parent, env=env)
        return replace(settings, source=source.result())


def subject_models(text: str) -> tuple[list[Any], list[Any]]:
    """The [[devices]] and [[integrations]] of a config text that was valid, as models, without
    validating the rest or reading any secret (a reload compares them with the new config's)."""
    raw = toml.loads(text)
    _validate_subjects(raw)
    return list(raw.get("devices", [])), list(raw.get("integrations", []))


def _validate_subjects(raw: dict[str, Any]) -> None:
    """Validate each [[devices]] and [[integrations]] table on its own, putting its model in its
    place: the table is freed at once, so the parsed document and the models never both hold
    100,000 subjects. Config.model_validate takes a model as it is. A table that fails is left
    as it was, for Config.model_validate to report in today's words and order."""
    for key, model in (("devices", DeviceConfig), ("integrations", IntegrationConfig)):
        tables = raw.get(key)
        if type(tables) is not list:
            continue
        validate = model.model_validate
        for i, table in enumerate(tables):
            try:
                tables[i] = validate(table)
            except ValidationError:
                continue  # left for Config.model_validate to report


# Keys holding a `type`-tagged union (probe = {type = "http", ...}) and the tags they take.
_TAGGED_UNIONS = frozenset({"probe", "check", "auth"})
_UNION_TAGS = frozenset({"http", "snmp", "mqtt", "push", "bearer", "basic", "api_key", "oauth2"})


def _problem(error: Any) -> Problem:
    path = ""
    previous: Any = None
    for part in error["loc"]:
        tagged_union = previous in _TAGGED_UNIONS
        previous = part
        if tagged_union and isinstance(part, str) and part in _UNION_TAGS:
            continue  # pydantic names the union member it tried; the key path does not
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return Problem(path, message)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def _resolve_tokens(
    config: Config, base_dir: Path | None, env: Mapping[str, str]
) -> tuple[tuple[ApiToken, ...], list[Problem]]:
    tokens: list[ApiToken] = []
    problems: list[Problem] = []
    for i, org in enumerate(config.orgs):
        for j, token in enumerate(org.tokens):
            path = f"orgs[{i}].tokens[{j}]"
            if token.token_sha256 is not None:
                digest = bytes.fromhex(token.token_sha256)
            else:
                key = "token_env" if token.token_env is not None else "token_file"
                try:
                    value = read_secret(
                        file=token.token_file, env=token.token_env, base_dir=base_dir, environ=env
                    )
                except SecretError as exc:
                    problems.append(Problem(f"{path}.{key}", str(exc)))
                    continue
                digest = hashlib.sha256(value.encode()).digest()
            tokens.append(ApiToken(org.slug, token.name, token.scope, digest))
    seen: dict[bytes, str] = {}
    for api_token in tokens:
        where = f"{api_token.org}/{api_token.name}"
        if api_token.sha256 in seen:
            problems.append(
                Problem(
                    "orgs",
                    f"the same token is given twice ({seen[api_token.sha256]} and {where}): "
                    "each token must name one org and scope",
                )
            )
        seen[api_token.sha256] = where
    return tuple(tokens), problems


def decode_webhook_secret(value: str) -> bytes:
    """The HMAC key in a `whsec_<base64>` secret; ValueError (never quoting it) otherwise."""
    prefix = "whsec_"
    if not value.startswith(prefix):
        raise ValueError("a webhook secret is whsec_ followed by base64")
    encoded = value.removeprefix(prefix)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not valid base64") from None
    if not 16 <= len(key) <= 128:
        raise ValueError("a webhook secret holds 16 to 128 bytes (Standard Webhooks: 24 to 64)")
    return key


def _resolve_webhooks(
    config: Config, base_dir: Path | None, env: Mapping[str, str]
) -> tuple[dict[str, tuple[bytes, ...]], list[Problem]]:
    """Check each webhook's orgs and read its secrets; problems name the key, never a value."""
    keys: dict[str, tuple[bytes, ...]] = {}
    problems: list[Problem] = []
    slugs = {o.slug for o in config.orgs}
    for i, hook in enumerate(config.webhooks):
        path = f"webhooks[{i}]"
        for j, org in enumerate(hook.orgs):
            if org not in slugs:
                problems.append(Problem(f"{path}.orgs[{j}]", f"no org {org!r} in the config"))
        found: list[bytes] = []
        sources = (
            ("secret", hook.secret_file, hook.secret_env),
            ("previous_secret", hook.previous_secret_file, hook.previous_secret_env),
        )
        for stem, file, variable in sources:
            if file is None and variable is None:
                continue
            key = f"{stem}_env" if variable is not None else f"{stem}_file"
            try:
                secret = read_secret(file=file, env=variable, base_dir=base_dir, environ=env)
                found.append(decode_webhook_secret(secret))
            except ValueError as exc:  # SecretError is one
                problems.append(Problem(f"{path}.{key}", str(exc)))
        keys[hook.name] = tuple(found)
    return keys, problems


def _store_url(config: Config, base_dir: Path | None, env: Mapping[str, str]) -> str:
    url = config.store.url
    if url is None:
        state_dir = Path(env.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIR)
        return f"sqlite+aiosqlite:///{state_dir / 'tocsin.db'}"
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and base_dir is not None:
        # A relative SQLite path is relative to the config file, not to wherever the CLI runs.
        path, _, query = url.removeprefix(prefix).partition("?")
        if path and path != ":memory:":
            return prefix + str(base_dir / path) + (f"?{query}" if query else "")
    return url
