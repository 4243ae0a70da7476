"""One provisioning run, step by step, persisted at every step.

validate → install → network (trial, probe, commit or roll back) → time-check (the claim
window, once the clock is trusted) → fleet (CreateCertificateFromCsr + RegisterThing) →
SUCCEEDED. Any refusal of the input ends the run FAILED (4xx), anything the appliance could
not finish ends it ERROR (5xx), each with its reason. Every wait is bounded by the time left
in the claim certificate's window; with a trusted clock, an archive with none left is
refused before it is installed. :meth:`Provisioner.abort` (a pulled stick) stops a run at
its next step boundary.

A run a crash interrupted is resumed by :meth:`Provisioner.resume`: before its credentials
were installed it ends ERROR ``RUN_INTERRUPTED`` (nothing was applied, an install the crash
cut short is undone; the stick can be inserted again); after, it goes on from the credential
set it installed (netconf's own recovery has already reverted a half-applied trial, and the
fleet exchange resumes with the same claim and ownership token; once RegisterThing was
answered, only the fleet step is left). Each step boundary is a crash point
(:mod:`agent.faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.archive.clock import Clock, SystemClock
from agent.archive.install import (
    discard_unrecorded,
    install_archive,
    ledger_has,
    open_store,
    restore_identity,
)
from agent.archive.manifest import Manifest, parse_manifest
from agent.archive.reader import Limits
from agent.archive.verify import Policy, check_window, load_trust_anchors, verify_archive
from agent.config import AgentConfig
from agent.errors import AgentError, InternalError, StateError
from agent.faults import crash_point
from agent.netconf.base import TimeSyncError
from agent.provisioning.store import RunRecord, RunStore
from agent.status.result import RunResult, Timings

_log = logging.getLogger(__name__)

#: Seconds kept back from the claim window for the last answer and the report.
MARGIN_SECONDS = 5.0


class RunInterruptedError(StateError):
    """A run stopped (crash, power cut) before its credentials were installed."""

    status_code = 500
    default_reason = "RUN_INTERRUPTED"


class ClaimWindowError(AgentError):
    """Too little of the claim certificate's window is left to finish a step."""

    code = "ValidationException"
    status_code = 400
    default_reason = "CLAIM_EXPIRED"


def policy_from_config(config: AgentConfig) -> tuple[Policy, SystemClock]:
    """The archive policy and the clock, from ``[archive]``."""
    section = config.archive
    policy = Policy(
        trust_anchors=load_trust_anchors(section.trust_anchor),
        limits=Limits(
            max_archive_bytes=section.max_archive_bytes,
            max_entry_bytes=section.max_entry_bytes,
            max_total_bytes=section.max_total_bytes,
            max_compression_ratio=section.max_compression_ratio,
        ),
        max_lifetime=dt.timedelta(seconds=section.max_lifetime_seconds),
        clock_skew=dt.timedelta(seconds=section.clock_skew_seconds),
    )
    return policy, SystemClock(section.build_time_floor, section.require_synchronized_clock)


def _install_crash_point(step: str) -> None:
    if step in ("staged", "activated", "recorded"):
        crash_point(f"install.{step}")


def _fleet_crash_point(step: str) -> None:
    if step in ("certificate", "registered", "installed"):
        crash_point(f"fleet.{step}")


@dataclass(slots=True)
class RunContext:
    """What one run knows as it goes."""

    record: RunRecord
    started_at: dt.datetime
    timings: Timings
    manifest: Manifest | None = None
    certificate: x509.Certificate | None = None
    time_check: str = "passed"
    #: The network step's NTP wait: None (none ran), True synchronised, False not.
    time_synced: bool | None = None
    ntp_waited: float = 0.0

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.record.run_id


class Provisioner:
    """Runs the steps of a provisioning run against this appliance's state.

    Args:
        config: the running configuration.
        store: the runs table.
        on_step: called with (run id, step) as each step starts (``STATUS=``, the LED).
        clock: the clock archives are checked against (default: the system clock under the
            ``[archive]`` policy; a test gives one whose trust it controls).
    """

    def __init__(
        self,
        config: AgentConfig,
        store: RunStore,
        *,
        on_step: Callable[[str, str], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._on_step = on_step or (lambda _run, _step: None)
        self._clock = clock
        self._aborts: dict[str, asyncio.Event] = {}
        self._abort_errors: dict[str, AgentError] = {}

    def _policy(self) -> tuple[Policy, Clock]:
        policy, clock = policy_from_config(self.config)
        return policy, self._clock or clock

    @property
    def state_dir(self) -> Path:
        """The agent's state directory."""
        return self.config.agent.state_dir

    # --- entry points --------------------------------------------------------------------

    async def run_archive(self, record: RunRecord, archive: Path) -> RunResult:
        """Run every step for the archive copied to ``archive``; never raises AgentError."""
        ctx = RunContext(record, dt.datetime.now(dt.UTC), Timings())
        return await self._guarded(ctx, lambda: self._from_archive(ctx, archive))

    def abort(self, run_id: str, error: AgentError) -> bool:
        """Stop run ``run_id`` at its next step boundary with ``error`` (its stick was pulled).

        The step in progress finishes first (an install, a network trial and the fleet
        exchange are each all or nothing), so the run ends with nothing half-applied; a wait
        for the clock ends at once. Returns False when the run is not working here.
        """
        event = self._aborts.get(run_id)
        if event is None:
            return False
        self._abort_errors.setdefault(run_id, error)
        event.set()
        return True

    def _check_abort(self, ctx: RunContext) -> None:
        error = self._abort_errors.get(ctx.run_id)
        if error is not None:
            raise error

    async def resume(self, record: RunRecord) -> RunResult:
        """Resume (or end cleanly) a run a crash interrupted."""
        started = dt.datetime.fromisoformat(record.started_at)
        ctx = RunContext(record, started, Timings())
        _log.warning("run %s was interrupted at step %s; resuming", record.run_id, record.step)
        return await self._guarded(ctx, lambda: self._resume(ctx))

    def fail(self, record: RunRecord, error: AgentError) -> RunResult:
        """End ``record`` at once with ``error`` (a refused stick, a second stick...)."""
        ctx = RunContext(record, dt.datetime.now(dt.UTC), Timings())
        return self._end(ctx, error)

    # --- the steps -----------------------------------------------------------------------

    async def _guarded(self, ctx: RunContext, body: Callable[[], Any]) -> RunResult:
        self._aborts[ctx.run_id] = asyncio.Event()
        try:
            await body()
        except AgentError as exc:
            return self._end(ctx, exc)
        except Exception as exc:  # noqa: BLE001 - the top of a run: it ends ERROR, logged
            _log.exception("run %s failed unexpectedly", ctx.run_id)
            return self._end(ctx, InternalError(f"unexpected failure: {type(exc).__name__}"))
        finally:
            self._aborts.pop(ctx.run_id, None)
            self._abort_errors.pop(ctx.run_id, None)
        return self._end(ctx, None)

    def _step(self, ctx: RunContext, step: str, **facts: str | None) -> None:
        self._check_abort(ctx)
        self.store.step(ctx.run_id, step, **facts)
        self._on_step(ctx.run_id, step)
        _log.info("run %s: %s", ctx.run_id, step)

    async def _from_archive(self, ctx: RunContext, archive: Path) -> None:
        policy, clock = self._policy()
        self._step(ctx, "validate")
        with ctx.timings.step("validate"):
            verified = await asyncio.to_thread(verify_archive, archive, policy, clock)
        ctx.manifest = verified.manifest
        ctx.certificate = verified.certificate
        ctx.time_check = verified.time_check
        self.store.note(
            ctx.run_id,
            device_name=verified.manifest.device_name,
            thing_name=verified.manifest.iot_thing_name,
            fingerprint=verified.fingerprint,
        )
        if ctx.time_check != "deferred":
            # too little of the window left to finish: refused before anything is installed
            self._left(ctx, "install")
        crash_point("validate.done")
        self._step(ctx, "install")
        with ctx.timings.step("install"):
            await asyncio.to_thread(
                install_archive, verified, self.state_dir, on_step=_install_crash_point
            )
        await self._after_install(ctx, network=True)

    async def _resume(self, ctx: RunContext) -> None:
        record = ctx.record
        if record.fingerprint is None or not self._installed(record.fingerprint):
            if record.fingerprint is not None:
                undone = discard_unrecorded(self.state_dir, record.fingerprint)
                if undone:
                    _log.warning("run %s: %s", ctx.run_id, "; ".join(undone))
            raise RunInterruptedError(
                f"the run stopped at step {record.step} before its credentials were installed; "
                "nothing was applied: insert the stick again"
            )
        finished = self._fleet_finished(record.fingerprint)
        if finished is not None:  # the crash came after the permanent set was in force
            self.store.note(ctx.run_id, thing_name=finished[0], endpoint=finished[1])
            _log.info("run %s: fleet provisioning had finished before the restart", ctx.run_id)
            return
        directory = self._credential_set(record.fingerprint)
        ctx.manifest = parse_manifest((directory / "manifest.json").read_bytes())
        ctx.certificate = x509.load_pem_x509_certificate(
            (directory / "certificate.pem").read_bytes()
        )
        ctx.time_check = self._ledger_time_check(record.fingerprint)
        if self._fleet_step(record.fingerprint) == "registered":
            # RegisterThing was answered: the claim has done its work, what is left of the
            # exchange is local, so neither the network nor the claim's window is looked at
            await self._after_install(ctx, network=False, time_check=False)
            return
        await self._after_install(ctx, network=record.step in ("validate", "install", "network"))

    async def _after_install(
        self, ctx: RunContext, *, network: bool, time_check: bool = True
    ) -> None:
        if network:
            self._step(ctx, "network")
            with ctx.timings.step("network"):
                await self._network(ctx)
        if time_check:
            self._step(ctx, "time-check")
            with ctx.timings.step("time-check"):
                await self._time_check(ctx)
        self._step(ctx, "fleet")
        with ctx.timings.step("fleet"):
            await self._fleet(ctx)

    def _left(self, ctx: RunContext, step: str) -> float:
        """Seconds left in the claim window for ``step``; refuse when none are."""
        assert ctx.certificate is not None  # noqa: S101 - set before any bounded step
        end = ctx.certificate.not_valid_after_utc
        left = (end - dt.datetime.now(dt.UTC)).total_seconds() - MARGIN_SECONDS
        if left <= 0:
            raise ClaimWindowError(
                f"the claim certificate's window ended at {end.isoformat()} before {step}; "
                "make a new archive"
            )
        return left

    async def _network(self, ctx: RunContext) -> None:
        assert ctx.manifest is not None  # noqa: S101 - set before this step
        payload = ctx.manifest.networking_configuration
        if payload is None:
            _log.info("the archive carries no network configuration; the network is unchanged")
            return
        budget = min(self.config.network.probe_timeout_seconds, self._left(ctx, "network"))
        from agent.provisioning.network import apply_payload  # noqa: PLC0415 - pyroute2 lazily

        outcome, sync = await asyncio.to_thread(apply_payload, self.config, payload, budget)
        crash_point("network.committed")
        _log.info("network: %s", outcome)
        if sync is not None:
            ctx.time_synced = sync.trusted
            ctx.ntp_waited = sync.waited_seconds
            _log.info(
                "NTP %s after %.1f s: %s",
                "synchronised" if sync.trusted else "not synchronised",
                sync.waited_seconds,
                sync.status.detail,
            )

    async def _time_check(self, ctx: RunContext) -> None:
        assert ctx.certificate is not None  # noqa: S101 - set before this step
        policy, clock = self._policy()
        if ctx.time_check == "deferred" and not ctx.time_synced:
            # the network step's bounded wait for NTP counts against the same budget
            total = self.config.ntp.sync_timeout_seconds
            budget = min(total - ctx.ntp_waited, self._left(ctx, "time-check"))
            deadline = time.monotonic() + max(budget, 0.0)
            while not clock.trusted():
                self._check_abort(ctx)
                if time.monotonic() >= deadline:
                    raise TimeSyncError(
                        f"the clock was not synchronised within {total:.0f} s; the claim "
                        "certificate's window cannot be checked",
                        reason="CLOCK_NOT_SYNCHRONIZED",
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._aborts[ctx.run_id].wait(), 0.25)
        check_window(ctx.certificate, clock.now(), policy.clock_skew)
        _log.info(
            "claim certificate window checked against the %s clock",
            "synchronised" if ctx.time_check == "deferred" else "trusted",
        )
        crash_point("time-check.done")

    async def _fleet(self, ctx: RunContext) -> None:
        from agent.mqtt.fleet import FleetOptions, provision  # noqa: PLC0415 - aiomqtt lazily

        section = self.config.mqtt
        assert ctx.certificate is not None  # noqa: S101 - set before the fleet step
        fingerprint = ctx.certificate.fingerprint(hashes.SHA256()).hex()
        if self._fleet_step(fingerprint) == "registered":
            # RegisterThing was answered before a restart: what is left is local (installing
            # the permanent set), so the claim's window no longer bounds it
            left = section.fleet_step_timeout_seconds
        else:
            left = self._left(ctx, "fleet")
        options = FleetOptions(
            mode=section.fleet_mode,
            key_type=section.fleet_key_type,
            payload_format=section.fleet_format,
            step_timeout=min(section.fleet_step_timeout_seconds, left),
            protocol=section.protocol,
        )
        try:
            result = await asyncio.wait_for(
                provision(self.state_dir, options, on_step=_fleet_crash_point), left
            )
        except TimeoutError:
            from agent.mqtt.fleet import FleetTimeoutError  # noqa: PLC0415

            raise FleetTimeoutError(
                f"fleet provisioning did not finish within {left:.0f} s"
            ) from None
        endpoint = section.endpoint or str(result.endpoint)
        self.store.note(ctx.run_id, thing_name=result.thing_name, endpoint=endpoint)
        _log.info(
            "fleet provisioning: thing %s, operational endpoint %s", result.thing_name, endpoint
        )

    # --- the end -------------------------------------------------------------------------

    def _end(self, ctx: RunContext, error: AgentError | None) -> RunResult:
        crash_point("report.outcome")
        record = self.store.get(ctx.run_id)
        if error is None:
            result = RunResult.succeeded(
                started_at=ctx.started_at,
                device_name=record.device_name or "",
                thing_name=record.thing_name or "",
                timings=ctx.timings,
                stick_id=record.stick_id,
            )
        else:
            if record.fingerprint is not None:
                restored = restore_identity(self.state_dir, record.fingerprint)
                if restored is not None:
                    _log.warning(
                        "run %s failed: the permanent set %s is in force again",
                        ctx.run_id,
                        restored,
                    )
            result = RunResult.failed(
                error,
                started_at=ctx.started_at,
                device_name=record.device_name,
                thing_name=record.thing_name,
                timings=ctx.timings,
                stick_id=record.stick_id,
            )
        self.store.finish(ctx.run_id, result.to_dict())
        log = _log.info if error is None else _log.error
        log("%s (run %s)", result.journal_line(), ctx.run_id)
        return result

    # --- the ledger ----------------------------------------------------------------------

    def _installed(self, fingerprint: str) -> bool:
        with open_store(self.state_dir) as store:
            return ledger_has(store, fingerprint)

    def _ledger_row(self, fingerprint: str) -> dict[str, Any]:
        with open_store(self.state_dir) as store:
            row = store.db.execute(
                "SELECT * FROM archive_ledger WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        if row is None:
            raise StateError("the run's archive is not in the ledger", reason="STATE_CORRUPT")
        return dict(row)

    def _credential_set(self, fingerprint: str) -> Path:
        name = str(self._ledger_row(fingerprint)["credential_set"])
        directory = self.state_dir / "credentials" / "sets" / name
        if not directory.is_dir():
            raise StateError(
                f"the credential set {name} of the interrupted run is gone",
                reason="STATE_CORRUPT",
            )
        return directory

    def _fleet_row(self, fingerprint: str) -> sqlite3.Row | None:
        """This claim's fleet exchange record, if one was started."""
        with open_store(self.state_dir) as store:
            table = store.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fleet_exchange'"
            ).fetchone()
            if table is None:
                return None
            row: sqlite3.Row | None = store.db.execute(
                "SELECT step, registered_thing, device_configuration FROM fleet_exchange"
                " WHERE claim_fingerprint = ?",
                (fingerprint,),
            ).fetchone()
            return row

    def _fleet_step(self, fingerprint: str) -> str | None:
        """The step this claim's fleet exchange reached (None: not started)."""
        row = self._fleet_row(fingerprint)
        return None if row is None else str(row["step"])

    def _fleet_finished(self, fingerprint: str) -> tuple[str, str] | None:
        """(thing, operational endpoint) when this claim's fleet exchange was completed."""
        record = self._fleet_row(fingerprint)
        if record is None or record["step"] != "installed":
            return None
        row = (record["registered_thing"], record["device_configuration"])
        configuration = json.loads(row[1] or "{}")
        directory = self._credential_set(fingerprint)
        manifest = json.loads((directory / "manifest.json").read_bytes())
        endpoint = (
            self.config.mqtt.endpoint
            or configuration.get("mqttEndpoint")
            or str(manifest["iotEndpoint"])
        )
        return str(row[0]), str(endpoint)

    def _ledger_time_check(self, fingerprint: str) -> str:
        return str(self._ledger_row(fingerprint)["time_check"])
