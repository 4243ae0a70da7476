"""One interface for every state change and scan answer of commissioning.

The daemon passes a :class:`CommissioningNotifier`; :class:`JournalNotifier` writes each event
to the log (journald), :class:`FanOutNotifier` sends each to several notifiers (the journal
and the MQTT outbox), and :class:`RecordingNotifier` keeps them in memory. Events never carry
secrets: codes are described by their format and device identity only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from agent.mqtt.events import utc_timestamp
from agent.status.led import LedPattern, StatusLed

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ThingEvent:
    """A managed thing changed state."""

    thing_id: str
    arn: str
    status: str
    previous: str | None
    at: float
    reason: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form (``ThingId``, ``Status``... as the seed spells fields)."""
        return {
            "ThingId": self.thing_id,
            "Arn": self.arn,
            "ProvisioningStatus": self.status,
            "PreviousStatus": self.previous,
            "At": self.at,
            "Reason": self.reason,
            "Message": self.message,
        }

    def body(self) -> dict[str, Any]:
        """The body of its ``MANAGED_THING_STATUS`` MQTT event (camelCase, as events are)."""
        out: dict[str, Any] = {
            "thingId": self.thing_id,
            "arn": self.arn,
            "status": self.status,
            "previousStatus": self.previous,
            "at": utc_timestamp(dt.datetime.fromtimestamp(self.at, dt.UTC)),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass(frozen=True, slots=True)
class ScanEvent:
    """A scanned code was answered: accepted (with its format) or rejected (with a reason)."""

    source: str
    accepted: bool
    at: float
    format: str | None = None
    device: str | None = None
    thing_id: str | None = None
    reason: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        return asdict(self)


class CommissioningNotifier(Protocol):
    """Receives every commissioning event; implementations must not block for long."""

    def thing_changed(self, event: ThingEvent) -> None:
        """A managed thing moved to a new status."""

    def scan_answered(self, event: ScanEvent) -> None:
        """A scan was accepted or rejected."""


class JournalNotifier:
    """Writes events to the log, one line each (journald under systemd)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or _log

    def thing_changed(self, event: ThingEvent) -> None:
        """Log a state change."""
        self._log.info(
            "managed thing %s: %s -> %s%s",
            event.thing_id,
            event.previous or "-",
            event.status,
            f" ({event.reason}: {event.message})" if event.reason else "",
        )

    def scan_answered(self, event: ScanEvent) -> None:
        """Log a scan answer."""
        if event.accepted:
            self._log.info(
                "scan from %s accepted: %s %s", event.source, event.format, event.device or ""
            )
        else:
            self._log.warning(
                "scan from %s rejected: %s: %s", event.source, event.reason, event.message
            )


class PrintNotifier:
    """Prints each event as one JSON line on stdout (the ``scan`` command's answers)."""

    def thing_changed(self, event: ThingEvent) -> None:
        """Print a state change."""
        print(json.dumps({"ThingChanged": event.to_dict()}), flush=True)  # noqa: T201

    def scan_answered(self, event: ScanEvent) -> None:
        """Print a scan answer."""
        print(json.dumps({"Scan": event.to_dict()}), flush=True)  # noqa: T201


class LedNotifier:
    """Shows each answer on the status LED.

    A rejected scan or a failed thing blinks fast; an accepted scan blinks slowly while the
    device is commissioned; an activated thing is steady on.
    """

    def __init__(self, led: StatusLed) -> None:
        self._led = led

    def thing_changed(self, event: ThingEvent) -> None:
        """Success or failure of a thing."""
        if event.status == "ACTIVATED":
            self._led.show(LedPattern.SUCCESS)
        elif event.status == "FAILED":
            self._led.show(LedPattern.FAILURE)

    def scan_answered(self, event: ScanEvent) -> None:
        """Accepted (working) or rejected (failure)."""
        self._led.show(LedPattern.WORKING if event.accepted else LedPattern.FAILURE)


class RecordingNotifier:
    """Keeps every event in memory (tests, the CLI's summary)."""

    def __init__(self) -> None:
        self.things: list[ThingEvent] = []
        self.scans: list[ScanEvent] = []

    def thing_changed(self, event: ThingEvent) -> None:
        """Record a state change."""
        self.things.append(event)

    def scan_answered(self, event: ScanEvent) -> None:
        """Record a scan answer."""
        self.scans.append(event)


class FanOutNotifier:
    """Passes each event to several notifiers; one failing does not stop the others."""

    def __init__(self, *targets: CommissioningNotifier) -> None:
        self._targets = targets

    def thing_changed(self, event: ThingEvent) -> None:
        """Forward a state change."""
        for target in self._targets:
            try:
                target.thing_changed(event)
            except Exception:  # noqa: BLE001 - one broken sink must not lose the others
                _log.exception("a notifier failed on a thing event")

    def scan_answered(self, event: ScanEvent) -> None:
        """Forward a scan answer."""
        for target in self._targets:
            try:
                target.scan_answered(event)
            except Exception:  # noqa: BLE001 - one broken sink must not lose the others
                _log.exception("a notifier failed on a scan event")
