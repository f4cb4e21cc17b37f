"""Pull probes in a worker process: the daemon's event loop keeps the tracker, the store, MQTT
and the API; the worker, on the other core, runs the pull scheduler and its probes.

The two talk over a socketpair in frames (a 4-byte length, then a pickle; both ends are this
same program). The daemon sends `hello` (context and limits), then `add`, `remove` and `retry`
as the config and subjects' health change; the worker sends `started` once its first schedule
is in, then `results` in batches: (subject, observation, when the check began, its seconds).
Both use the system's monotonic clock, which is one clock across processes.

The worker measures its own event loop, so a check spoiled by a busy worker is not counted,
exactly as inline. It ignores SIGINT/SIGTERM (systemd sends them to the whole unit, the
terminal to the whole group) and exits when the daemon closes the socket, or dies. A worker
that exits unasked is started again, its whole schedule sent again, after a pause that doubles
up to 30 s while it keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from tocsin import logs
from tocsin.metrics import Metrics
from tocsin.monitor.lag import LoopWatch
from tocsin.monitor.pulls import PullSpec, probe_type, run_scheduler, schedule
from tocsin.monitor.scheduler import PullScheduler, ResultSink
from tocsin.probes.base import ProbeContext
from tocsin.probes.observation import Observation, Sharing, SubjectKey
from tocsin.restarts import Backoff

log = structlog.get_logger("tocsin.monitor")

_LENGTH = struct.Struct(">I")
ADD_BATCH = 2_000  # specs per `add` frame when the whole schedule is sent
# Results go to the daemon at most this often (each carries when its check began, so waiting
# changes no timing): one frame a loop turn cost the worker a tenth of its time at 20,000
# pull subjects, a write and a wake-up of the daemon for every one or two results.
RESULTS_EVERY = 0.1
STOP_SECONDS = 5.0  # how long a stopping worker may take before it is killed


def _frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _send_all(sock: socket.socket, data: bytes) -> None:
    """A preload thread's send; a worker that died is found by the daemon's next write."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _write(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    writer.write(_frame(message))


async def _read(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next frame, or None at the end of the stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (size,) = _LENGTH.unpack(head)
        message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return message


class WorkerProcess:
    """A worker process and the daemon's end of its socket.

    Started with `subprocess` rather than asyncio so the CLI can start one before its event
    loop exists (`spare`); waited for from a thread.
    """

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair()
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "tocsin.monitor.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.pid = self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        return await asyncio.to_thread(self._popen.wait)

    def kill(self) -> None:
        self._popen.kill()

    def close(self, timeout: float = STOP_SECONDS) -> None:
        """End a process nobody took: closing its socket ends it."""
        self.sock.close()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


SPARE_FROM_BYTES = 256 * 1024  # a config this size has thousands of subjects


def spare(config_path: Path) -> WorkerProcess | None:
    """A worker started before the config is read, when it will likely be wanted: at 100,000
    subjects its imports (2-3 s) then run on the other core while the daemon parses (4 s).
    The daemon closes it if the config turns out not to want one."""
    try:
        if config_path.stat().st_size < SPARE_FROM_BYTES or cpus() < 2:
            return None
        return WorkerProcess()
    except OSError:
        return None  # the config's own error is reported by the parse; a spawn is retried


def cpus() -> int:
    """CPUs this process may run on (a pinned service or a container's cpuset, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerPulls:
    """The daemon's side: the schedule it wants, mirrored into a worker process."""

    def __init__(
        self,
        sink: ResultSink,
        *,
        base_dir: Path | None,
        environ: Mapping[str, str],
        max_concurrency: int,
        per_host: int,
        log_level: str = "info",
        log_format: str = "auto",
        metrics: Metrics | None = None,
        spare: WorkerProcess | None = None,
    ) -> None:
        self._sink = sink
        self._spare = spare  # taken by the first start
        self._preload: threading.Thread | None = None  # the spare's schedule, on its way
        self.metrics = metrics
        self.hello = {
            "base_dir": base_dir,
            "environ": dict(environ),
            "max_concurrency": max_concurrency,
            "per_host": per_host,
            "log_level": log_level,
            "log_format": log_format,
        }
        self._specs: dict[SubjectKey, tuple[PullSpec, float]] = {}
        self._sharing = Sharing()
        self._retries: dict[SubjectKey, float] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: list[tuple[Any, ...]] = []
        self._sending = False  # the schedule is on its way: commands wait in the outbox
        self._go = asyncio.Event()
        # Set once the first schedule is on its way (or the worker could not start): the
        # daemon builds its MQTT brokers (seconds at 80,000 devices) while the worker reads it.
        self.handed_over = asyncio.Event()
        self.pid: int | None = None
        self.starts = 0  # worker processes started, restarts included

    def __len__(self) -> int:
        return len(self._specs)

    def add(self, key: SubjectKey, spec: PullSpec, interval: float) -> None:
        self._specs[key] = (spec, interval)
        self._retries.pop(key, None)
        self._send(("add", [(key, spec, interval)]))

    def remove(self, key: SubjectKey) -> None:
        if self._specs.pop(key, None) is not None:
            self._retries.pop(key, None)
            self._send(("remove", [key]))

    def retry(self, key: SubjectKey, every: float | None) -> None:
        if key not in self._specs or self._retries.get(key) == every:
            return
        if every is None:
            self._retries.pop(key, None)
        else:
            self._retries[key] = every
        self._send(("retry", [(key, every)]))

    def preload(self) -> None:
        """Send the schedule as it stands to the spare worker now, before `go`: it reads it
        while the daemon sets up the rest (a second or two at 100,000 subjects). Commands
        given meanwhile wait in the outbox and follow it."""
        spare = self._spare
        if spare is None or self._preload is not None:
            return
        schedule = self._schedule_frames(go=False)
        self._sending, self._outbox = True, []
        self._preload = threading.Thread(
            target=_send_all, args=(spare.sock, schedule), name="tocsin-worker-preload"
        )
        self._preload.start()

    def go(self) -> None:
        self._go.set()

    def _send(self, message: tuple[Any, ...]) -> None:
        """Queue a command; everything queued in one loop turn goes out as one write."""
        if self._writer is None:
            if self._sending:
                self._outbox.append(message)  # goes out after the schedule being sent
            return  # else the whole schedule is sent when the worker (re)starts
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if self._writer is not None and batch:
            _write(self._writer, ("batch", batch))

    async def run(self, started: asyncio.Event) -> None:
        backoff = Backoff()
        try:
            while True:
                began = time.monotonic()
                code = await self._serve(started)
                started.set()  # a worker that cannot start must not hold readiness forever
                self.handed_over.set()
                pause = backoff.pause(time.monotonic() - began)
                log.error(
                    "probe worker exited; starting it again",
                    exit_code=code,
                    in_seconds=pause,
                    pull_subjects=len(self._specs),
                )
                await asyncio.sleep(pause)
        finally:
            started.set()
            self.handed_over.set()

    async def _serve(self, started: asyncio.Event) -> int | None:
        """One worker process, from spawn to exit; return its exit code."""
        process, self._spare = self._spare, None
        preload, self._preload = self._preload, None
        try:
            process = process or WorkerProcess()
        except OSError as exc:
            log.error("probe worker could not start", error=str(exc))
            return None
        self.pid, self.starts = process.pid, self.starts + 1
        spawned = time.monotonic()
        writer: asyncio.StreamWriter | None = None
        try:
            await self._go.wait()  # the process starts (imports) while the daemon restores
            # The whole schedule goes out from a thread: the worker reads it while the event
            # loop goes on (at 20,000 pull subjects, 3 MB and two seconds of the worker's work).
            if preload is not None:
                await asyncio.to_thread(preload.join)
                schedule = self._tail_frames()
            else:
                schedule = self._schedule_frames()
                self._sending, self._outbox = True, []
            self.handed_over.set()
            try:
                await asyncio.to_thread(process.sock.sendall, schedule)
            except OSError:
                return await process.wait()  # it died before it read its schedule
            reader, writer = await asyncio.open_unix_connection(sock=process.sock)
            self._writer, self._sending = writer, False
            self._flush()
            while (message := await _read(reader)) is not None:
                if message[0] == "results":
                    self._deliver(message[1])
                elif message[0] == "started":
                    started.set()
                    log.info(
                        "probe worker started",
                        pid=process.pid,
                        pull_subjects=message[1],
                        seconds=round(time.monotonic() - spawned, 2),
                        schedule_seconds=message[2],
                    )
            return await process.wait()
        finally:
            self._writer, self._sending = None, False
            if writer is not None:
                writer.close()
            else:
                process.sock.close()
            if process.returncode is None:
                try:
                    async with asyncio.timeout(STOP_SECONDS):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()

    def _schedule_frames(self, *, go: bool = True) -> bytes:
        """hello and the whole schedule (then the retries and go), as the frames the worker
        reads."""
        messages: list[tuple[Any, ...]] = [("hello", self.hello)]
        specs = [(key, spec, interval) for key, (spec, interval) in self._specs.items()]
        messages += [("add", specs[at : at + ADD_BATCH]) for at in range(0, len(specs), ADD_BATCH)]
        return b"".join(_frame(message) for message in messages) + (
            self._tail_frames() if go else b""
        )

    def _tail_frames(self) -> bytes:
        return _frame(("retry", list(self._retries.items()))) + _frame(("go",))

    def _deliver(self, results: list[tuple[SubjectKey, Observation, float, float]]) -> None:
        for key, observation, began, seconds in results:
            known = self._specs.get(key)
            if known is None:
                continue  # removed while its check ran
            if self.metrics is not None:
                self.metrics.observed(probe_type(known[0]), observation, seconds)
            self._sink(key, self._sharing(observation), began)


async def serve(sock: socket.socket) -> None:
    """The worker's side: run the schedule the daemon sends until it closes the socket."""
    # Unpickling and building 100,000s of objects with the collector on takes five times as
    # long (it walks them again and again): off until the first schedule is in.
    gc.disable()
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    hello = await _read(reader)
    if hello is None or hello[0] != "hello":
        return
    options: dict[str, Any] = hello[1]
    logs.configure(options["log_level"], options["log_format"])
    context = ProbeContext(base_dir=options["base_dir"], environ=options["environ"])
    watch = LoopWatch()
    loop = asyncio.get_running_loop()
    pending: list[tuple[SubjectKey, Observation, float, float]] = []

    def flush() -> None:
        batch = pending.copy()
        pending.clear()
        _write(writer, ("results", batch))

    def sink(key: SubjectKey, observation: Observation, began: float) -> None:
        if not pending:
            loop.call_later(RESULTS_EVERY, flush)
        pending.append((key, observation, began, time.monotonic() - began))

    scheduler = PullScheduler(
        sink,
        max_concurrency=options["max_concurrency"],
        per_host=options["per_host"],
        lag=watch.lost_since,
    )

    first_add: list[float] = []  # when the first `add` came

    def handle(message: tuple[Any, ...]) -> None:
        match message:
            case ("add", items):
                if not first_add:
                    first_add.append(time.monotonic())
                for key, spec, interval in items:
                    schedule(scheduler, key, spec, interval, context)
            case ("remove", keys):
                for key in keys:
                    scheduler.remove(key)
            case ("retry", items):
                for key, every in items:
                    scheduler.retry(key, every)
            case ("batch", messages):
                for each in messages:
                    handle(each)
            case ("go",):
                gc.freeze()  # the schedule lives as long as the worker: keep it out of the GC
                gc.enable()
                took = round(time.monotonic() - first_add[0], 2) if first_add else 0.0
                _write(writer, ("started", len(scheduler), took))

    limits = {"max_concurrency": options["max_concurrency"], "per_host": options["per_host"]}
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(run_scheduler(scheduler, context, **limits)),
            group.create_task(watch.run()),
        ]
        while (message := await _read(reader)) is not None:
            handle(message)
        for task in tasks:
            task.cancel()
    writer.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us by closing the socket
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sock))


if __name__ == "__main__":
    main()
