"""``edge-agent/result.json``: the outcome of a run, written back to the stick.

The document follows ``docs/schemas/result.schema.json``. Its ``status`` takes the seed's
DeviceStatus values; a finished run is ``SUCCEEDED``, ``FAILED`` (the input was refused: a
4xx error) or ``ERROR`` (the appliance could not finish: a 5xx error), and ``reason`` is the
error's stable reason. It never carries key material: messages come from agent errors, which
are written without secrets.

Use::

    timings = Timings()
    with timings.step("validate"):
        ...
    result = RunResult.failed(exc, started_at=start, device_name=name, timings=timings)
    await media.write_back(result.to_json(), run_log.as_bytes())
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.errors import AgentError

SCHEMA_VERSION = 1
_CLIENT_ERROR = range(400, 500)


class DeviceStatus(enum.StrEnum):
    """The seed's device status values a run goes through."""

    AWAITING_PROVISIONING = "AWAITING_PROVISIONING"
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ERROR = "ERROR"


def status_for_error(exc: AgentError) -> DeviceStatus:
    """FAILED when the input was refused (4xx), ERROR when the appliance failed (5xx)."""
    return DeviceStatus.FAILED if exc.status_code in _CLIENT_ERROR else DeviceStatus.ERROR


class Timings:
    """Seconds spent in each step of a run (monotonic clock), in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block; a step run twice adds up."""
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 6)

    def total(self) -> float:
        """All steps together."""
        return round(sum(self.seconds.values()), 6)


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run's outcome, as written to ``result.json``."""

    status: DeviceStatus
    started_at: dt.datetime
    finished_at: dt.datetime
    reason: str | None = None
    message: str = ""
    device_name: str | None = None
    thing_name: str | None = None
    stick_id: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    error: Mapping[str, Any] | None = None
    agent_version: str = __version__

    @classmethod
    def succeeded(
        cls,
        *,
        started_at: dt.datetime,
        device_name: str,
        thing_name: str,
        timings: Timings | None = None,
        stick_id: str | None = None,
        finished_at: dt.datetime | None = None,
    ) -> RunResult:
        """A run that ended SUCCEEDED."""
        return cls(
            status=DeviceStatus.SUCCEEDED,
            started_at=started_at,
            finished_at=finished_at or dt.datetime.now(dt.UTC),
            message=f"{device_name} is provisioned as {thing_name}",
            device_name=device_name,
            thing_name=thing_name,
            stick_id=stick_id,
            timings=dict(timings.seconds) if timings else {},
        )

    @classmethod
    def failed(
        cls,
        exc: AgentError,
        *,
        started_at: dt.datetime,
        device_name: str | None = None,
        thing_name: str | None = None,
        timings: Timings | None = None,
        stick_id: str | None = None,
        finished_at: dt.datetime | None = None,
    ) -> RunResult:
        """A run that ended FAILED or ERROR with ``exc``."""
        return cls(
            status=status_for_error(exc),
            started_at=started_at,
            finished_at=finished_at or dt.datetime.now(dt.UTC),
            reason=exc.reason,
            message=exc.message,
            device_name=device_name,
            thing_name=thing_name,
            stick_id=stick_id,
            timings=dict(timings.seconds) if timings else {},
            error=exc.to_dict()["error"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (see ``docs/schemas/result.schema.json``)."""
        body: dict[str, Any] = {
            "schemaVersion": SCHEMA_VERSION,
            "status": str(self.status),
            "reason": self.reason,
            "message": self.message,
            "deviceName": self.device_name,
            "thingName": self.thing_name,
            "stickId": self.stick_id,
            "startedAt": _rfc3339(self.started_at),
            "finishedAt": _rfc3339(self.finished_at),
            "durationSeconds": round(
                max(0.0, (self.finished_at - self.started_at).total_seconds()), 3
            ),
            "timings": dict(self.timings),
            "agentVersion": self.agent_version,
        }
        if self.error is not None:
            body["error"] = dict(self.error)
        return body

    def to_json(self) -> bytes:
        """UTF-8 JSON with a final newline, as written to the stick."""
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode()

    def journal_line(self) -> str:
        """The one line the journal gets for the run."""
        who = self.device_name or "unknown device"
        if self.status is DeviceStatus.SUCCEEDED:
            return f"provisioning {who}: SUCCEEDED as {self.thing_name}"
        return f"provisioning {who}: {self.status} {self.reason}: {self.message}"
