"""The operator's config: TOML text parsed into validated pydantic models.

`parse(text)` is the whole contract (tests pass inline TOML); `load(path)` only reads the file and
resolves relative paths against its folder. Every problem is reported with its key path, e.g.
``orgs[0].tokens[1].token_file: cannot read /etc/tocsin/tokens/ops (No such file or directory)``.
Secrets are read here and kept only as SHA-256 digests; their values never reach a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tocsin.durations import parse_duration
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


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("durations are strings such as '90s', '2m' or '24h'")
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServerConfig(_Model):
    listen: str = "127.0.0.1:8080"
    public_url: str | None = None

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


class StoreConfig(_Model):
    url: str | None = None
    """SQLAlchemy async URL; default: SQLite under the state directory."""


class MonitorConfig(_Model):
    debounce: Duration = timedelta(minutes=2)
    recovery: Duration = timedelta(minutes=1)
    reopen_window: Duration = timedelta(hours=24)
    interval: Duration = timedelta(seconds=30)


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


Scope = Literal["read", "write", "workflow"]


class TokenConfig(_Model):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    scope: Scope
    token_file: str | None = None
    token_env: str | None = None
    token_sha256: str | None = None

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


class OrgConfig(_Model):
    slug: Annotated[str, Field(pattern=SLUG_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    report_issue: bool = False
    tokens: list[TokenConfig] = []

    @field_validator("tokens")
    @classmethod
    def _unique_token_names(cls, tokens: list[TokenConfig]) -> list[TokenConfig]:
        names = [t.name for t in tokens]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"token names must be unique in an org: {', '.join(duplicates)}")
        return tokens


class Config(_Model):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    monitor: MonitorConfig = MonitorConfig()
    log: LogConfig = LogConfig()
    orgs: list[OrgConfig] = []

    @field_validator("orgs")
    @classmethod
    def _unique_slugs(cls, orgs: list[OrgConfig]) -> list[OrgConfig]:
        slugs = [o.slug for o in orgs]
        duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
        if duplicates:
            raise ValueError(f"org slugs must be unique: {', '.join(duplicates)}")
        return orgs

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
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"not valid TOML: {exc}")]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_problem(error) for error in exc.errors()]) from None
    environ = os.environ if env is None else env
    tokens, problems = _resolve_tokens(config, base_dir, environ)
    if problems:
        raise ConfigError(problems)
    return Settings(config=config, store_url=_store_url(config, base_dir, environ), tokens=tokens)


def load(path: str | Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read and parse a config file; relative paths in it are relative to its folder."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", f"cannot read {file}: {_reason(exc)}")]) from None
    return parse(text, base_dir=file.resolve().parent, env=env)


def _problem(error: Any) -> Problem:
    path = ""
    for part in error["loc"]:
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


def _relative_to(path: Path, base_dir: Path | None) -> Path:
    return path if path.is_absolute() or base_dir is None else base_dir / path


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
