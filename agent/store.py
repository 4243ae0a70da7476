"""The agent's state store: SQLite in WAL mode with versioned schema migrations.

Each component owns a named migration series (``"archive"``, ``"netconf"``, ``"registry"``
...) so components evolve their tables independently. Migrations run in one transaction
each; a database written by a newer agent (a version this build does not know) is refused
rather than silently used.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

from agent.errors import CorruptStateError, StateError

_META = """
CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
)
"""


class Store:
    """One SQLite database file, opened with durable settings.

    Milestones are committed with ``synchronous=FULL``: once :meth:`transaction` returns, the
    change survives a power cut.
    """

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        if not path.exists():
            path.touch(mode=0o600)  # SQLite gives its -wal and -shm files the same mode
        # Switching a new database to WAL needs a lock that SQLite does not wait for (no busy
        # handler), so several processes opening a new database at once retry here, within
        # the same budget as every other lock wait.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db = self._open(timeout)
            except sqlite3.DatabaseError as exc:
                if not _is_busy(exc):
                    raise CorruptStateError(
                        f"the state database {path} cannot be opened: {exc}"
                    ) from exc
                if time.monotonic() >= deadline:
                    raise StateError(
                        f"the state database {path} stayed locked for {timeout:g} s: {exc}",
                        reason="STATE_BUSY",
                    ) from exc
                time.sleep(random.uniform(0.005, 0.05))  # noqa: S311 - jitter, not a secret
            else:
                return

    def _open(self, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.row_factory = sqlite3.Row
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(_META)
        except BaseException:
            db.close()
            raise
        return db

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The underlying connection (autocommit; use :meth:`transaction` for writes)."""
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a write transaction (``BEGIN IMMEDIATE``), committed durably on success."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(
                f"the state database {self.path} is busy: {exc}", reason="STATE_BUSY"
            ) from exc
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def version(self, component: str) -> int:
        """The schema version of ``component`` (0 when it has no tables yet)."""
        row = self._db.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
        return int(row[0]) if row else 0

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Bring ``component`` to ``len(migrations)``; migration *i* makes version *i + 1*.

        Returns the resulting version.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (component,)
            ).fetchone()
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise CorruptStateError(
                    f"the state database has {component} schema version {current}, newer "
                    f"than this agent knows ({len(migrations)}); refusing to use it",
                    reason="STATE_TOO_NEW",
                )
            for version in range(current + 1, len(migrations) + 1):
                for statement in _split_sql(migrations[version - 1]):
                    db.execute(statement)
            if current < len(migrations):
                db.execute(
                    "INSERT INTO schema_versions(component, version) VALUES (?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, len(migrations)),
                )
            return len(migrations)


def _is_busy(exc: sqlite3.DatabaseError) -> bool:
    """True for "database is locked/busy": another connection holds a lock, nothing is damaged."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _split_sql(script: str) -> list[str]:
    """Split a migration script into complete statements (``executescript`` would commit)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
