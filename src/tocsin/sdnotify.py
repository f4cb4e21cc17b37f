"""systemd's readiness and watchdog protocol (sd_notify), without a library: one datagram.

`notify("READY=1")` sends one AF_UNIX datagram to `$NOTIFY_SOCKET` (a leading ``@`` names the
abstract namespace). Outside systemd there is no socket and every call is a no-op returning
False, so the daemon calls these unconditionally. A failing send never raises: it is logged
once when sending starts failing and once when it works again.

`watchdog()` is the liveness signal: a coroutine on the daemon's own event loop, so WATCHDOG=1
goes out only while that loop really runs. A loop blocked by a stuck call sends nothing, and
systemd (WatchdogSec=) kills and restarts the service. A thread would keep pinging through it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("tocsin.sdnotify")

# A STATUS= text is cut to this length: one line for people, well inside the 4 KiB systemd
# reads of one notification.
_STATUS_MAX = 1024


class _SendHealth:
    """Edge logging for sends: one warning when they start failing, one note on recovery."""

    def __init__(self) -> None:
        self.failing = False

    def failed(self, reason: str) -> None:
        if not self.failing:
            self.failing = True
            log.warning("cannot notify systemd", reason=reason)

    def sent(self) -> None:
        if self.failing:
            self.failing = False
            log.info("notifying systemd works again")


_sends = _SendHealth()


def notify(*lines: str, socket_path: str | None = None) -> bool:
    """Send `lines` (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``) as one
    datagram to `socket_path`, by default ``$NOTIFY_SOCKET``. True when it was sent; False when
    there is no socket to send to or the send failed (logged, never raised)."""
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not path or not lines:
        return False
    if path.startswith("@"):
        address = "\0" + path[1:]
    elif path.startswith("/"):
        address = path
    else:  # e.g. systemd's vsock: addresses, which a service on the host never gets
        _sends.failed(f"unsupported NOTIFY_SOCKET address {path!r}")
        return False
    message = "\n".join(lines).encode("utf-8", errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the event loop on a stuck service manager: a full queue is a failure.
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError as exc:
        _sends.failed(exc.strerror or type(exc).__name__)
        return False
    _sends.sent()
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``, as systemd recommends.
    None when no watchdog is requested, or when ``$WATCHDOG_PID`` names another process (the
    variables were inherited from a parent that systemd watches)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def status_line(subjects: int, down: int, webhooks_pending: int) -> str:
    """The one-line summary `systemctl status` shows, e.g.
    ``1,204 subjects, 3 down, 0 webhooks pending``."""
    noun = "subject" if subjects == 1 else "subjects"
    hooks = "webhook" if webhooks_pending == 1 else "webhooks"
    return f"{subjects:,} {noun}, {down:,} down, {webhooks_pending:,} {hooks} pending"


async def watchdog(
    interval: float | None,
    status: Callable[[], str] | None = None,
    *,
    every: float = 10.0,
    stop: asyncio.Event | None = None,
    socket_path: str | None = None,
) -> None:
    """Send WATCHDOG=1 every `interval` seconds and ``STATUS=<status()>`` every `every`
    seconds (the first right away), until cancelled or `stop` is set. `interval` None sends
    STATUS= only (no watchdog was requested). Pings come from this coroutine, so they stop
    while the event loop is blocked. A `status` that raises is logged and skipped, never
    fatal: losing the summary must not get the service killed."""
    loop = asyncio.get_running_loop()
    tick = interval if interval is not None else every
    if tick <= 0:
        raise ValueError("the watchdog interval must be positive")
    next_status = loop.time()
    status_failing = False
    while True:
        lines = ["WATCHDOG=1"] if interval is not None else []
        if status is not None and loop.time() >= next_status:
            next_status = loop.time() + every
            try:
                summary = status()
            except Exception as exc:  # a summary bug must not stop the pings
                if not status_failing:
                    log.warning("cannot build the systemd status", error=repr(exc))
                status_failing = True
            else:
                status_failing = False
                lines.append("STATUS=" + " ".join(summary.split())[:_STATUS_MAX])
        if lines:
            notify(*lines, socket_path=socket_path)
        if stop is None:
            await asyncio.sleep(tick)
            continue
        try:
            async with asyncio.timeout(tick):
                await stop.wait()
        except TimeoutError:
            continue
        return
