"""The daemon under faults, end to end through `tocsin run` with real peers: its disk fills up,
another process locks the database, the machine is paused, a webhook receiver hangs or does
not resolve, its config or a secret file vanishes before a reload, the wall clock is stepped,
and the MQTT broker restarts with and without its retained messages.

The store-fault contract: one "store writes failing" line (fault and the operator's cause),
/readyz 503 naming the cause while it lasts, one "store writes resumed" line after; a decision
the monitor could not write is kept and written later, stamped with when it was decided; the
daemon never exits and logs no traceback for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from standardwebhooks import Webhook

from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.e2e.faults import (
    DiskFiller,
    FakeWallClock,
    LockHolder,
    call,
    daemon_wall_clock,
    deliveries,
    device,
    hung_receiver,
    log_lines,
    logged,
    logged_soon,
    metrics,
    new_webhook_secret,
    open_workflow_ticket,
    query,
    readyz,
    receiver,
    secret_file,
    set_persistence,
    subjects,
    tmpfs,
    truncate_wal,
    webhook_config,
    with_store,
)
from tests.peers import Mosquitto
from tests.peers import free_port as free_broker_port

TICKETS = "/api/v1/orgs/acme/tickets"
FAILING = "store writes failing"
STILL_FAILING = "store writes still failing"
RESUMED = "store writes resumed"
DEBOUNCE = 1.0


def http_device(device_id: str, url: str, *, timeout: str = "1s") -> str:
    return f"""
[[devices]]
org = "acme"
id = "{device_id}"
name = "Device {device_id}"
probe = {{ type = "http", url = "{url}", timeout = "{timeout}" }}
"""


def fast_retries(*, ticket_after: str = "10m", process: str = "auto") -> str:
    """Retries a second apart, no jitter, and no endpoint ticket within a test's time."""
    return f"""
[webhook_delivery]
schedule = ["1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]
jitter = 0.0
ticket_after = "{ticket_after}"
process = "{process}"
"""


def delivery_in(process: str) -> str:
    """Where webhook delivery runs: the store faults must be ridden out both ways."""
    return f'\n[webhook_delivery]\nprocess = "{process}"\n'


# Each store and receiver fault with delivery in the daemon and in a process of its own.
DELIVERY = pytest.mark.parametrize("delivery", ["inline", "worker"])


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """The daemon started; killed at the end if the test did not stop it itself."""
    await daemon.start()
    try:
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)


@contextlib.contextmanager
def paused(daemon: Daemon) -> Iterator[None]:
    """The daemon stopped (SIGSTOP) for the duration, and continued (SIGCONT) after."""
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        daemon.process.send_signal(signal.SIGCONT)


def alive(daemon: Daemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def of(subject_id: str, tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tickets if t["subject"]["id"] == subject_id]


def no_traceback(daemon: Daemon) -> bool:
    return "Traceback" not in daemon.log.read_text(errors="replace")


async def health_of(daemon: Daemon, subject_id: str) -> str | None:
    row = (await subjects(daemon)).get(subject_id)
    return None if row is None else str(row["health"])


async def wait_health(
    daemon: Daemon, subject_id: str, wanted: set[str], *, within: float = 10.0
) -> None:
    await eventually(
        lambda: health_of(daemon, subject_id),
        lambda health: health in wanted,
        within=within,
        what=f"{subject_id} {'/'.join(sorted(wanted))}",
    )


async def store_fault_lines(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    return await eventually(
        lambda: logged_soon(daemon, event), lambda lines: len(lines) >= 1, within=25, what=event
    )


# -- the store ---------------------------------------------------------------------------------


@DELIVERY
async def test_it_rides_out_a_full_disk_and_writes_the_ticket_it_decided_during_it(
    tmp_path: Path, delivery: str
) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        database = disk / "tocsin.db"
        async with device() as cam, receiver() as hooks:
            port = free_port()
            config = tmp_path / "tocsin.toml"
            config.write_text(
                with_store(base_config(port), database)
                + http_device("cam-1", cam.url)
                + webhook_config("ops", hooks.url, secret_file(tmp_path / "ops-secret"))
                + delivery_in(delivery)
            )
            daemon = Daemon(config, port)
            filler = DiskFiller(disk)
            async with running(daemon):
                try:
                    await wait_health(daemon, "cam-1", {"up"})
                    await asyncio.to_thread(truncate_wal, database)
                    with paused(daemon):  # no write is half-way through while the disk fills
                        filler.start()
                    failed_at = datetime.now(UTC)
                    cam.status = 500

                    failing = (await store_fault_lines(daemon, FAILING))[0]
                    assert failing["level"] == "error"
                    assert failing["fault"] == "disk_full"
                    assert failing["cause"].startswith(f"disk full at {database}"), failing
                    status, ready = await readyz(daemon)
                    assert status == 503, ready
                    assert ready["status"] == "unavailable"
                    assert ready["checks"]["store"] == failing["cause"]

                    # A person's write is refused outright, not left half-done.
                    status, answer = await open_workflow_ticket(daemon, "bms")
                    assert status == 503, answer
                    assert answer["error"]["code"] == "store_unavailable"

                    # The monitor has confirmed the outage; the ticket cannot be written yet.
                    await wait_health(daemon, "cam-1", {"down"})
                    assert of("cam-1", await daemon.tickets()) == []
                    assert alive(daemon)
                    freed_at = datetime.now(UTC)
                finally:
                    await filler.free()

                resumed = (await store_fault_lines(daemon, RESUMED))[0]
                assert resumed["failed_writes"] >= 1
                assert resumed["outage_seconds"] > 0
                opened = await eventually(
                    daemon.tickets, lambda t: len(of("cam-1", t)) == 1, what="cam-1's ticket"
                )
                ticket = await daemon.ticket(of("cam-1", opened)[0]["seq"])
                # Stamped when the monitor decided, not when the disk had room again.
                assert failed_at < moment(ticket["opened_at"]) < freed_at, ticket
                [opened_event] = [e for e in ticket["timeline"] if e["type"] == "opened"]
                assert failed_at < moment(opened_event["at"]) < freed_at, opened_event
                await eventually(
                    hooks.opened_soon,
                    lambda got: any(d.seq == ticket["seq"] for d in got),
                    what="ticket.opened at the receiver",
                )
                status, ready = await readyz(daemon)
                assert (status, ready["status"]) == (200, "ok"), ready
                samples = await metrics(daemon)
                assert samples[("tocsin_store_failures_total", (("fault", "disk_full"),))] > 0
                assert len(logged(daemon, FAILING)) == 1
                assert len(logged(daemon, STILL_FAILING)) <= 1
                assert len(logged(daemon, RESUMED)) == 1
                assert [t["subject"]["id"] for t in await daemon.tickets()] == ["cam-1"]
                assert no_traceback(daemon)
                assert daemon.stop() == 0

        assert query(database, "PRAGMA integrity_check") == [("ok",)]
        assert query(database, "PRAGMA foreign_key_check") == []
        # The refused request left nothing behind: no ticket, no sequence number used.
        assert query(database, "SELECT seq, subject_id FROM tickets") == [(1, "cam-1")]
        assert query(database, "SELECT last_seq FROM org_sequences WHERE org = 'acme'") == [(1,)]


@DELIVERY
async def test_it_waits_out_a_database_locked_by_another_process(
    tmp_path: Path, delivery: str
) -> None:
    async with device() as cam, receiver() as hooks:
        port = free_port()
        config = tmp_path / "tocsin.toml"
        config.write_text(
            base_config(port)
            + http_device("cam-1", cam.url)
            + webhook_config("ops", hooks.url, secret_file(tmp_path / "ops-secret"))
            + delivery_in(delivery)
        )
        daemon = Daemon(config, port)
        holder = LockHolder(tmp_path / "state" / "tocsin.db")
        async with running(daemon):
            try:
                await wait_health(daemon, "cam-1", {"up"})
                await holder.take()
                failed_at = datetime.now(UTC)
                cam.status = 500

                failing = (await store_fault_lines(daemon, FAILING))[0]
                assert failing["level"] == "error"
                assert failing["fault"] == "locked"
                assert "locked by another process" in failing["cause"], failing
                status, ready = await readyz(daemon)
                assert status == 503, ready
                assert "locked by another process" in ready["checks"]["store"]
                await wait_health(daemon, "cam-1", {"down"})
                assert of("cam-1", await daemon.tickets()) == []  # reads still work
                assert alive(daemon)
                released_at = datetime.now(UTC)
            finally:
                await holder.release()

            await store_fault_lines(daemon, RESUMED)
            opened = await eventually(
                daemon.tickets, lambda t: len(of("cam-1", t)) == 1, what="cam-1's ticket"
            )
            ticket = of("cam-1", opened)[0]
            assert failed_at < moment(ticket["opened_at"]) < released_at, ticket
            await eventually(
                hooks.opened_soon,
                lambda got: any(d.seq == ticket["seq"] for d in got),
                what="ticket.opened at the receiver",
            )
            status, ready = await readyz(daemon)
            assert (status, ready["status"]) == (200, "ok"), ready
            assert len(logged(daemon, FAILING)) == 1
            assert len(logged(daemon, RESUMED)) == 1
            assert no_traceback(daemon)
            assert daemon.stop() == 0


# -- the machine -------------------------------------------------------------------------------


async def ping_forever(url: str) -> None:
    """A push heartbeat every 0.5 s; a daemon that cannot answer (stopped) is ignored."""
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
            await asyncio.sleep(0.5)


async def test_it_opens_nothing_for_healthy_subjects_after_the_machine_was_paused(
    tmp_path: Path,
) -> None:
    key = secrets.token_urlsafe(24)
    (tmp_path / "door-key").write_text(key + "\n")
    async with device() as cam:
        port = free_port()
        config = tmp_path / "tocsin.toml"
        config.write_text(
            base_config(port)
            + http_device("cam-1", cam.url)
            + """
[[devices]]
org = "acme"
id = "door-1"
name = "Door controller"
probe = { type = "push", timeout = "3s", key_file = "door-key" }
"""
        )
        daemon = Daemon(config, port)
        async with running(daemon):
            pinger = asyncio.create_task(ping_forever(f"{daemon.base}/ping/{key}"))
            try:
                await wait_health(daemon, "cam-1", {"up"})
                await wait_health(daemon, "door-1", {"up"})
                with paused(daemon):
                    await asyncio.sleep(15)  # the pause itself: past every window
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    assert await daemon.tickets() == []
                    await asyncio.sleep(0.1)
                await wait_health(daemon, "cam-1", {"up"})
                await wait_health(daemon, "door-1", {"up"})
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger
            stalls = [line for line in log_lines(daemon) if "stalled" in str(line.get("event"))]
            assert stalls, "no line says the daemon stalled"
            assert alive(daemon)
            assert daemon.stop() == 0


# -- webhook receivers -------------------------------------------------------------------------


TIMEOUT_ERROR = re.compile(r"no answer within|timed? ?out", re.IGNORECASE)


@DELIVERY
async def test_a_hung_receiver_is_retried_on_its_timeout_while_others_get_every_ticket(
    tmp_path: Path, delivery: str
) -> None:
    async with receiver() as hooks, hung_receiver() as hung:
        port = free_port()
        config = tmp_path / "tocsin.toml"
        config.write_text(
            base_config(port)
            + webhook_config(
                "hung",
                f"http://127.0.0.1:{hung.port}/hook",
                secret_file(tmp_path / "hung-secret"),
                timeout="1s",
            )
            + webhook_config("ok", hooks.url, secret_file(tmp_path / "ok-secret"))
            + fast_retries(process=delivery)
        )
        daemon = Daemon(config, port)
        async with running(daemon):
            opened_at: dict[int, float] = {}
            for name in ("bms-1", "bms-2", "bms-3"):
                status, ticket = await open_workflow_ticket(daemon, name)
                assert status == 201, ticket
                opened_at[ticket["seq"]] = time.monotonic()
            got = await eventually(
                hooks.opened_soon,
                lambda got: {d.seq for d in got} >= set(opened_at),
                within=5,
                what="every ticket.opened at the working receiver",
            )
            for delivery in got:
                assert delivery.seq is not None
                assert delivery.arrived - opened_at[delivery.seq] < 3, "not prompt"
            assert hung.connections >= 1  # the hung receiver was tried, and hangs

            def retried_on_timeout(rows: list[dict[str, Any]]) -> bool:
                return any(
                    row["attempts"] >= 2 and TIMEOUT_ERROR.search(row["last_error"] or "")
                    for row in rows
                )

            rows = await eventually(
                lambda: deliveries(daemon, "hung"),
                retried_on_timeout,
                within=15,
                what="a hung delivery retried after timeouts",
            )
            assert {row["status"] for row in rows} <= {"pending", "delivering"}, rows
            assert hung.connections >= 2
            await eventually(
                lambda: deliveries(daemon, "ok"),
                lambda rows: len(rows) == 3 and {row["status"] for row in rows} == {"delivered"},
                what="the working endpoint's deliveries recorded as delivered",
            )
            assert no_traceback(daemon)
            started = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - started < 10  # a hung attempt does not hold the stop


async def test_a_receiver_whose_name_does_not_resolve_fails_readably_and_blocks_no_other(
    tmp_path: Path,
) -> None:
    async with receiver() as hooks:
        port = free_port()
        config = tmp_path / "tocsin.toml"
        config.write_text(
            base_config(port)
            + webhook_config(
                "nowhere",
                f"http://tocsin-test.invalid:{free_port()}/hook",
                secret_file(tmp_path / "nowhere-secret"),
                timeout="2s",
            )
            + webhook_config("ok", hooks.url, secret_file(tmp_path / "ok-secret"))
            + fast_retries()
        )
        daemon = Daemon(config, port)
        async with running(daemon):
            seqs = set()
            for name in ("bms-1", "bms-2"):
                status, ticket = await open_workflow_ticket(daemon, name)
                assert status == 201, ticket
                seqs.add(ticket["seq"])
            await eventually(
                hooks.opened_soon,
                lambda got: {d.seq for d in got} >= seqs,
                within=5,
                what="every ticket.opened at the working receiver",
            )
            rows = await eventually(
                lambda: deliveries(daemon, "nowhere"),
                lambda rows: any("resolve" in (row["last_error"] or "") for row in rows),
                what="a DNS error on the delivery",
            )
            for row in rows:
                error = row["last_error"] or ""
                assert row["status"] != "delivered"
                assert "gaierror" not in error
                assert "Errno" not in error
            assert no_traceback(daemon)
            assert daemon.stop() == 0


# -- reloads -----------------------------------------------------------------------------------


def errors_naming(daemon: Daemon, path: Path) -> list[dict[str, Any]]:
    return [
        line
        for line in log_lines(daemon)
        if line.get("level") == "error" and str(path) in json.dumps(line)
    ]


async def errors_naming_soon(daemon: Daemon, path: Path) -> list[dict[str, Any]]:
    return errors_naming(daemon, path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp_path with any symlink resolved: the daemon names files by their real path."""
    return tmp_path.resolve()


async def test_it_keeps_the_running_config_when_its_file_is_deleted_before_a_reload(
    folder: Path,
) -> None:
    async with device() as cam:
        port = free_port()
        config = folder / "tocsin.toml"
        config.write_text(base_config(port) + http_device("cam-1", cam.url))
        daemon = Daemon(config, port)
        async with running(daemon):
            await wait_health(daemon, "cam-1", {"up"})
            config.unlink()
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            await eventually(
                lambda: errors_naming_soon(daemon, config),
                lambda lines: len(lines) >= 1,
                what="an error naming the config file",
            )
            hits = cam.hits
            await eventually(
                lambda: asyncio.sleep(0, cam.hits),
                lambda n: n >= hits + 3,
                what="the old config keeps probing",
            )
            assert set(await subjects(daemon)) == {"cam-1"}
            assert len(errors_naming(daemon, config)) == 1
            assert alive(daemon)
            assert no_traceback(daemon)
            assert daemon.stop() == 0


async def test_it_refuses_a_reload_whose_secret_files_are_gone_and_keeps_the_old_ones(
    folder: Path,
) -> None:
    token_file, secret_path = folder / "bot-token", folder / "ops-secret"
    token_file.write_text("bot-token-value\n")
    async with receiver() as hooks:
        secret = new_webhook_secret(secret_path)
        port = free_port()
        config = folder / "tocsin.toml"
        config.write_text(
            base_config(port)
            + """
  [[orgs.tokens]]
  name = "bot"
  scope = "write"
  token_file = "bot-token"
"""
            + webhook_config("ops", hooks.url, secret_path)
        )
        daemon = Daemon(config, port)
        async with running(daemon):
            assert daemon.process is not None
            status, _ = await call(daemon, "GET", TICKETS, token="bot-token-value")
            assert status == 200

            token_file.unlink()
            daemon.process.send_signal(signal.SIGHUP)
            await eventually(
                lambda: errors_naming_soon(daemon, token_file),
                lambda lines: len(lines) >= 1,
                what="an error naming the token file",
            )
            status, _ = await call(daemon, "GET", TICKETS, token="bot-token-value")
            assert status == 200  # the token it had still works

            token_file.write_text("bot-token-value\n")
            secret_path.unlink()
            daemon.process.send_signal(signal.SIGHUP)
            await eventually(
                lambda: errors_naming_soon(daemon, secret_path),
                lambda lines: len(lines) >= 1,
                what="an error naming the webhook secret file",
            )
            status, ticket = await open_workflow_ticket(daemon, "bms")
            assert status == 201, ticket
            got = await eventually(
                hooks.opened_soon,
                lambda got: any(d.seq == ticket["seq"] for d in got),
                what="ticket.opened at the receiver",
            )
            delivery = next(d for d in got if d.seq == ticket["seq"])
            Webhook(secret).verify(delivery.body, delivery.headers)  # signed with the old secret
            assert len(errors_naming(daemon, token_file)) == 1
            assert len(errors_naming(daemon, secret_path)) == 1
            assert alive(daemon)
            assert no_traceback(daemon)
            assert daemon.stop() == 0


# -- the wall clock ----------------------------------------------------------------------------


def near(when: str | datetime, expected: datetime, *, within: float = 60.0) -> bool:
    """Within a minute: a busy box may take seconds to deliver and log, while the steps the
    test makes are an hour, so a stamp on the wrong clock is still told apart."""
    stamp = moment(when) if isinstance(when, str) else when
    return abs((stamp - expected).total_seconds()) < within


async def test_a_stepped_wall_clock_neither_opens_nor_resolves_and_stamps_the_new_time(
    tmp_path: Path,
) -> None:
    clock = FakeWallClock(tmp_path / "faketime")
    async with device() as ok, device() as bad, receiver() as hooks:
        bad.status = 500
        port = free_port()
        config = tmp_path / "tocsin.toml"
        # libfaketime makes every clock read dear: a roomier probe timeout keeps a slow answer
        # from counting as a failure of the healthy device.
        config.write_text(
            base_config(port)
            + http_device("ok-1", ok.url, timeout="3s")
            + http_device("bad-1", bad.url, timeout="3s")
            + webhook_config("ops", hooks.url, secret_file(tmp_path / "ops-secret"))
        )
        daemon = Daemon(config, port, env=clock.env())
        async with running(daemon):
            opened = await eventually(
                daemon.tickets, lambda t: len(of("bad-1", t)) == 1, what="bad-1's ticket"
            )
            seq = of("bad-1", opened)[0]["seq"]
            await wait_health(daemon, "ok-1", {"up"})

            async def comment_and_check_quiet(offset: int, comments: int) -> None:
                """Step the wall clock to real + offset; a comment and its webhook carry that
                time; for three debounce windows nothing opens, resolves or reopens."""
                clock.step(offset)
                await eventually(
                    lambda: daemon_wall_clock(daemon),
                    lambda now: near(now, datetime.now(UTC) + timedelta(seconds=offset)),
                    what=f"the daemon's wall clock at {offset:+d} s",
                )
                expected = datetime.now(UTC) + timedelta(seconds=offset)
                status, ticket = await call(
                    daemon,
                    "POST",
                    f"/api/v1/orgs/acme/tickets/{seq}/comments",
                    {"body": f"clock at {offset:+d} s"},
                )
                assert status == 201, ticket
                comment = ticket["timeline"][-1]
                assert comment["type"] == "comment"
                assert near(comment["at"], expected), (comment["at"], expected)
                mark = f"clock at {offset:+d} s".encode()
                got = await eventually(
                    lambda: asyncio.sleep(0, [d for d in hooks.received if mark in d.body]),
                    lambda got: len(got) == 1,
                    what="ticket.comment_added at the receiver",
                )
                payload = json.loads(got[0].body)
                assert near(payload["timestamp"], expected), payload["timestamp"]
                stamp = datetime.fromtimestamp(int(got[0].headers["webhook-timestamp"]), UTC)
                assert near(stamp, expected), stamp
                delivered = await eventually(
                    lambda: logged_soon(daemon, "webhook delivered"),
                    lambda lines: (
                        sum(x.get("trigger") == "ticket.comment_added" for x in lines)
                        == comments + 1
                    ),
                    what="the comment's delivery logged",
                )
                assert near(delivered[-1]["timestamp"], expected), delivered[-1]
                deadline = time.monotonic() + 3 * DEBOUNCE
                while time.monotonic() < deadline:
                    tickets = await daemon.tickets()
                    assert [(t["subject"]["id"], t["state"]) for t in tickets] == [
                        ("bad-1", "open")
                    ]
                    health = await subjects(daemon)
                    assert health["ok-1"]["health"] == "up"
                    assert health["bad-1"]["health"] == "down"
                    await asyncio.sleep(0.1)

            await comment_and_check_quiet(3600, comments=0)  # an hour ahead
            await comment_and_check_quiet(0, comments=1)  # and back
            timeline = (await daemon.ticket(seq))["timeline"]
            assert [e["type"] for e in timeline] == ["opened", "comment", "comment"]
            opened_hooks = [d for d in hooks.received if d.type != "ticket.comment_added"]
            assert [d.type for d in opened_hooks] == ["ticket.opened"]
            assert no_traceback(daemon)
            assert daemon.stop() == 0


# -- the MQTT broker ---------------------------------------------------------------------------


SENSORS = ("sensor-1", "sensor-2")


def mqtt_config(port: int, broker: Mosquitto) -> str:
    text = (
        base_config(port, interval="300ms")
        + f"""
[[mqtt.brokers]]
name = "site"
host = "127.0.0.1"
port = {broker.port}
keepalive = "5s"
reconnect_min = "200ms"
reconnect_max = "500ms"
"""
    )
    for sensor in SENSORS:
        text += f"""
[[devices]]
org = "acme"
id = "{sensor}"
name = "Sensor {sensor}"
probe = {{ type = "mqtt", broker = "site", status_topic = "site/{sensor}/status" }}
"""
    return text


async def broker_connected(daemon: Daemon) -> bool:
    _, ready = await readyz(daemon)
    return bool(ready["checks"].get("mqtt:site") == "ok")


async def device_tickets(daemon: Daemon) -> list[dict[str, Any]]:
    return [t for t in await daemon.tickets() if t["subject"]["type"] == "device"]


async def test_a_restarted_broker_opens_no_device_ticket_with_or_without_retained_state(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", free_broker_port())
    set_persistence(broker, True)
    await broker.astart()
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            for sensor in SENSORS:
                await client.publish(f"site/{sensor}/status", b"online", qos=1, retain=True)
        port = free_port()
        config = tmp_path / "tocsin.toml"
        config.write_text(mqtt_config(port, broker))
        daemon = Daemon(config, port)
        async with running(daemon):
            for sensor in SENSORS:
                await wait_health(daemon, sensor, {"up"})

            for persistent in (True, False):
                await broker.astop()
                await eventually(
                    lambda: broker_connected(daemon), lambda up: not up, what="the loss noticed"
                )
                set_persistence(broker, persistent)
                await broker.astart()
                await eventually(
                    lambda: broker_connected(daemon), bool, what="the broker reconnected"
                )
                wanted = {"up"} if persistent else {"up", "unknown"}
                for sensor in SENSORS:  # the retained state is back, or gone: unknown
                    await wait_health(daemon, sensor, wanted)
                # Within the windows after the reconnect: no device ticket, no device down.
                deadline = time.monotonic() + 3 * DEBOUNCE
                while time.monotonic() < deadline:
                    assert await device_tickets(daemon) == []
                    health = await subjects(daemon)
                    for sensor in SENSORS:
                        assert health[sensor]["health"] in wanted, (persistent, health[sensor])
                    await asyncio.sleep(0.1)
            assert alive(daemon)
            assert daemon.stop() == 0
    finally:
        await broker.astop()
