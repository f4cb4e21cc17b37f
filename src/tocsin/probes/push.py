"""Push heartbeats: subjects that cannot be polled (behind NAT, cron jobs) ping tocsin.

`probe = { type = "push", timeout = "5m" }` gives the subject a secret ping URL,
`GET` or `POST /ping/{key}`; no ping within `timeout` (+ `grace`) is a failure, as
healthchecks.io does it. `?status=fail` (or a POST body `fail`, or JSON `{"status": "fail"}`)
reports an explicit failure, like healthchecks.io's /fail; a JSON `message` or, with
`?status=...`, a plain-text body is kept in the observation's detail.

Keys: by default the HMAC-SHA256 of the subject key under a site secret, base64url
(32 characters, 192 bits): stable across restarts, unguessable without the site secret,
changed for every subject by rotating it. Give `key_file` / `key_env` instead to keep a key
that is flashed into a device (at least 22 URL-safe characters).

States: a subject registered but never pinged is unknown (no observation) until its first
ping, or until `timeout` + `grace` has passed since it was registered, which is then a
failure. Each ping, failing or not, is a sign of life and restarts the window. `expired`
reports a silent subject once per silence, not on every tick.

The registry is plain synchronous state with the monotonic time passed in; the daemon calls
`expired(now)` on a tick (`next_deadline()` says when one is due) and hands the results to
the tracker.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import structlog
from aiohttp import web
from pydantic import model_validator

from tocsin.durations import Duration, format_duration
from tocsin.probes.base import Sink, SpecModel
from tocsin.probes.http import read_capped
from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.probes.stalls import WatchedClock
from tocsin.secrets import SecretError, read_secret

log = structlog.get_logger("tocsin.probes.push")

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,128}")
MAX_PING_BODY = 10_000
MAX_MESSAGE = 200


class PushSpec(SpecModel):
    """`probe = { type = "push", timeout = "5m" }`; optional `grace`, `key_file`/`key_env`."""

    type: Literal["push"]
    """Heartbeats: the subject calls its secret URL (`tocsin ping-url ID`)."""
    timeout: Duration
    """The subject must ping at least this often."""
    grace: Duration = timedelta(0)
    """Extra time after timeout before silence counts as a failure."""
    key_file: str | None = None
    """A file holding a fixed ping key (22+ URL-safe characters) instead of the derived one."""
    key_env: str | None = None
    """An environment variable holding a fixed ping key."""

    @model_validator(mode="after")
    def _consistent(self) -> PushSpec:
        if self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")
        if self.key_file is not None and self.key_env is not None:
            raise ValueError("give key_file or key_env, not both")
        return self

    @property
    def window(self) -> float:
        return (self.timeout + self.grace).total_seconds()


def derived_key(site_secret: bytes, subject: SubjectKey) -> str:
    digest = hmac.new(site_secret, f"push:{subject}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:32]


def _fingerprint(key: str) -> bytes:
    # Look keys up by digest so that no lookup compares a guessed key with a real one.
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()


"""Seconds `expired` may be called later than `period` before the gap is a stall."""


@dataclass(slots=True, eq=False)
class _Entry:
    subject: SubjectKey
    spec: PushSpec
    window: float  # timeout + grace, in seconds
    fingerprint: bytes
    since: float  # watched time of the last ping, or of registration
    pinged: bool = False
    reported: bool = False  # the current silence has been reported
    seq: int = -1  # the heap entry that stands for it; -1: none (reported)
    due_at: float = math.inf  # that heap entry's deadline


class PushRegistry:
    """Secret ping keys -> subjects, and when each subject last pinged.

    `period` is how often the daemon calls `expired`: a call that comes more than
    STALL_GRACE later reveals a stall, which no subject's window counts.
    """

    def __init__(self, site_secret: bytes, *, period: float = 1.0) -> None:
        if len(site_secret) < 16:
            raise ValueError("the push site secret must be at least 16 bytes")
        self._site_secret = site_secret
        self._entries: dict[SubjectKey, _Entry] = {}
        self._by_fingerprint: dict[bytes, _Entry] = {}
        self._clock = WatchedClock(period, probe="push")
        # A heap of (deadline, seq, entry) on the watched clock, deadlines no later than the
        # real ones: a ping only moves `since`; an entry that comes due is checked against it.
        # An entry whose seq is no longer its subject's is stale and skipped.
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._windows: dict[float, float] = {}  # one float per distinct window, not per subject

    def register(
        self,
        subject: SubjectKey,
        spec: PushSpec,
        *,
        now_mono: float,
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> str:
        """Add or update a subject; return its key. Re-registering (a config reload) keeps
        the ping history. Raises SecretError (key_file/key_env unreadable or not a valid key)
        or ValueError (two subjects with one key)."""
        key = self._key(subject, spec, base_dir, environ or {})
        fingerprint = _fingerprint(key)
        owner = self._by_fingerprint.get(fingerprint)
        if owner is not None and owner.subject != subject:
            raise ValueError(f"{subject} has the same push key as {owner.subject}")
        window = self._windows.setdefault(spec.window, spec.window)
        entry = self._entries.pop(subject, None)
        if entry is None:
            entry = _Entry(subject, spec, window, fingerprint, self._clock.at(now_mono))
        else:  # the same entry, so that its place in the heap stays good
            del self._by_fingerprint[entry.fingerprint]
            entry.spec, entry.window, entry.fingerprint = spec, window, fingerprint
        self._entries[subject] = entry
        self._by_fingerprint[fingerprint] = entry
        if not entry.reported and entry.since + entry.window < entry.due_at:
            self._queue(entry)  # new, or its window shrank
        self._compact()
        return key

    def unregister(self, subject: SubjectKey) -> None:
        entry = self._entries.pop(subject, None)
        if entry is not None:
            del self._by_fingerprint[entry.fingerprint]
            entry.seq = -1
            self._compact()

    def subjects(self) -> list[SubjectKey]:
        return list(self._entries)

    def _key(
        self, subject: SubjectKey, spec: PushSpec, base_dir: Path | None, env: Mapping[str, str]
    ) -> str:
        if spec.key_file is None and spec.key_env is None:
            return derived_key(self._site_secret, subject)
        name = "key_file" if spec.key_file is not None else "key_env"
        try:
            key = read_secret(file=spec.key_file, env=spec.key_env, base_dir=base_dir, environ=env)
        except SecretError as exc:
            raise SecretError(f"{name}: {exc}") from None
        if not KEY_PATTERN.fullmatch(key):
            where = spec.key_file if spec.key_file is not None else spec.key_env
            raise SecretError(
                f"{name}: the key in {where} must be 22 to 128 characters of A-Z a-z 0-9 _ -"
            )
        return key

    def ping(self, key: str, now_mono: float) -> SubjectKey | None:
        """Record a ping (any outcome); the subject, or None for an unknown key."""
        entry = self._by_fingerprint.get(_fingerprint(key))
        if entry is None:
            return None
        entry.since, entry.pinged = self._clock.at(now_mono), True
        if entry.reported:
            entry.reported = False
            self._queue(entry)
        return entry.subject

    def expired(self, now_mono: float) -> list[tuple[SubjectKey, Observation]]:
        """Subjects whose window has just passed without a ping: each once per silence.

        Meant to be called every `period`; costs O(subjects due), not O(subjects)."""
        now = self._clock.tick(now_mono)
        deadlines = self._deadlines
        popped: list[tuple[float, int, _Entry]] = []
        while deadlines and deadlines[0][0] <= now:
            popped.append(heapq.heappop(deadlines))
        due: list[tuple[SubjectKey, Observation]] = []
        for _, seq, entry in popped:  # pushed back only now: each is looked at once a call
            if seq != entry.seq:
                continue  # unregistered, or superseded by an earlier deadline
            if now - entry.since < entry.window:
                self._queue(entry)  # pinged since
                continue
            entry.reported, entry.seq = True, -1
            due.append((entry.subject, _silence(entry)))
        return due

    def next_deadline(self) -> float | None:
        """The monotonic time at which `expired` has something to report next, if any."""
        deadlines = self._deadlines
        while deadlines:
            deadline, seq, entry = deadlines[0]
            if seq != entry.seq:
                heapq.heappop(deadlines)
            elif entry.since + entry.window > deadline:  # pinged since
                heapq.heappop(deadlines)
                self._queue(entry)
            else:
                return deadline + self._clock.stalled
        return None

    def _queue(self, entry: _Entry) -> None:
        entry.seq, entry.due_at = next(self._seq), entry.since + entry.window
        heapq.heappush(self._deadlines, (entry.due_at, entry.seq, entry))

    def _compact(self) -> None:
        # Unregistered subjects and shrunk windows leave stale entries until their deadline;
        # a config reload that drops many should not keep them for a day.
        if len(self._deadlines) > 2 * len(self._entries) + 64:
            live = [item for item in self._deadlines if item[1] == item[2].seq]
            heapq.heapify(live)
            self._deadlines = live


def _silence(entry: _Entry) -> Observation:
    silence = format_duration(timedelta(seconds=entry.window))
    detail = f"no ping for {silence}" if entry.pinged else f"no ping in {silence} since start"
    return Observation(
        Health.UNHEALTHY,
        detail,
        kind_hint=_kind(entry.subject),
        error_class="no_ping",
        data={"timeout": format_duration(entry.spec.timeout)},
    )


def _kind(subject: SubjectKey) -> str:
    return "integration_unreachable" if subject.type == "integration" else "device_offline"


def ping_observation(subject: SubjectKey, *, failed: bool, message: str | None) -> Observation:
    if not failed:
        return Observation(Health.HEALTHY, "ping received")
    detail = f"failure reported by ping: {message}" if message else "failure reported by ping"
    return Observation(
        Health.UNHEALTHY, detail, kind_hint=_kind(subject), error_class="fail_signal"
    )


def _parse_ping(status: str | None, body: bytes) -> tuple[bool, str | None] | None:
    """(failed, message) from the query's status and the body; None when status is invalid."""
    text = body.decode("utf-8", errors="replace").strip()
    message: str | None = None
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            if status is None and isinstance(document.get("status"), str):
                status = document["status"]
            if isinstance(document.get("message"), str):
                message = document["message"]
    elif status is not None:
        message = text
    elif text.lower() in ("ok", "fail"):
        status = text.lower()
    status = (status or "ok").lower()
    if status not in ("ok", "fail"):
        return None
    if message:
        message = " ".join(message.split())[:MAX_MESSAGE] or None
    return status == "fail", message or None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ping_handler(
    registry: PushRegistry, sink: Sink, *, monotonic: Callable[[], float] = time.monotonic
) -> Handler:
    """The aiohttp handler for `GET|POST /ping/{key}`: 200 "OK", 404 for an unknown key,
    400 for a status other than ok or fail. Every request takes the same path up to the key
    lookup, so an unknown key answers like a known one, only with 404."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await read_capped(request.content, MAX_PING_BODY) if request.can_read_body else b""
        parsed = _parse_ping(request.query.get("status"), body)
        if parsed is None:
            return web.Response(status=400, text="status must be ok or fail\n")
        subject = registry.ping(request.match_info.get("key", ""), monotonic())
        if subject is None:
            return web.Response(status=404, text="not found")
        failed, message = parsed
        sink(subject, ping_observation(subject, failed=failed, message=message))
        return web.Response(text="OK")

    return handle
