"""The decision applier sends each subject's next decision as soon as its last one is written,
not after a whole round: a decision taken while a storm's transaction is under way is in the
next transaction."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

from tests.monitor.test_worker import until
from tocsin.monitor.applier import DecisionApplier, Outcome, Pending
from tocsin.probes.observation import SubjectKey
from tocsin.tickets.model import Kind
from tocsin.tickets.store import TicketStore
from tocsin.tracker import OpenTicket
from tocsin.tracker.events import Reason


def opening(subject_id: str) -> Pending:
    key = SubjectKey("acme", "device", subject_id)
    decision = OpenTicket(Kind.DEVICE_OFFLINE.value, f"{subject_id} is down", Reason.OPEN)
    return Pending(key, subject_id, decision, datetime.now(UTC))


async def test_a_decision_taken_while_another_is_with_the_store_goes_in_the_next_commit(
    store: TicketStore,
) -> None:
    writer = store.writer
    commits: list[int] = []
    commit = writer._commit

    def counted(ops: list[Any]) -> Any:
        commits.append(len(ops))
        return commit(ops)

    writer._commit = counted  # type: ignore[method-assign]
    gate = threading.Event()
    blocker = asyncio.create_task(writer.run(lambda conn: gate.wait(5)))
    await until(lambda: commits == [1])  # the writer thread is inside the blocker's commit
    applied: list[tuple[str, Outcome]] = []
    applier = DecisionApplier(store, lambda p, o, seq: applied.append((p.key.id, o)))
    running = asyncio.create_task(applier.run())
    try:
        applier.submit(opening("pump"))
        await until(lambda: writer._queue.qsize() == 1)  # the pump's open waits for the writer
        applier.submit(opening("fan"))  # decided while the pump's open is with the store
        await until(lambda: writer._queue.qsize() == 2)
        gate.set()
        await blocker
        await until(lambda: len(applied) == 2)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert sorted(applied) == [("fan", Outcome.APPLIED), ("pump", Outcome.APPLIED)]
    assert commits == [1, 2]  # both opens in the one commit after the blocker's
