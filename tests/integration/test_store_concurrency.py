"""First use of the state database under concurrency: several processes, one new file."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
from pathlib import Path

import pytest

from agent.errors import CorruptStateError, StateError
from agent.store import Store

PROCESSES = 4
ROUNDS = 100
MIGRATIONS = ("CREATE TABLE items (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL)",)


def _worker(
    directory: str,
    worker: int,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[list[str]],
) -> None:
    failures: list[str] = []
    for n in range(ROUNDS):
        barrier.wait(timeout=60)  # every process opens round n's new database at once
        try:
            with Store(Path(directory) / f"state-{n}.db") as store:
                store.migrate("test", MIGRATIONS)
                with store.transaction() as db:
                    db.execute("INSERT INTO items(owner) VALUES (?)", (worker,))
        except StateError as exc:
            failures.append(f"round {n}: {exc.reason}: {exc.message}")
    results.put(failures)


def test_four_processes_open_new_databases_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results: multiprocessing.Queue[list[str]] = context.Queue()
    workers = [
        context.Process(target=_worker, args=(str(tmp_path), w, barrier, results))
        for w in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    failures = [f for _ in workers for f in results.get(timeout=240)]
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert failures == []
    for n in range(ROUNDS):
        db = sqlite3.connect(tmp_path / f"state-{n}.db")
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            owners = sorted(r[0] for r in db.execute("SELECT owner FROM items"))
            assert owners == list(range(PROCESSES))
        finally:
            db.close()


def test_a_lock_held_too_long_is_busy_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    # A new database whose creator holds an exclusive lock: the journal mode cannot change.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE t (x)")
    try:
        with pytest.raises(StateError) as caught:
            Store(path, timeout=0.3)
        assert not isinstance(caught.value, CorruptStateError)
        assert caught.value.reason == "STATE_BUSY"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store(path, timeout=0.3) as store:  # once released, the same file opens
        assert store.version("test") == 0


def test_a_damaged_file_is_still_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database, just bytes " * 200)
    with pytest.raises(CorruptStateError) as caught:
        Store(path, timeout=0.3)
    assert caught.value.reason == "STATE_CORRUPT"
