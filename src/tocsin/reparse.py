"""A reload's config parse, in a short-lived child process (`python -m tocsin.reparse`).

Parsing a config of 10,000 subjects makes millions of short-lived objects. Made in the daemon,
while its event loop keeps allocating the objects it lives on, they leave the heap fragmented for
good: the first reload at 10,000 subjects grew the daemon's RSS by 23 MiB and each later one by a
few more (bench_soak's `config_rename` fault). So the child reads the new file and the text the
daemon runs on, validates the new one (secrets included), and sends back the new settings with
the subject lists given as a plan: for each subject, the index of an equal running subject, or
the new model. The daemon then builds only what changed and keeps the objects that run.

Protocol: the daemon writes one pickle, (path, running text), to the child's stdin; the child
writes one pickle to its stdout: ("ok", Settings without subjects and environ, devices plan,
integrations plan, digest of the running subjects' keys, new text), ("invalid", problems) or
("failed", the exception's type). If the child cannot answer, the daemon parses in-process.
Both sides are this module, from the same installed package.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import pickle
import sys
import threading
import zlib
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tocsin.config import ConfigError, Settings, load, subject_models
from tocsin.monitor.config import DeviceConfig, IntegrationConfig

# A plan's entry: the index of the equal running subject, or the new subject's model.
Plan = list[int | Any]


class ReparseFailed(RuntimeError):
    """The child died or answered nothing readable: the running config stays."""


def keys_digest(subjects: Iterable[DeviceConfig | IntegrationConfig]) -> bytes:
    """A digest of the subjects' (org, id) in order: the daemon checks that the child's plan
    indexes the very list it runs."""
    digest = hashlib.sha256()
    for subject in subjects:
        digest.update(f"{subject.org}\0{subject.id}\n".encode())
    return digest.digest()


def _plan(old: Sequence[Any], new: Sequence[Any]) -> Plan:
    at = {(s.org, s.id): i for i, s in enumerate(old) if not isinstance(s, dict)}
    plan: Plan = []
    for subject in new:
        i = at.get((subject.org, subject.id))
        plan.append(i if i is not None and old[i] == subject else subject)
    return plan


def child(path: str, running: bytes) -> tuple[Any, ...]:
    """What the child answers (a function, so tests can call it in-process). Of the running
    text only the subjects are read, so its secrets are not read again."""
    try:
        new = load(path, keep_source=True)
    except ConfigError as exc:
        return ("invalid", exc.problems)
    old_devices: list[Any] = []
    old_integrations: list[Any] = []
    if running:
        old_devices, old_integrations = subject_models(zlib.decompress(running).decode())
    config = new.config
    devices = _plan(old_devices, config.devices)
    integrations = _plan(old_integrations, config.integrations)
    share_values([s for s in [*devices, *integrations] if not isinstance(s, int)])
    bare = config.model_copy(update={"devices": [], "integrations": []})
    settings = dataclasses.replace(new, config=bare, environ={}, source=b"")
    digest = keys_digest(s for s in [*old_devices, *old_integrations] if not isinstance(s, dict))
    return ("ok", settings, devices, integrations, digest, new.source)


def _answer(path: str, running: bytes) -> tuple[Any, ...]:
    """`child`'s answer, or ("failed", the exception's type)."""
    try:
        return child(path, running)
    except Exception as exc:  # the type only: a message may quote a config value
        return ("failed", type(exc).__name__)


def share_values(models: Iterable[BaseModel]) -> None:
    """One object for each equal string and timeout and each empty list or dict in these
    (frozen) models, so that pickling sends it once and the daemon unpickles one: 100,000
    subjects each held their own "fleet", "127.0.0.1", "http", timeouts and empty labels."""
    shared: dict[str | timedelta, str | timedelta] = {}
    empty_list: list[Any] = []
    empty_dict: dict[Any, Any] = {}
    model_type = BaseModel

    def share(model: BaseModel) -> None:
        values = model.__dict__
        for name, value in values.items():
            kind = type(value)  # exact types: isinstance on each of millions of values is slow
            if kind is str or kind is timedelta:
                values[name] = shared.setdefault(value, value)
            elif kind is list:
                if not value:
                    values[name] = empty_list
                elif isinstance(value[0], model_type):
                    for item in value:
                        share(item)
            elif kind is dict:
                if not value:
                    values[name] = empty_dict
            elif isinstance(value, model_type):
                share(value)

    for model in models:
        share(model)


def parse_at_start(path: Path) -> Settings | None:
    """The daemon's config, parsed in a child process as a reload's is: the millions of
    short-lived objects a parse of 100,000 subjects makes leave the daemon's heap fragmented
    for good (started 63 MiB larger, 45 MiB after ten minutes), and the child shares equal
    values (`share_values`). Raises ConfigError if it is invalid; None if the child failed (the
    caller then parses in-process, and reports whatever made the child fail).

    The child is a fork, made before the daemon has any thread: it has every module imported
    already (a fresh interpreter took 2-3 s more), and the daemon unpickles the answer as it
    comes down the pipe. With another thread running (a fork copies none, nor the locks they
    may hold) it returns None at once."""
    if threading.active_count() > 1:
        return None
    readable, writable = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(readable)
        os.close(writable)
        return None
    if pid == 0:  # the child: answer, and leave without running the daemon's exit handlers
        code = 0
        try:
            os.close(readable)
            quiet = os.open(os.devnull, os.O_WRONLY)  # a warning may quote a config value
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            answer = _answer(str(path), b"")
            with os.fdopen(writable, "wb") as out:
                pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(writable)
    try:
        with os.fdopen(readable, "rb") as pipe:
            answer = pickle.load(pipe)
    except Exception:
        return None
    finally:
        os.waitpid(pid, 0)
    if answer[0] == "invalid":
        raise ConfigError(answer[1])
    if answer[0] != "ok":
        return None
    return rebuild(answer[1], answer)  # against its own subject-less settings: nothing runs yet


def rebuild(running: Settings, answer: tuple[Any, ...]) -> Settings:
    """The new Settings from an "ok" answer, sharing the running subjects that did not change.
    Raises ReparseFailed if the plan was made for another subject list than the running one."""
    _, parsed, devices, integrations, digest, text = answer
    settings: Settings = parsed
    config = running.config
    if keys_digest([*config.devices, *config.integrations]) != digest:
        raise ReparseFailed("the running subjects are not the ones the child read")

    def build(old: Sequence[Any], plan: Plan) -> list[Any]:
        return [old[entry] if isinstance(entry, int) else entry for entry in plan]

    full = settings.config.model_copy(
        update={
            "devices": build(config.devices, devices),
            "integrations": build(config.integrations, integrations),
        }
    )
    return dataclasses.replace(settings, config=full, environ=os.environ, source=text)


async def reparse(path: Path, running: Settings) -> Settings:
    """Parse the config at `path` in a child process; raise ConfigError if it is invalid and
    ReparseFailed if the child failed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tocsin.reparse",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # a traceback may quote a config value
    )
    request = pickle.dumps((str(path), running.source), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        out, _ = await process.communicate(request)
    except BaseException:  # cancelled: the daemon is stopping
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    try:
        answer = pickle.loads(out)
    except Exception:
        raise ReparseFailed(f"no answer (exit code {process.returncode})") from None
    if answer[0] == "failed":
        raise ReparseFailed(f"it failed: {answer[1]}")
    if answer[0] == "invalid":
        raise ConfigError(answer[1])
    return rebuild(running, answer)


def main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but the answer on the pipe
    path, running = pickle.loads(sys.stdin.buffer.read())
    answer = _answer(path, running)
    out.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()


if __name__ == "__main__":
    main()
