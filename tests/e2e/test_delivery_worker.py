"""End to end with webhook delivery in a process of its own ([webhook_delivery] process =
"worker"): the daemon's child sends every trigger, signed, in order per ticket; a child killed
mid-run is started again and what it had not sent arrives; a reload to "inline" moves delivery
back into the daemon; the daemon's stop takes the child with it."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from pathlib import Path

from standardwebhooks import Webhook

from tests.e2e.daemon import Daemon, base_config, eventually, free_port
from tests.e2e.faults import (
    Receiver,
    call,
    logged_soon,
    new_webhook_secret,
    open_workflow_ticket,
    receiver,
    webhook_config,
)
from tests.e2e.test_faults import no_traceback
from tests.e2e.test_probe_worker import children
from tests.peers import process_alive

TICKETS = "/api/v1/orgs/acme/tickets"


def config(port: int, hooks: Receiver, secret: Path, where: str) -> str:
    return (
        base_config(port)
        + webhook_config("ops", hooks.url, secret)
        + f'\n[webhook_delivery]\nprocess = "{where}"\njitter = 0.0\n'
        + 'schedule = ["1s", "1s", "1s", "1s", "1s"]\n'
    )


def delivery_child(daemon: Daemon) -> int:
    """The daemon's one child, which must be the delivery process."""
    assert daemon.process is not None
    pids = children(daemon.process.pid)
    assert len(pids) == 1, pids
    pid = pids.pop()
    assert b"tocsin.delivery.process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


async def delivered(hooks: Receiver, seq: int, what: str) -> None:
    await eventually(
        lambda: asyncio.sleep(0, hooks.opened()),
        lambda got: seq in {d.seq for d in got},
        what=what,
    )


async def started(daemon: Daemon, times: int) -> None:
    await eventually(
        lambda: logged_soon(daemon, "webhook delivery started"),
        lambda lines: len(lines) == times,
        what=f"delivery started {times} times",
    )


async def test_a_delivery_process_sends_is_restarted_and_stops_with_the_daemon(
    tmp_path: Path,
) -> None:
    secret_path = tmp_path / "ops-secret"
    secret = new_webhook_secret(secret_path)
    async with receiver() as hooks:
        port = free_port()
        path = tmp_path / "tocsin.toml"
        path.write_text(config(port, hooks, secret_path, "worker"))
        daemon = Daemon(path, port)
        await daemon.start()
        try:
            await started(daemon, 1)
            child = delivery_child(daemon)

            seqs = []
            for name in ("bms-1", "bms-2", "bms-3"):
                status, ticket = await open_workflow_ticket(daemon, name)
                assert status == 201, ticket
                seqs.append(ticket["seq"])
            status, _ = await call(
                daemon,
                "POST",
                f"{TICKETS}/{seqs[0]}/comments",
                {"body": "on site", "actor_name": "Sam"},
            )
            assert status == 201
            got = await eventually(
                lambda: asyncio.sleep(0, list(hooks.received)),
                lambda got: len(got) == 4,
                what="three opens and a comment",
            )
            key = base64.b64decode(secret.removeprefix("whsec_"))
            for delivery in got:  # signed with the endpoint's key, in the child
                Webhook(key).verify(delivery.body, delivery.headers)
            first = [d.type for d in got if d.seq == seqs[0]]
            assert first == ["ticket.opened", "ticket.comment_added"]  # in order per ticket

            # Killed: started again, and what it had not sent arrives.
            os.kill(child, signal.SIGKILL)
            await eventually(
                lambda: logged_soon(daemon, "webhook delivery process exited; starting it again"),
                lambda lines: len(lines) == 1,
                what="the exit logged",
            )
            status, ticket = await open_workflow_ticket(daemon, "bms-4")
            assert status == 201
            await delivered(hooks, ticket["seq"], "bms-4 delivered by the new child")
            await started(daemon, 2)
            second = delivery_child(daemon)
            assert second != child
            assert not process_alive(child)

            # A reload to "inline" moves delivery into the daemon: the child goes.
            path.write_text(config(port, hooks, secret_path, "inline"))
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            await eventually(
                lambda: logged_soon(daemon, "config reloaded"),
                lambda lines: len(lines) == 1 and lines[0]["webhooks_restarted"] is True,
                what="reloaded",
            )
            await eventually(
                lambda: asyncio.sleep(0, process_alive(second)),
                lambda up: not up,
                within=10,
                what="the child stopped",
            )
            status, ticket = await open_workflow_ticket(daemon, "bms-5")
            assert status == 201
            await delivered(hooks, ticket["seq"], "bms-5 delivered by the daemon")
            assert daemon.process is not None
            assert children(daemon.process.pid) == set()
            assert len(hooks.opened()) == len({d.headers["webhook-id"] for d in hooks.opened()})

            # And back to a child; the daemon's stop takes it down.
            path.write_text(config(port, hooks, secret_path, "worker"))
            daemon.process.send_signal(signal.SIGHUP)
            await started(daemon, 4)  # the inline worker was the third
            third = delivery_child(daemon)
            assert daemon.stop() == 0
            assert not process_alive(third)
            assert no_traceback(daemon)
            assert secret not in daemon.log.read_text()
        finally:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


async def test_the_daemon_s_tickets_wake_the_child_before_its_poll(tmp_path: Path) -> None:
    """The child polls the outbox once a minute here: a ticket opened in the daemon still
    reaches the receiver within seconds (the daemon nudges it down the pipe)."""
    secret_path = tmp_path / "ops-secret"
    new_webhook_secret(secret_path)
    async with receiver() as hooks:
        port = free_port()
        path = tmp_path / "tocsin.toml"
        path.write_text(config(port, hooks, secret_path, "worker") + 'poll_interval = "1m"\n')
        daemon = Daemon(path, port)
        await daemon.start()
        try:
            await started(daemon, 1)
            delivery_child(daemon)
            status, ticket = await open_workflow_ticket(daemon, "bms-1")
            assert status == 201, ticket
            await delivered(hooks, ticket["seq"], "the first ticket")
            await asyncio.sleep(1.0)  # its outcome recorded: the child waits for its poll
            status, ticket = await open_workflow_ticket(daemon, "bms-2")
            assert status == 201, ticket
            await eventually(
                lambda: asyncio.sleep(0, hooks.opened()),
                lambda got: ticket["seq"] in {d.seq for d in got},
                within=5,
                what="the second ticket, well before the child's poll",
            )
            assert daemon.stop() == 0
        finally:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()
