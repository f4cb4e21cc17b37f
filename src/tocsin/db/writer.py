"""Group commit: every write in the process goes through one writer thread, which runs the
operations waiting at that moment in one transaction, each inside its own savepoint.

One fsync then serves many callers (SQLite with synchronous=FULL costs a sync per commit), and
the whole batch crosses into the thread once. Each caller still sees its own operation succeed
or fail alone: an operation that raises is rolled back to its savepoint and the others commit.
Operations are plain functions of a synchronous SQLAlchemy Connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from tocsin.db.health import StoreFault, StoreHealth, classify

T = TypeVar("T")
WriteOp = Callable[[Connection], T]
_Outcome = tuple[bool, Any]  # (succeeded, result or exception)


# PostgreSQL hands out ids when rows are inserted, not when they commit: two writers' trigger
# rows could commit out of id order, and the webhook fan-out, which reads past its cursor,
# would step over the one that commits later. A write holds this transaction lock from just
# before its trigger rows until its commit, so they commit in the order of their ids. The group
# writer takes it once, as its transaction begins (outside the operations' savepoints: a lock
# taken inside one is given back when it is rolled back), and marks the connection, so the
# operations do not ask again; a write of its own (a tool's) asks before its trigger rows.
# SQLite has one writer at a time: nothing to do.
TRIGGER_ORDER_LOCK = 0x74_6F_63_73  # "tocs"
_TRIGGER_ORDER = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=TRIGGER_ORDER_LOCK)
_HOLDS_TRIGGER_ORDER = "tocsin_holds_trigger_order"


def triggers_in_id_order(conn: Connection) -> None:
    """Call just before inserting trigger rows."""
    if conn.dialect.name == "postgresql" and not conn.info.get(_HOLDS_TRIGGER_ORDER):
        conn.execute(_TRIGGER_ORDER)


class StoreClosed(RuntimeError):
    """The writer has stopped; nothing more is written."""


class StoreUnavailable(RuntimeError):
    """The database refused the commit (disk full, locked, I/O error, lost connection).

    The message is the operator's sentence for the cause (see tocsin.db.health); `fault` says
    which, so a caller can decide to keep the write and retry it.
    """

    def __init__(self, fault: StoreFault) -> None:
        super().__init__(fault.cause)
        self.fault = fault


def _environmental(exc: BaseException) -> bool:
    """An error of the database's surroundings (disk, lock, file, connection), not of the op."""
    if isinstance(exc, OperationalError | OSError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class GroupWriter:
    def __init__(
        self, engine: Engine, *, max_batch: int = 256, health: StoreHealth | None = None
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self.health = health or StoreHealth(None)
        self._queue: asyncio.Queue[tuple[WriteOp[Any], asyncio.Future[Any]]] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tocsin-writer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="tocsin-store-writer")

    async def run(self, op: WriteOp[T]) -> T:
        """Run `op` in the next batch; return its result once the batch has committed."""
        if self._closing or self._task is None:
            raise StoreClosed("the ticket store is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._thread.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A caller that gave up before its turn is dropped: its operation never runs.
            live = [(op, future) for op, future in batch if not future.cancelled()]
            started = loop.time()
            try:
                result = await loop.run_in_executor(
                    self._thread, self._commit, [op for op, _ in live]
                )
                outcomes, wrote = result
                failures = [v for ok, v in outcomes if not ok and isinstance(v, StoreUnavailable)]
                if failures:
                    self.health.failed(failures[0].fault, count=len(failures))
                elif wrote:  # a commit that changed nothing needs no disk: it proves nothing
                    self.health.succeeded()
                for (_, future), (ok, value) in zip(live, outcomes, strict=True):
                    if not future.done():
                        (future.set_result if ok else future.set_exception)(value)
            except (SQLAlchemyError, OSError) as exc:
                fault = classify(exc, self.health.path, waited=loop.time() - started)
                self.health.failed(fault, count=len(live))
                failure = StoreUnavailable(fault)
                for _, future in live:
                    if not future.done():
                        future.set_exception(failure)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _commit(self, ops: list[WriteOp[Any]]) -> tuple[list[_Outcome], bool]:
        """Run `ops` in one transaction; their outcomes, and whether the commit wrote rows."""
        outcomes: list[_Outcome] = []
        with self._engine.connect() as conn:
            before = _changes(conn)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(_TRIGGER_ORDER)
                    conn.info[_HOLDS_TRIGGER_ORDER] = True
                try:
                    self._run_ops(conn, ops, outcomes)
                finally:
                    conn.info.pop(_HOLDS_TRIGGER_ORDER, None)
            after = _changes(conn)
        return outcomes, before is None or after is None or after > before

    def _run_ops(self, conn: Connection, ops: list[WriteOp[Any]], outcomes: list[_Outcome]) -> None:
        for op in ops:
            # Plain SAVEPOINT statements: SQLAlchemy's begin_nested() compiles its savepoint
            # clause afresh each time, which cost a quarter of the writer's time.
            conn.exec_driver_sql("SAVEPOINT tocsin_op")
            try:
                outcomes.append((True, op(conn)))
            except Exception as exc:  # the op's own failure: undo it alone
                conn.exec_driver_sql("ROLLBACK TO SAVEPOINT tocsin_op")
                if _environmental(exc):  # e.g. the disk filled during its INSERT
                    exc = StoreUnavailable(classify(exc, self.health.path))
                outcomes.append((False, exc))
            conn.exec_driver_sql("RELEASE SAVEPOINT tocsin_op")


def _changes(conn: Connection) -> int | None:
    """Rows changed on this connection so far (SQLite's total_changes); None where unknown."""
    changes = getattr(conn.connection.driver_connection, "total_changes", None)
    return changes if isinstance(changes, int) else None
