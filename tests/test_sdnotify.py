"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tocsin import sdnotify


class Manager:
    """The service manager's end: a bound datagram socket that records what arrives."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # what NOTIFY_SOCKET holds

    async def receive(self) -> tuple[list[str], float]:
        """The next datagram's lines and the monotonic time it was read (5 s at most)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            data = await loop.sock_recv(self.sock, 4096)
        return data.decode().split("\n"), time.monotonic()

    def drain(self) -> list[list[str]]:
        """Every datagram already queued, without waiting."""
        queued: list[list[str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return queued
            queued.append(data.decode().split("\n"))


def _manager(address: str, bind_to: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(bind_to)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        yield Manager(sock, address)


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    path = str(tmp_path / "notify")
    yield from _manager(path, path, monkeypatch)


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    name = f"tocsin-test-{uuid.uuid4().hex}"
    yield from _manager(f"@{name}", f"\0{name}", monkeypatch)


async def test_it_sends_ready_status_and_stopping_to_the_notify_socket(manager: Manager) -> None:
    assert sdnotify.notify("READY=1", "STATUS=1 subject, 0 down, 0 webhooks pending")
    assert (await manager.receive())[0] == [
        "READY=1",
        "STATUS=1 subject, 0 down, 0 webhooks pending",
    ]
    assert sdnotify.notify("STOPPING=1")
    assert (await manager.receive())[0] == ["STOPPING=1"]


async def test_it_sends_to_an_abstract_socket_named_with_an_at_sign(
    abstract_manager: Manager,
) -> None:
    assert abstract_manager.address.startswith("@")
    assert sdnotify.notify("READY=1")
    assert (await abstract_manager.receive())[0] == ["READY=1"]


async def test_an_explicit_socket_path_wins_over_the_environment(
    manager: Manager, abstract_manager: Manager
) -> None:
    assert os.environ["NOTIFY_SOCKET"] == abstract_manager.address
    assert sdnotify.notify("READY=1", socket_path=manager.address)
    assert (await manager.receive())[0] == ["READY=1"]
    assert abstract_manager.drain() == []


def test_it_does_nothing_without_a_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


async def test_a_failing_send_returns_false_and_is_logged_once_until_it_recovers(
    manager: Manager, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-socket")
    with capture_logs() as logs:
        assert sdnotify.notify("READY=1")  # a clean start, whatever ran before
        assert sdnotify.notify("WATCHDOG=1", socket_path=missing) is False
        assert sdnotify.notify("WATCHDOG=1", socket_path=missing) is False
        assert sdnotify.notify("WATCHDOG=1", socket_path="vsock:2:1234") is False
        assert sdnotify.notify("WATCHDOG=1")
        assert sdnotify.notify("WATCHDOG=1")
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "cannot notify systemd"),
        ("info", "notifying systemd works again"),
    ]
    assert logs[0]["reason"] == "No such file or directory"
    assert len(manager.drain()) == 3


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"WATCHDOG_USEC": "30000000"}, 15.0, id="half-the-timeout"),
        pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, 15.0, id="our-pid"),
        pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "other"}, None, id="other-pid"),
        pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None, id="bad-pid"),
        pytest.param({}, None, id="not-requested"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
        pytest.param({"WATCHDOG_USEC": "soon"}, None, id="not-a-number"),
    ],
)
def test_the_watchdog_interval_follows_watchdog_usec_and_pid(
    environ: dict[str, str], expected: float | None
) -> None:
    pids = {"self": str(os.getpid()), "other": str(os.getppid())}
    if "WATCHDOG_PID" in environ:
        environ = {**environ, "WATCHDOG_PID": pids.get(environ["WATCHDOG_PID"], "x")}
    assert sdnotify.watchdog_interval(environ) == expected


def test_the_watchdog_interval_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert sdnotify.watchdog_interval() == 2.0


async def test_the_watchdog_pings_and_sends_the_status_right_away_then_every_period(
    manager: Manager,
) -> None:
    task = asyncio.create_task(
        sdnotify.watchdog(0.02, lambda: "1,204 subjects,\n3 down", every=3600)
    )
    try:
        assert (await manager.receive())[0] == ["WATCHDOG=1", "STATUS=1,204 subjects, 3 down"]
        for _ in range(3):  # the next status is an hour away
            assert (await manager.receive())[0] == ["WATCHDOG=1"]
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_no_watchdog_ping_goes_out_while_the_event_loop_is_blocked(
    manager: Manager,
) -> None:
    interval = 0.05
    task = asyncio.create_task(sdnotify.watchdog(interval))
    try:
        for _ in range(3):
            assert (await manager.receive())[0] == ["WATCHDOG=1"]
        # Sends are synchronous, so whatever went out before the block is queued by now.
        manager.drain()
        before = time.monotonic()
        # Deliberately block the loop: a watchdog driven by it must fall silent.
        time.sleep(8 * interval)  # noqa: ASYNC251
        blocked = time.monotonic() - before
        assert manager.drain() == [], "a ping went out while the event loop was blocked"
        lines, after_block = await manager.receive()  # the loop runs again: so do the pings
        assert lines == ["WATCHDOG=1"]
        assert after_block - before >= blocked >= 8 * interval
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_status_provider_does_not_stop_the_pings(manager: Manager) -> None:
    def broken() -> str:
        raise RuntimeError("no summary")

    with capture_logs() as logs:
        task = asyncio.create_task(sdnotify.watchdog(0.02, broken, every=0.0))
        try:
            for _ in range(3):
                assert (await manager.receive())[0] == ["WATCHDOG=1"]
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [e["event"] for e in logs] == ["cannot build the systemd status"]


async def test_without_a_watchdog_it_sends_only_the_status(manager: Manager) -> None:
    task = asyncio.create_task(sdnotify.watchdog(None, lambda: "2 subjects", every=0.02))
    try:
        assert (await manager.receive())[0] == ["STATUS=2 subjects"]
        assert (await manager.receive())[0] == ["STATUS=2 subjects"]
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_watchdog_returns_once_stop_is_set(manager: Manager) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog(3600, lambda: "0 subjects", stop=stop))
    assert (await manager.receive())[0] == ["WATCHDOG=1", "STATUS=0 subjects"]
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert manager.drain() == []


@pytest.mark.parametrize(
    ("counts", "line"),
    [
        pytest.param((1204, 3, 0), "1,204 subjects, 3 down, 0 webhooks pending", id="many"),
        pytest.param((1, 0, 1), "1 subject, 0 down, 1 webhook pending", id="one"),
    ],
)
def test_the_status_line_is_one_readable_line(counts: tuple[int, int, int], line: str) -> None:
    assert sdnotify.status_line(*counts) == line
