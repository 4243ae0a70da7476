"""Commissioning inside ``edge-agent run``: the managed things, the radios and the scanner.

:class:`CommissioningService` is what the daemon enters once. It opens the managed things
(``commissioning.database``, by default ``<agent.state_dir>/commissioning.db``) and, when
``[commissioning]`` names a radio backend (``zigbee_radio``, ``zwave_server_url``,
``wifi_ctrl_socket``) or a serial ``scanner``, starts those backends and the scanner in
the daemon's event loop. Every managed thing created through the local API (``POST
/managed-things``), the MQTT command ``CreateManagedThing`` or a scan is then commissioned
in the background, as ``edge-agent scan`` does; with nothing configured, things are only
recorded (as ``things create`` does). Each state change goes to the journal and, through
:class:`OutboxReporter`, to MQTT. Leaving the context stops the scanner, cancels the
commissionings in progress (their things become ``FAILED`` with ``AGENT_STOPPED``; they may
be tried again) and closes the radios.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from agent.commissioning.backend import Commissioner, RadioBackend
from agent.commissioning.errors import CommissioningUnavailableError
from agent.commissioning.notify import (
    CommissioningNotifier,
    FanOutNotifier,
    JournalNotifier,
    LedNotifier,
    ScanEvent,
    ThingEvent,
)
from agent.commissioning.reporting import OutboxReporter
from agent.commissioning.scanner import ScanHandler, SerialScanSource
from agent.commissioning.service import open_backends, scan_source
from agent.commissioning.things import CreateResult, ManagedThings
from agent.config import AgentConfig, CommissioningSection
from agent.errors import AgentError, StateError
from agent.fsutil import ensure_dir
from agent.store import Store
from agent.tasks import BackgroundTasks

if TYPE_CHECKING:
    from agent.mqtt.outbox import Outbox
    from agent.status.led import StatusLed

_log = logging.getLogger(__name__)

#: Starts the backends ``[commissioning]`` names; yields those that came up.
Radios = Callable[
    [CommissioningSection], contextlib.AbstractAsyncContextManager[list[RadioBackend]]
]

UP = "UP"
UNAVAILABLE = "UNAVAILABLE"
FAILED = "FAILED"
STOPPED = "STOPPED"


def configured_backends(section: CommissioningSection) -> list[str]:
    """The names of the backends ``[commissioning]`` asks for."""
    names = []
    if section.zigbee_radio != "none":
        names.append("zigbee")
    if section.zwave_server_url:
        names.append("zwave")
    if section.wifi_ctrl_socket:
        names.append("wifi-uplink")
        if section.dpp_ssid:
            names.append("wifi-dpp")
    return names


class _LedAnswers:
    """Scan answers and outcomes on the status LED the daemon has now (any thread)."""

    def __init__(self, led: Callable[[], StatusLed | None]) -> None:
        self._led = led
        self.loop: asyncio.AbstractEventLoop | None = None

    def _show(self, action: Callable[[LedNotifier], None]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def run() -> None:
            led = self._led()
            if led is not None:
                action(LedNotifier(led))

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            run()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(run)

    def thing_changed(self, event: ThingEvent) -> None:
        """ACTIVATED: steady on; FAILED: fast blink."""
        self._show(lambda notifier: notifier.thing_changed(event))

    def scan_answered(self, event: ScanEvent) -> None:
        """Accepted: slow blink; rejected: fast blink."""
        self._show(lambda notifier: notifier.scan_answered(event))


def _scanner_port(section: CommissioningSection) -> str:
    """The serial scanner the daemon reads (``stdin`` is for ``edge-agent scan`` only)."""
    return "" if section.scanner == "stdin" else section.scanner


class CommissioningService:
    """Managed things, radios and the serial scanner of the running agent.

    Args:
        config: the running configuration.
        outbox: the MQTT outbox now, or ``None`` (no operational link yet).
        radios: starts the configured backends (:func:`~agent.commissioning.service.open_backends`).
        led: the status LED now, or ``None`` (answers and outcomes are shown on it).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        outbox: Callable[[], Outbox | None] | None = None,
        radios: Radios = open_backends,
        led: Callable[[], StatusLed | None] | None = None,
    ) -> None:
        self.config = config
        self._radios = radios
        self._led = _LedAnswers(led or (lambda: None))
        section = config.commissioning
        self.wanted = configured_backends(section)
        self.scanner_port = _scanner_port(section)
        if section.scanner == "stdin":
            _log.warning("commissioning.scanner = stdin is read by `edge-agent scan` only")
        #: whether things are commissioned (a backend or a scanner is configured)
        self.enabled = bool(self.wanted or self.scanner_port)
        self.reporter = OutboxReporter(outbox or (lambda: None))
        self._things: ManagedThings | None = None
        self._store: Store | None = None
        self._backends: list[RadioBackend] = []
        self._commissioner: Commissioner | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks = BackgroundTasks(_log)
        self._source: SerialScanSource | None = None
        self._scanner_state: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: dict[str, Any] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._led.loop = self._loop
        section = self.config.commissioning
        try:
            database = self.config.commissioning_database()
            ensure_dir(database.parent)
            self._store = Store(database)
            self._things = self.open_things(self._store)
        except AgentError as exc:
            # The provisioning side must not go down with the managed things.
            _log.error("commissioning is unavailable: %s", exc.message)
            self._failure = exc.to_dict()["error"]
            if self._store is not None:
                self._store.close()
                self._store = None
            return self
        except BaseException:
            if self._store is not None:
                self._store.close()
            raise
        self._tasks.spawn(self.reporter.run(self._things), "commissioning-reporter")
        if self.wanted:
            self._backends = await self._stack.enter_async_context(self._radios(section))
        self._commissioner = Commissioner(
            self._things, self._backends, join_timeout=section.join_timeout_seconds
        )
        if self.scanner_port:
            source = scan_source(self.scanner_port, section)
            assert isinstance(source, SerialScanSource)  # noqa: S101 - stdin is excluded above
            self._source = source
            self._scanner_state = {"source": self.scanner_port, "state": UP}
            self._tasks.spawn(self._scan(source), "commissioning-scanner")
        _log.info(
            "commissioning: backends %s, scanner %s",
            ", ".join(b.name for b in self._backends) or "none",
            self.scanner_port or "none",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._source is not None:
            self._source.close()
        await self._tasks.cancel("commissioning-scanner")
        if self._scanner_state is not None:
            self._scanner_state["state"] = STOPPED
        if self._commissioner is not None:
            await self._commissioner.stop()
        await self._stack.aclose()
        await self._tasks.cancel()
        if self._store is not None:
            self._store.close()
        self._things = None
        self._commissioner = None
        self._loop = None
        self._led.loop = None

    def open_things(self, store: Store) -> ManagedThings:
        """Managed things on ``store`` that report their changes (any thread)."""
        return ManagedThings(
            store,
            region=self.config.registry.region,
            account=self.config.registry.account,
            notifier=self._notifier(),
            repair_zigbee_crc=self.config.commissioning.zigbee_crc == "repair",
        )

    def _notifier(self) -> CommissioningNotifier:
        return FanOutNotifier(JournalNotifier(), self.reporter, self._led)

    async def _scan(self, source: SerialScanSource) -> None:
        things, commissioner = self.things, self._commissioner
        handler = ScanHandler(
            things,
            self._notifier(),
            commissioner=commissioner,
            repair_zigbee_crc=self.config.commissioning.zigbee_crc == "repair",
        )
        try:
            async for text in source.scans():
                handler.handle(source.name, text)
        except AgentError as exc:
            _log.error("the QR scanner stopped: %s", exc.message)
            self._scanner_state = {
                "source": source.name,
                "state": FAILED,
                "reason": exc.reason,
                "message": exc.message,
            }
            return
        if self._scanner_state is not None:
            self._scanner_state["state"] = STOPPED

    # --- what the API and MQTT call -------------------------------------------------------

    def operations(self) -> dict[str, Any]:
        """The MQTT command operations on managed things (run in worker threads)."""
        from agent.mqtt.operations import managed_thing_operations  # noqa: PLC0415

        def open_things() -> tuple[ManagedThings, Store]:
            store = Store(self.config.commissioning_database())
            try:
                return self.open_things(store), store
            except BaseException:
                store.close()
                raise

        return managed_thing_operations(open_things, on_created=self.commission_soon)

    @property
    def things(self) -> ManagedThings:
        """The managed things (while running)."""
        if self._things is None:
            if self._failure is not None:
                raise CommissioningUnavailableError(
                    f"managed things are unavailable: {self._failure['message']}"
                )
            raise StateError("commissioning is not running", reason="AGENT_NOT_READY")
        return self._things

    def create(self, body: Any) -> CreateResult:
        """``CreateManagedThing`` in the event loop: create, then commission in the background."""
        result = self.things.create(body)
        if not result.replayed:
            self._commission(result.body["Id"])
        return result

    def commission_soon(self, thing_id: str) -> None:
        """Start commissioning a thing created in another thread (MQTT commands)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._commission, thing_id)

    def _commission(self, thing_id: str) -> None:
        if self.enabled and self._commissioner is not None:
            self._commissioner.start(thing_id)

    def status(self) -> dict[str, Any]:
        """The commissioning part of ``GET /status``."""
        up = {b.name for b in self._backends}
        things = self._things
        out: dict[str, Any] = {
            "enabled": self.enabled and self._failure is None,
            "backends": {name: UP if name in up else UNAVAILABLE for name in self.wanted},
            "scanner": dict(self._scanner_state) if self._scanner_state else None,
            "commissioning": self._commissioner.running if self._commissioner else 0,
            "things": things.counts() if things else {},
            "unreportedChanges": things.pending_count() if things else 0,
        }
        if self._failure is not None:
            out["error"] = self._failure
        return out
