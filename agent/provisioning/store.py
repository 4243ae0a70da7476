"""Runs and their reports in the state store (``agent.db``).

``provisioning_run`` holds one row per run: its status (the seed's DeviceStatus), the step
reached, the reason and message of its end, what the archive named, and the result
document once it ended. ``provisioning_report`` holds the events each step produced, in
order, until the operational MQTT link has taken them into the durable outbox: a run on an
appliance that has no operational identity yet keeps its events here and they are sent
once one exists.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fsutil import ensure_dir
from agent.store import Store

COMPONENT = "provisioning"
MIGRATIONS = (
    """
    CREATE TABLE provisioning_run (
        run_id         TEXT PRIMARY KEY,
        status         TEXT NOT NULL,
        step           TEXT NOT NULL,
        reason         TEXT,
        message        TEXT NOT NULL DEFAULT '',
        origin         TEXT NOT NULL,
        stick_id       TEXT,
        device_name    TEXT,
        thing_name     TEXT,
        fingerprint    TEXT,
        endpoint       TEXT,
        result         TEXT,
        started_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL
    );
    CREATE TABLE provisioning_report (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id   TEXT NOT NULL,
        type     TEXT NOT NULL,
        body     TEXT NOT NULL
    );
    """,
)

#: The statuses a run ends with.
FINAL = ("SUCCEEDED", "FAILED", "ERROR")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """``run-`` and 16 hex digits."""
    return f"run-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of ``provisioning_run``."""

    run_id: str
    status: str
    step: str
    reason: str | None
    message: str
    origin: str
    stick_id: str | None
    device_name: str | None
    thing_name: str | None
    fingerprint: str | None
    endpoint: str | None
    result: dict[str, Any] | None
    started_at: str
    updated_at: str

    @property
    def finished(self) -> bool:
        """True once the run has its final status."""
        return self.status in FINAL

    def to_json(self) -> dict[str, Any]:
        """What ``GET /devices/<id>`` and ``GET /status`` show."""
        body: dict[str, Any] = {
            "Id": self.run_id,
            "Status": self.status,
            "Step": self.step,
            "Reason": self.reason,
            "Message": self.message,
            "Origin": self.origin,
            "StickId": self.stick_id,
            "DeviceName": self.device_name,
            "IotThingName": self.thing_name,
            "StartedAt": self.started_at,
            "UpdatedAt": self.updated_at,
        }
        if self.result is not None:
            body["Result"] = self.result
        return body


class RunStore:
    """The runs table and the report queue."""

    def __init__(self, state_dir: Path) -> None:
        self._store = Store(ensure_dir(state_dir) / "agent.db")
        self._store.migrate(COMPONENT, MIGRATIONS)

    def close(self) -> None:
        """Close the database."""
        self._store.close()

    def _record(self, row: Any) -> RunRecord:
        data = dict(row)
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return RunRecord(**data)

    def create(self, run_id: str, *, origin: str, stick_id: str | None) -> RunRecord:
        """A new run, AWAITING_PROVISIONING, with its first event queued."""
        now = _now()
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO provisioning_run(run_id, status, step, origin, stick_id, started_at,"
                " updated_at) VALUES (?, 'AWAITING_PROVISIONING', 'read-archive', ?, ?, ?, ?)",
                (run_id, origin, stick_id, now, now),
            )
            self._queue(db, run_id, "RUN_STATUS", {"status": "AWAITING_PROVISIONING"})
        return self.get(run_id)

    def _queue(self, db: Any, run_id: str, event_type: str, body: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO provisioning_report(run_id, type, body) VALUES (?, ?, ?)",
            (run_id, event_type, json.dumps({"runId": run_id, **body})),
        )

    def step(self, run_id: str, step: str, **facts: str | None) -> None:
        """The run is PENDING at ``step`` (durably, with a RUN_STATUS event queued)."""
        columns = "".join(f", {name} = ?" for name in facts)
        with self._store.transaction() as db:
            db.execute(
                f"UPDATE provisioning_run SET status = 'PENDING', step = ?, updated_at = ?"  # noqa: S608 - fixed names
                f"{columns} WHERE run_id = ?",
                (step, _now(), *facts.values(), run_id),
            )
            self._queue(db, run_id, "RUN_STATUS", {"status": "PENDING", "step": step})

    def note(self, run_id: str, **facts: str | None) -> None:
        """Record facts learnt during a step (device name, fingerprint, endpoint...)."""
        columns = ", ".join(f"{name} = ?" for name in facts)
        with self._store.transaction() as db:
            db.execute(
                f"UPDATE provisioning_run SET {columns}, updated_at = ? WHERE run_id = ?",  # noqa: S608 - fixed names
                (*facts.values(), _now(), run_id),
            )

    def finish(self, run_id: str, result: dict[str, Any]) -> None:
        """The run ends with ``result`` (its status, reason and error), its outcome queued."""
        status = str(result["status"])
        outcome: dict[str, Any] = {"status": status}
        if result.get("error"):
            outcome["error"] = result["error"]
        with self._store.transaction() as db:
            db.execute(
                "UPDATE provisioning_run SET status = ?, reason = ?, message = ?, result = ?,"
                " thing_name = COALESCE(?, thing_name), device_name = COALESCE(?, device_name),"
                " updated_at = ? WHERE run_id = ?",
                (
                    status,
                    result.get("reason"),
                    str(result.get("message") or ""),
                    json.dumps(result),
                    result.get("thingName"),
                    result.get("deviceName"),
                    _now(),
                    run_id,
                ),
            )
            self._queue(db, run_id, "RUN_OUTCOME", outcome)

    def get(self, run_id: str) -> RunRecord:
        """One run (KeyError when unknown)."""
        row = self._store.db.execute(
            "SELECT * FROM provisioning_run WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise KeyError(run_id)
        return self._record(row)

    def find(self, run_id: str) -> RunRecord | None:
        """One run, or None."""
        try:
            return self.get(run_id)
        except KeyError:
            return None

    def unfinished(self) -> list[RunRecord]:
        """Runs a crash or power cut interrupted (oldest first)."""
        rows = self._store.db.execute(
            "SELECT * FROM provisioning_run WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'ERROR')"
            " ORDER BY started_at"
        ).fetchall()
        return [self._record(r) for r in rows]

    def last(self) -> RunRecord | None:
        """The latest run."""
        row = self._store.db.execute(
            "SELECT * FROM provisioning_run ORDER BY started_at DESC, rowid DESC LIMIT 1"
        ).fetchone()
        return self._record(row) if row is not None else None

    def operational_endpoint(self) -> str | None:
        """The operational endpoint the latest SUCCEEDED run was given."""
        row = self._store.db.execute(
            "SELECT endpoint FROM provisioning_run WHERE status = 'SUCCEEDED'"
            " ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        return str(row[0]) if row is not None and row[0] else None

    def reports(self, limit: int = 100) -> list[tuple[int, str, dict[str, Any]]]:
        """Queued events, oldest first: (seq, type, body)."""
        rows = self._store.db.execute(
            "SELECT seq, type, body FROM provisioning_report ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

    def reported(self, seqs: list[int]) -> None:
        """Drop events the outbox now holds."""
        with self._store.transaction() as db:
            db.executemany("DELETE FROM provisioning_report WHERE seq = ?", [(s,) for s in seqs])
