"""The daemon's provisioning side: sticks in, runs, the LED, the stick, the reports.

:class:`ProvisioningService` is an async context the daemon enters once. Entering it runs
``net recover`` (a trial a crash left behind is reverted), resumes or ends the runs a crash
interrupted, opens the operational MQTT link when the appliance has its permanent identity,
and starts the stick source. One run at a time: a stick inserted while a run is working is
refused with ``RUN_IN_PROGRESS`` (its own result on that stick), as is ``POST /devices``.

Every step's event is queued durably in the runs table first
(:mod:`agent.provisioning.store`) and moved into the MQTT outbox whenever an operational
link exists; a run on an appliance without an identity yet keeps its events until the
first SUCCEEDED run brings one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent import osmem
from agent.archive.install import current_credentials, open_store
from agent.config import AgentConfig
from agent.errors import AgentError, ConflictError
from agent.netconf.boards import load_board
from agent.provisioning.run import Provisioner
from agent.provisioning.store import RunRecord, RunStore, new_run_id
from agent.status.led import LedPattern, NullLed, SysfsLed, open_led
from agent.status.result import DeviceStatus, RunResult
from agent.status.runlog import RunLog
from agent.tasks import BackgroundTasks
from agent.usb.base import StickEvent, StickInserted, StickRemoved, StickSource
from agent.usb.errors import MediaError, StickRemovedError
from agent.usb.factory import media_settings, open_source
from agent.usb.media import StickMedia

_log = logging.getLogger(__name__)


class RunInProgressError(ConflictError):
    """A run is working; one stick (or request) at a time."""

    default_reason = "RUN_IN_PROGRESS"


class ProvisioningService:
    """Sticks, runs and reports for the daemon.

    Args:
        config: the running configuration.
        on_status: called with a one-line description of what is happening (``STATUS=``).
        operations: the MQTT command operations the operational link answers.
        on_link: called each time the operational link (and its outbox) opens.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_status: Callable[[str], None] | None = None,
        operations: dict[str, Any] | None = None,
        on_link: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._operations = operations
        self._on_link = on_link
        self._on_status = on_status or (lambda _text: None)
        self.store = RunStore(config.agent.state_dir)
        self.provisioner = Provisioner(config, self.store, on_step=self._stepped)
        self.current: str | None = None
        self.network_recovery: dict[str, object] | None = None
        self._tasks = BackgroundTasks(_log)
        self._stack = contextlib.AsyncExitStack()
        self._led: SysfsLed | NullLed = NullLed()
        self._source: StickSource | None = None
        self._mqtt: Any = None
        self._mqtt_stack: contextlib.AsyncExitStack | None = None
        self._report_wake = asyncio.Event()
        #: Sticks pulled while their run was working (no write-back to them).
        self._pulled: set[str] = set()
        #: The stick of the latest run before this start (stick id → run id), until seen.
        self._still_in: dict[str, str] = {}
        self._ended = asyncio.Event()
        self._resumed: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        from agent.provisioning.network import recover  # noqa: PLC0415 - netconf lazily

        self.network_recovery = await asyncio.to_thread(recover, self.config)
        _log.info("net recover: %s", self.network_recovery.get("action"))
        board = load_board(self.config.network.board, self.config.network.boards_dir)
        self._led = await self._stack.enter_async_context(
            open_led(board.profile.led, self.config.status)
        )
        await self._open_link()
        self._tasks.spawn(self._reporter(), "provisioning-reporter")
        last = self.store.last()
        if last is not None and last.origin == "stick" and last.stick_id:
            # that stick may still be in: its first insertion is not a new stick
            self._still_in[last.stick_id] = last.run_id
        for record in self.store.unfinished():
            self._begin(record.run_id)
            self._resumed.add(record.run_id)
            self._tasks.spawn(self._resume(record), f"resume-{record.run_id}")
        source = open_source(self.config.usb, board.profile.usb)
        self._source = await self._stack.enter_async_context(source)
        self._tasks.spawn(self._sticks(self._source), "provisioning-sticks")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._tasks.cancel()
        await self._close_link()
        await self._stack.aclose()
        self.store.close()

    def reconfigure(self, config: AgentConfig) -> None:
        """A reloaded configuration: the next run uses it (the stick source stays as started)."""
        self.config = config
        self.provisioner.config = config

    @property
    def led(self) -> SysfsLed | NullLed:
        """The board's status LED (a NullLed on a board without one)."""
        return self._led

    @property
    def outbox(self) -> Any:
        """The operational link's outbox, or None while there is no link."""
        return self._mqtt.outbox if self._mqtt is not None else None

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The provisioning part of ``GET /status``."""
        current = self.store.find(self.current) if self.current else None
        last = self.store.last()
        return {
            "source": self.config.usb.source,
            "currentRun": current.to_json() if current else None,
            "lastRun": last.to_json() if last else None,
            "pendingReports": len(self.store.reports()),
            "operationalLink": self._mqtt is not None,
            "networkRecovery": self.network_recovery,
        }

    def device(self, run_id: str) -> RunRecord | None:
        """One run by id."""
        return self.store.find(run_id)

    async def wait_idle(self) -> None:
        """Return once no run is working."""
        await self._idle.wait()

    def _stepped(self, run_id: str, step: str) -> None:
        self._on_status(f"run {run_id}: {step}")
        self._report_wake.set()

    def _begin(self, run_id: str) -> None:
        self.current = run_id
        self._idle.clear()
        self._led.show(LedPattern.WORKING)

    def _done(self, result: RunResult) -> None:
        self.current = None
        self._idle.set()
        self._ended.set()
        ok = result.status is DeviceStatus.SUCCEEDED
        self._led.show(LedPattern.SUCCESS if ok else LedPattern.FAILURE)
        self._on_status(f"idle; last run {result.status}")
        self._report_wake.set()

    # --- runs ----------------------------------------------------------------------------

    def start_from_path(self, archive: Path) -> RunRecord:
        """``POST /devices``: a run from an archive file on this appliance."""
        if self.current is not None:
            raise RunInProgressError(f"run {self.current} is working; try again once it ends")
        record = self.store.create(new_run_id(), origin="api", stick_id=None)
        self._begin(record.run_id)
        self._tasks.spawn(self._api_run(record, archive), f"run-{record.run_id}")
        return record

    async def _api_run(self, record: RunRecord, archive: Path) -> None:
        result = await self.provisioner.run_archive(record, archive)
        await self._finished(result)

    async def _resume(self, record: RunRecord) -> None:
        result = await self.provisioner.resume(record)
        await self._finished(result)

    async def _sticks(self, source: StickSource) -> None:
        event: StickEvent
        async for event in source:
            if isinstance(event, StickInserted):
                _log.info("stick %s inserted (%s)", event.stick.stick_id, event.stick.node)
                earlier = self._still_in.pop(event.stick.stick_id, None)
                if earlier is not None:
                    self._tasks.spawn(self._still_present(earlier, event), f"still-in-{earlier}")
                    continue
                self._inserted(event)
            elif isinstance(event, StickRemoved):
                _log.info("stick %s removed", event.stick_id)
                self._stick_removed(event.stick_id)

    def _inserted(self, event: StickInserted) -> None:
        """A stick in: a run from it, or its refusal while another run works."""
        if self.current is not None:
            self._tasks.spawn(self._refuse(event), f"refuse-{event.stick.stick_id}")
            return
        record = self.store.create(new_run_id(), origin="stick", stick_id=event.stick.stick_id)
        self._begin(record.run_id)
        self._tasks.spawn(self._stick_run(record, event), f"run-{record.run_id}")

    def _stick_removed(self, stick_id: str) -> None:
        """The stick of the working run was pulled: the run stops at its next boundary."""
        record = self.store.find(self.current) if self.current else None
        if record is None or record.stick_id != stick_id or record.finished:
            return
        self._pulled.add(stick_id)
        error = StickRemovedError(
            f"the stick was pulled during step {record.step}; the run stopped there with "
            "nothing half-applied: insert a stick with a new archive"
            if record.step not in ("read-archive", "validate")
            else f"the stick was pulled during step {record.step}; nothing was applied: "
            "insert it again",
        )
        if self.provisioner.abort(record.run_id, error):
            _log.warning("run %s: its stick was pulled at step %s", record.run_id, record.step)

    async def _stick_run(self, record: RunRecord, event: StickInserted) -> None:
        with RunLog.capture() as run_log:
            try:
                async with self._media(event) as media:
                    try:
                        archive = await media.fetch_archive()
                    except AgentError as exc:
                        result = self.provisioner.fail(record, exc)
                    else:
                        result = await self.provisioner.run_archive(record, archive.path)
                    await self._write_back(media, result, run_log, event.stick.stick_id)
            except AgentError as exc:  # the stick could not even be opened
                result = self.provisioner.fail(record, exc)
        await self._finished(result)

    async def _still_present(self, run_id: str, event: StickInserted) -> None:
        """The stick of the run before this start, seen again at start.

        Holding the archive that run installed, it is still in, not a new stick: a run the
        restart resumed writes its result to it once it ends, a run that had ended leaves it
        as it is (its result is there already); pulling it and inserting it again runs it.
        Holding another archive (or none) it is a stick like any other.
        """
        while not (record := self.store.get(run_id)).finished:
            self._ended.clear()
            await self._ended.wait()
        if record.result is None:
            return
        digest = self._installed_archive(record)
        if digest is not None and await self._archive_digest(event) != digest:
            self._inserted(event)
            return
        if run_id not in self._resumed:
            _log.info(
                "stick %s is still in from run %s (%s): not run again; pull it and insert it "
                "again to run its archive",
                event.stick.stick_id,
                run_id,
                record.status,
            )
            return
        result = (json.dumps(record.result, indent=2, ensure_ascii=False) + "\n").encode()
        line = f"run {run_id} resumed after a restart: {record.status} {record.reason or ''}"
        with contextlib.suppress(AgentError):
            async with self._media(event) as media:
                if await media.write_back(result, (line.rstrip() + "\n").encode()):
                    _log.info("run %s: result written to its stick after the restart", run_id)

    def _media(self, event: StickInserted) -> StickMedia:
        """The stick's file system, mounted as the configuration says (an async context)."""
        return StickMedia(
            event.stick.node,
            media_settings(self.config.usb),
            runtime_dir=self.config.agent.runtime_dir,
        )

    def _installed_archive(self, record: RunRecord) -> str | None:
        """The SHA-256 of the archive ``record`` installed (None: it installed none)."""
        if record.fingerprint is None:
            return None
        with open_store(self.config.agent.state_dir) as store:
            row = store.db.execute(
                "SELECT archive_sha256 FROM archive_ledger WHERE fingerprint = ?",
                (record.fingerprint,),
            ).fetchone()
        return None if row is None else str(row[0])

    async def _archive_digest(self, event: StickInserted) -> str | None:
        """The SHA-256 of the archive on the stick (None: none can be read)."""
        try:
            async with self._media(event) as media:
                archive = await media.fetch_archive()
                return hashlib.sha256(archive.path.read_bytes()).hexdigest()
        except AgentError:
            return None

    async def _refuse(self, event: StickInserted) -> None:
        record = self.store.create(new_run_id(), origin="stick", stick_id=event.stick.stick_id)
        error = RunInProgressError(
            f"run {self.current} is working; insert this stick again once it ends"
        )
        with RunLog.capture() as run_log:
            result = self.provisioner.fail(record, error)
            with contextlib.suppress(AgentError):
                async with self._media(event) as media:
                    await self._write_back(media, result, run_log, event.stick.stick_id)
        self._report_wake.set()

    async def _write_back(
        self, media: StickMedia, result: RunResult, run_log: RunLog, stick_id: str
    ) -> None:
        if stick_id in self._pulled:
            self._pulled.discard(stick_id)
            _log.warning("the stick was pulled: the result is not written back (run record kept)")
            return
        try:
            await media.write_back(result.to_json(), run_log.as_bytes())
        except MediaError as exc:
            _log.warning("the result could not be written to the stick: %s", exc.message)

    async def _finished(self, result: RunResult) -> None:
        if result.status is DeviceStatus.SUCCEEDED:
            await self._close_link()
            await self._open_link()
        self._done(result)
        osmem.release()  # the idle service does not keep the run's peak resident

    # --- the operational link and the reports ----------------------------------------------

    def _identity(self) -> tuple[str, str] | None:
        """(thing name, endpoint) when the permanent identity is in force."""
        current = current_credentials(self.config.agent.state_dir)
        if current is None or "-fleet-" not in current.name:
            return None
        manifest = json.loads((current / "manifest.json").read_bytes())
        thing = str(manifest["iotThingName"])
        endpoint = self.config.mqtt.endpoint or self.store.operational_endpoint()
        return (thing, endpoint) if endpoint else None

    async def _open_link(self) -> None:
        identity = self._identity()
        if identity is None:
            return
        from agent.mqtt.agent_link import ApplianceMqtt  # noqa: PLC0415 - aiomqtt lazily
        from agent.mqtt.client import Endpoint  # noqa: PLC0415

        stack = contextlib.AsyncExitStack()
        try:
            self._mqtt = await stack.enter_async_context(
                ApplianceMqtt(
                    self.config.agent.state_dir,
                    self.config.mqtt,
                    endpoint=Endpoint.parse(identity[1]),
                    operations=self._operations,
                )
            )
        except AgentError as exc:
            _log.warning("the operational MQTT link cannot start: %s", exc.message)
            await stack.aclose()
            return
        self._mqtt_stack = stack
        _log.info("operational MQTT link for %s to %s", identity[0], identity[1])
        self._report_wake.set()
        if self._on_link is not None:
            self._on_link()

    async def _close_link(self) -> None:
        if self._mqtt_stack is not None:
            await self._mqtt_stack.aclose()
        self._mqtt_stack = None
        self._mqtt = None

    async def _reporter(self) -> None:
        """Move queued run events into the outbox whenever a link exists."""
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            if self._mqtt is None:
                continue
            outbox = self._mqtt.require_outbox()
            while reports := self.store.reports():
                for seq, event_type, body in reports:
                    await outbox.publish(event_type, body)
                    self.store.reported([seq])
