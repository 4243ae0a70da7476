"""Commissioning over MQTT: every managed-thing change and scan answer through the outbox.

:class:`OutboxReporter` is the :class:`~agent.commissioning.notify.CommissioningNotifier` of
the daemon's MQTT side. A state change is already queued, in the transaction that made it,
in the ``managed_thing_changes`` table (:mod:`agent.commissioning.things`); the reporter
moves those rows into the durable outbox (:mod:`agent.mqtt.outbox`) as
``MANAGED_THING_STATUS`` events, oldest first, and deletes each row once the outbox has
committed its event. So no change is lost to a crash, a broker outage or an appliance that
has no operational link yet: the rows wait, and go out when the next change, the next
start or :meth:`OutboxReporter.wake` (the daemon calls it when the link opens) finds an
outbox. A crash between the outbox's commit
and the row's deletion sends that change again (its ``changeId`` is the same, its
``eventId`` new).

Scan answers (``COMMISSIONING_SCAN``, low priority) go to the outbox directly when there is
one; they are feedback, not state, and a scan without a link is only in the journal.

Events carry no secrets: a thing's id, ARN, status and failure reason; a scan's format and
non-secret device name (IEEE, SSID, DPP key hash, the DSK with its PIN masked).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.commissioning.notify import ScanEvent, ThingEvent
from agent.errors import AgentError
from agent.mqtt.events import utc_timestamp

if TYPE_CHECKING:
    from agent.commissioning.things import ManagedThings
    from agent.mqtt.outbox import Outbox

_log = logging.getLogger(__name__)

STATUS_EVENT = "MANAGED_THING_STATUS"
SCAN_EVENT = "COMMISSIONING_SCAN"


def scan_body(event: ScanEvent) -> dict[str, Any]:
    """The body of a ``COMMISSIONING_SCAN`` event."""
    body: dict[str, Any] = {
        "source": event.source,
        "accepted": event.accepted,
        "at": utc_timestamp(dt.datetime.fromtimestamp(event.at, dt.UTC)),
    }
    optional = {
        "format": event.format,
        "device": event.device,
        "thingId": event.thing_id,
        "reason": event.reason,
        "message": event.message,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


class OutboxReporter:
    """Moves recorded changes into the outbox; sends scan answers.

    Args:
        outbox: the outbox now (``None`` while the appliance has no operational link).

    The notifier methods may be called from any thread; the reporting itself runs in the
    event loop that :meth:`run` was started in.
    """

    def __init__(self, outbox: Callable[[], Outbox | None]) -> None:
        self._outbox = outbox
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._wake.set()  # rows left by an earlier run or by the CLI go out at start
        self._loop_thread: int | None = None
        self.reported = 0

    # --- CommissioningNotifier -------------------------------------------------------------

    def thing_changed(self, event: ThingEvent) -> None:
        """The change is in the table already: wake the mover."""
        del event
        self.wake()

    def scan_answered(self, event: ScanEvent) -> None:
        """Send the answer if there is an outbox now."""
        self._call(lambda: self._send_scan(event))

    # --- running ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for an outbox and unreported changes now (thread-safe)."""
        self._call(self._wake.set)

    def _call(self, action: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not running: the rows wait for the next start
        if threading.get_ident() == self._loop_thread:
            action()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(action)

    def _send_scan(self, event: ScanEvent) -> None:
        outbox = self._outbox()
        if outbox is None:
            return
        try:
            future = outbox.submit(SCAN_EVENT, scan_body(event))
        except AgentError as exc:
            _log.warning("a scan answer was not reported: %s", exc.message)
            return
        future.add_done_callback(_log_failure)

    async def run(self, things: ManagedThings) -> None:
        """Report the ``managed_thing_changes`` rows of ``things`` until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._move(things)
        finally:
            self._loop = None

    async def _move(self, things: ManagedThings) -> None:
        while (outbox := self._outbox()) is not None:
            changes = things.pending_changes()
            if not changes:
                return
            done: list[int] = []
            try:
                for change_id, body in changes:
                    await outbox.publish(STATUS_EVENT, {**body, "changeId": change_id})
                    done.append(change_id)
            except AgentError as exc:  # the outbox closed or could not commit: next wake
                _log.warning("managed-thing changes wait for the outbox: %s", exc.message)
                return
            finally:
                if done:
                    things.changes_reported(done)
                    self.reported += len(done)


def _log_failure(future: asyncio.Future[dict[str, Any]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.warning("a scan answer was not recorded: %s", future.exception())
