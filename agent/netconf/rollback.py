"""Apply with verified rollback, durable across crashes and power cuts.

:meth:`NetConf.apply` does, in order:

1. snapshot what the backends will touch (files, live addresses and routes);
2. write the trial marker (plan + snapshot) to the state store, durably, *before* changing
   anything;
3. apply the network plan, then the NTP servers;
4. probe within the window (:mod:`agent.netconf.probe`);
5. commit (backend commit, then in one transaction: marker removed, plan recorded as applied),
   or revert exactly to the snapshot and remove the marker, reporting why.

If the process dies anywhere between 2 and 5, the marker survives and :meth:`NetConf.recover`
(run at every start) reverts to the snapshot. A revert never stops half-way: every step runs,
the ones that failed are recorded with the outcome, and the marker is removed in any case so
the next apply can run. The committed plan is stored with the backend that applied it, and
:meth:`NetConf.startup` re-applies it with that backend. After a commit the NTP servers are given a
bounded time to synchronise; the result tells the archive's clock policy whether the clock
can be trusted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from agent.errors import AgentError, ConflictError
from agent.faults import crash_point
from agent.netconf import osproc
from agent.netconf.base import (
    NetworkApplyError,
    NetworkBackend,
    Prober,
    ProbeResult,
    Snapshot,
    TimeBackend,
)
from agent.netconf.plan import NetworkPlan
from agent.netconf.timesync import SyncResult, wait_for_sync
from agent.store import Store

_log = logging.getLogger(__name__)

COMPONENT = "netconf"
MIGRATIONS = [
    """
    CREATE TABLE netconf_trial (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        backend      TEXT NOT NULL,
        time_backend TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        boot_id      TEXT NOT NULL,
        plan         TEXT NOT NULL,
        snapshot     TEXT NOT NULL
    );
    CREATE TABLE netconf_applied (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        backend      TEXT NOT NULL,
        committed_at TEXT NOT NULL,
        plan         TEXT NOT NULL
    );
    CREATE TABLE netconf_history (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        at      TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason  TEXT NOT NULL,
        message TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE netconf_history ADD COLUMN failures TEXT NOT NULL DEFAULT '[]';
    """,
]

Outcome = Literal["committed", "reverted"]
T = TypeVar("T")


class NetworkRolledBackError(NetworkApplyError):
    """The trial failed its probe (or could not be applied) and the snapshot is back."""

    default_reason = "NETWORK_ROLLED_BACK"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :meth:`NetConf.apply` did."""

    outcome: Outcome
    reason: str
    message: str
    plan: NetworkPlan
    probe: ProbeResult | None = None
    sync: SyncResult | None = None
    backend: str = ""
    revert_failures: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON form (the CLI output of ``net apply``)."""
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "backend": self.backend,
            "revertFailures": list(self.revert_failures),
            "plan": self.plan.to_json(),
            "probe": None if self.probe is None else self.probe.to_json(),
            "timeSync": None if self.sync is None else self.sync.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Marker:
    """The durable trial-in-progress record."""

    backend: str
    time_backend: str
    started_at: str
    pid: int
    boot_id: str
    plan: NetworkPlan
    snapshot: Snapshot = field(repr=False)


def boot_id() -> str:
    """This boot's id (a crashed trial from an earlier boot is always stale)."""
    return osproc.boot_id()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def load_marker(store: Store) -> Marker | None:
    """The trial marker in ``store``, if any (no backend needed)."""
    store.migrate(COMPONENT, MIGRATIONS)
    row = store.db.execute("SELECT * FROM netconf_trial WHERE id = 1").fetchone()
    if row is None:
        return None
    return Marker(
        backend=row["backend"],
        time_backend=row["time_backend"],
        started_at=row["started_at"],
        pid=int(row["pid"]),
        boot_id=row["boot_id"],
        plan=NetworkPlan.from_json(json.loads(row["plan"])),
        snapshot=json.loads(row["snapshot"]),
    )


def load_history(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The latest outcomes in ``store``, newest first (``failures``: revert steps that failed)."""
    store.migrate(COMPONENT, MIGRATIONS)
    rows = store.db.execute(
        "SELECT at, outcome, reason, message, failures FROM netconf_history "
        "ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [{**dict(r), "failures": json.loads(r["failures"])} for r in rows]


B = TypeVar("B", NetworkBackend, TimeBackend)


def _pick(current: B, wanted: str, factory: Callable[[str], B] | None, what: str) -> B:
    """The backend an interrupted trial used: the current one, or one built by name."""
    if current.name == wanted:
        return current
    if factory is None:
        raise NetworkApplyError(
            f"the interrupted trial used {what} {wanted!r}, which is not available",
            reason="BACKEND_UNAVAILABLE",
        )
    return factory(wanted)


class NetConf:
    """Applies plans through one network backend and one time backend, with rollback."""

    def __init__(
        self,
        store: Store,
        backend: NetworkBackend,
        time_backend: TimeBackend,
        *,
        prober: Prober | None = None,
        sync_timeout: float = 120.0,
        backend_for: Callable[[str], NetworkBackend] | None = None,
        time_backend_for: Callable[[str], TimeBackend] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.time_backend = time_backend
        self.prober = prober
        self.sync_timeout = sync_timeout
        self._backend_for = backend_for
        self._time_backend_for = time_backend_for
        #: What the latest revert could not restore (empty when it was complete).
        self.last_revert_failures: list[str] = []
        store.migrate(COMPONENT, MIGRATIONS)

    # --- state ----------------------------------------------------------------------------

    def marker(self) -> Marker | None:
        """The trial in progress (or left behind by a crash), if any."""
        return load_marker(self.store)

    def applied(self) -> tuple[str, NetworkPlan] | None:
        """The last committed plan and its backend."""
        row = self.store.db.execute("SELECT * FROM netconf_applied WHERE id = 1").fetchone()
        if row is None:
            return None
        return row["backend"], NetworkPlan.from_json(json.loads(row["plan"]))

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest outcomes, newest first."""
        return load_history(self.store, limit)

    def _record(
        self, db: Any, outcome: str, reason: str, message: str, failures: Sequence[str] = ()
    ) -> None:
        db.execute(
            "INSERT INTO netconf_history(at, outcome, reason, message, failures) "
            "VALUES (?, ?, ?, ?, ?)",
            (_now(), outcome, reason, message, json.dumps(list(failures))),
        )

    # --- the trial ------------------------------------------------------------------------

    def apply(
        self,
        plan: NetworkPlan,
        *,
        probe_timeout: float = 60.0,
        endpoint: tuple[str, int] | None = None,
    ) -> ApplyResult:
        """Apply ``plan`` as a trial, probe it, then commit or revert.

        Returns:
            The outcome. A failed probe is a ``reverted`` result, not an exception.

        Raises:
            ConflictError: Another live process has a trial in progress.
            NetworkRolledBackError: Applying failed; the snapshot was restored.
        """
        if plan.ntp is not None:
            self.time_backend.changes(plan.ntp)  # refuses servers the daemon cannot use
        self.recover()
        snapshot = {
            "network": self.backend.snapshot(plan),
            "time": self.time_backend.snapshot() if plan.ntp is not None else None,
        }
        self._begin(plan, snapshot)
        self._step("applying", snapshot, lambda: self._apply_both(plan))
        crash_point("network.applied")
        if self.backend.live:
            result = self._step(
                "probing", snapshot, lambda: self._probe(plan, probe_timeout, endpoint)
            )
        else:
            result = ProbeResult(ok=True, message=f"{self.backend.name}: nothing to probe")
        if not result.ok:
            failures = self._revert(snapshot, "reverted", result.reason, result.message)
            return ApplyResult(
                "reverted",
                result.reason,
                result.message,
                plan,
                result,
                backend=self.backend.name,
                revert_failures=tuple(failures),
            )
        self._step("committing", snapshot, lambda: self.backend.commit(plan))
        with self.store.transaction() as db:
            db.execute("DELETE FROM netconf_trial WHERE id = 1")
            db.execute(
                "INSERT INTO netconf_applied(id, backend, committed_at, plan) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET backend = excluded.backend, "
                "committed_at = excluded.committed_at, plan = excluded.plan",
                (self.backend.name, _now(), json.dumps(plan.to_json())),
            )
            self._record(db, "committed", "PROBE_PASSED", result.message)
        _log.info("network configuration committed (%s)", self.backend.name)
        sync = None
        if plan.ntp and self.backend.live and self.time_backend.name != "none":
            sync = wait_for_sync(self.time_backend, self.sync_timeout)
        return ApplyResult(
            "committed", "PROBE_PASSED", result.message, plan, result, sync, self.backend.name
        )

    def _apply_both(self, plan: NetworkPlan) -> None:
        self.backend.apply(plan)
        if plan.ntp is not None:
            self.time_backend.apply(plan.ntp)

    def _step(self, what: str, snapshot: Snapshot, step: Callable[[], T]) -> T:
        """Run one step of the trial; if it fails in any way, revert first, then raise."""
        error: Exception
        try:
            return step()
        except AgentError as exc:
            reason, message, error = exc.reason, exc.message, exc
        except OSError as exc:
            reason, message, error = (
                "APPLY_FAILED",
                f"{exc.filename or 'a file'}: {exc.strerror or exc}",
                exc,
            )
        except BaseException:
            self._revert(snapshot, "reverted", "APPLY_INTERRUPTED", f"{what} was interrupted")
            raise
        failures = self._revert(snapshot, "reverted", reason, message)
        back = "is back" if not failures else f"is back except: {'; '.join(failures)}"
        raise NetworkRolledBackError(
            f"{what} failed and the previous configuration {back}: {message}", reason=reason
        ) from error

    def _probe(
        self, plan: NetworkPlan, window: float, endpoint: tuple[str, int] | None
    ) -> ProbeResult:
        if self.prober is not None:
            return self.prober(plan, window, endpoint)
        from agent.netconf.probe import probe  # noqa: PLC0415 - pyroute2 only when probing

        return probe(plan, window, endpoint)

    def _begin(self, plan: NetworkPlan, snapshot: Snapshot) -> None:
        with self.store.transaction() as db:
            row = db.execute("SELECT pid FROM netconf_trial WHERE id = 1").fetchone()
            if row is not None:
                raise ConflictError(
                    f"a network trial by process {row['pid']} is in progress",
                    reason="NETWORK_TRIAL_IN_PROGRESS",
                )
            db.execute(
                "INSERT INTO netconf_trial(id, backend, time_backend, started_at, pid, boot_id, "
                "plan, snapshot) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.backend.name,
                    self.time_backend.name,
                    _now(),
                    os.getpid(),
                    boot_id(),
                    json.dumps(plan.to_json()),
                    json.dumps(snapshot),
                ),
            )

    def _revert(
        self,
        snapshot: Snapshot,
        outcome: str,
        reason: str,
        message: str,
        *,
        backend: NetworkBackend | None = None,
        time_backend: TimeBackend | None = None,
    ) -> list[str]:
        """Restore ``snapshot`` as far as possible, end the trial, record what failed."""
        network = backend or self.backend
        clock = time_backend or self.time_backend
        failures: list[str] = []
        if snapshot.get("time") is not None:
            try:
                clock.revert(snapshot["time"])
            except Exception as exc:  # noqa: BLE001 - every failure is recorded; go on
                failures.append(f"NTP ({clock.name}): {exc}")
        try:
            failures += network.revert(snapshot["network"])
        except Exception as exc:  # noqa: BLE001 - every failure is recorded; go on
            failures.append(f"network ({network.name}): {exc}")
        with self.store.transaction() as db:
            db.execute("DELETE FROM netconf_trial WHERE id = 1")
            self._record(db, outcome, reason, message, failures)
        if failures:
            _log.error("network revert incomplete (%s): %s", message, "; ".join(failures))
        else:
            _log.warning("network configuration reverted: %s", message)
        self.last_revert_failures = failures
        return failures

    # --- start-up -------------------------------------------------------------------------

    def recover(self, *, force: bool = False) -> Marker | None:
        """Revert a trial left behind by a crash or power cut; return its marker.

        Args:
            force: Revert even when the trial's process seems to be running (the manual case:
                a recycled pid, a hung process).

        Raises:
            ConflictError: The trial belongs to a process that is still running.
        """
        marker = self.marker()
        if marker is None:
            return None
        if (
            not force
            and marker.boot_id == boot_id()
            and marker.pid != os.getpid()
            and osproc.alive(marker.pid)
        ):
            raise ConflictError(
                f"a network trial by process {marker.pid} is in progress",
                reason="NETWORK_TRIAL_IN_PROGRESS",
            )
        failures: list[str] = []
        try:
            backend = _pick(self.backend, marker.backend, self._backend_for, "backend")
        except AgentError as exc:
            if not force:
                raise
            failures.append(exc.message)
            backend = self.backend
        clock = self.time_backend
        if marker.snapshot.get("time") is not None:
            try:
                clock = _pick(clock, marker.time_backend, self._time_backend_for, "time backend")
            except AgentError as exc:
                if not force:
                    raise
                failures.append(exc.message)
        if failures:  # forced without the trial's backend: end the trial, record why
            with self.store.transaction() as db:
                db.execute("DELETE FROM netconf_trial WHERE id = 1")
                self._record(db, "recovered", "TRIAL_DROPPED", "forced", failures)
            self.last_revert_failures = failures
            return marker
        self._revert(
            marker.snapshot,
            "recovered",
            "TRIAL_INTERRUPTED",
            f"a trial started at {marker.started_at} by process {marker.pid} did not finish",
            backend=backend,
            time_backend=clock,
        )
        return marker

    def startup(self, *, force: bool = False) -> dict[str, Any]:
        """The start-up hook: revert an interrupted trial, else re-apply the committed plan.

        The committed plan is re-applied with the backend that committed it, whatever the
        configuration names now.
        """
        marker = self.recover(force=force)
        if marker is not None:
            return {
                "action": "reverted",
                "startedAt": marker.started_at,
                "pid": marker.pid,
                "backend": marker.backend,
                "failures": list(self.last_revert_failures),
            }
        applied = self.applied()
        if applied is None:
            return {"action": "none"}
        name, plan = applied
        backend = _pick(self.backend, name, self._backend_for, "backend")
        backend.reapply(plan)
        return {"action": "reapplied", "backend": name}
