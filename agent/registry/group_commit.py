"""Group commit: the writes of concurrent requests share one durable transaction.

Every fleet-provisioning step ends with a small write that must be durable before the device
is answered (``synchronous=FULL``, one fsync per commit). :class:`GroupCommitter` runs the
writes of a worker's request threads on one connection in one thread: it takes every write
waiting, runs each inside its own savepoint (a failing write undoes only itself and gets its
own error), commits once, and then wakes the callers. One device alone pays one commit as
before; eight at once share it. A caller either blocks (:meth:`GroupCommitter.run`) or is
called back (:meth:`GroupCommitter.submit`). :class:`LoopCommitter` does the same inside an
event loop that answers requests itself: the writes of one loop iteration share one commit,
made in the loop's thread right after it. A registry worker commits its loop's requests
through a :class:`LoopCommitter` and only the requests its thread pool answers (templates
with a pre-provisioning hook) through a :class:`GroupCommitter`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent.registry.storage import SqliteRegistryStorage, SqliteRegistryTransaction
from agent.store import Store

_log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 64


#: Called in the committer's thread once a submitted write is durable (or failed).
OnDone = Callable[[Any, BaseException | None], None]


@dataclass
class _Job(Generic[T]):
    fn: Callable[[SqliteRegistryTransaction], T]
    on_done: OnDone | None = None
    done: threading.Event | None = None
    result: T | None = None
    error: BaseException | None = None


class GroupCommitter:
    """One writer thread for a database; :meth:`run` blocks until the write is durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._storage = SqliteRegistryStorage(Store(path), owns_store=True)
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[SqliteRegistryTransaction], T]) -> T:
        """Run ``fn`` in a transaction shared with other callers; its result once committed.

        Raises:
            BaseException: what ``fn`` raised (nothing of it was written), or the commit's
                failure (nothing of the batch was written).
        """
        done = threading.Event()
        job: _Job[T] = _Job(fn, done=done)
        self._queue.put(job)
        done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def submit(self, fn: Callable[[SqliteRegistryTransaction], Any], on_done: OnDone) -> None:
        """Queue ``fn`` without waiting for it.

        ``on_done(result, None)`` is called once it is committed, or ``on_done(None, error)``
        (nothing of it written), in the committer's thread.
        """
        self._queue.put(_Job(fn, on_done))

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs: list[_Job[Any]] = [first]
            stop = False
            while len(jobs) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            self._commit(jobs)
            if stop:
                return

    def _commit(self, jobs: list[_Job[Any]]) -> None:
        _commit_batch(self._storage, jobs)

    def close(self) -> None:
        """Finish the queued writes and close the connection."""
        self._queue.put(None)
        self._thread.join()
        self._storage.close()


def _commit_batch(storage: SqliteRegistryStorage, jobs: list[_Job[Any]]) -> None:
    """Run ``jobs`` in one transaction, each in its own savepoint; then tell each caller."""
    try:
        with storage.transaction() as tx:
            if len(jobs) == 1:  # alone: its failure rolls back the transaction, no savepoint
                jobs[0].result = jobs[0].fn(tx)
            for job in jobs if len(jobs) > 1 else ():
                try:
                    with tx.savepoint():
                        job.result = job.fn(tx)
                except Exception as exc:  # noqa: BLE001 - handed to its caller
                    job.error = exc
    except Exception as exc:  # noqa: BLE001 - the commit failed: every job fails
        for job in jobs:
            job.error = job.error or exc
    for job in jobs:
        if job.on_done is not None:
            try:
                job.on_done(job.result, job.error)
            except Exception:  # noqa: BLE001 - the other callers must still be told
                _log.exception("a group-commit callback failed")
        if job.done is not None:
            job.done.set()


class LoopCommitter:
    """Group commit in an event loop's own thread, for a loop that answers requests itself.

    The writes submitted while the loop handles one burst of requests are committed
    together once the burst is done (at the loop's next iteration), in the loop's thread:
    no thread hand-off or wake-up per write, and the loop reads no further requests during
    the commit, so the requests that arrive meanwhile share the next one. ``on_done`` is
    called in the loop once a write is durable (or failed, with nothing of it written).
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._storage = SqliteRegistryStorage(Store(path), owns_store=True)
        self._loop = loop
        self._jobs: list[_Job[Any]] = []
        self._scheduled = False

    def submit(self, fn: Callable[[SqliteRegistryTransaction], Any], on_done: OnDone) -> None:
        """Queue ``fn`` for the commit after this loop iteration (call in the loop)."""
        self._jobs.append(_Job(fn, on_done))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        jobs, self._jobs = self._jobs, []
        for start in range(0, len(jobs), MAX_BATCH):
            _commit_batch(self._storage, jobs[start : start + MAX_BATCH])

    def close(self) -> None:
        """Commit what is queued and close the connection."""
        self._flush()
        self._storage.close()
