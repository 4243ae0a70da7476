"""The event envelope and the event types the appliance reports on ``<prefix>events``.

Every event is one JSON object: ``eventId`` (UUID, the de-duplication key), ``seq`` (per
appliance, strictly increasing across restarts), ``time`` (RFC 3339 UTC), ``type``,
``thingName`` and a typed ``body``. The JSON Schemas in ``agent/mqtt/schemas/`` describe
every type; :data:`EVENT_TYPES` says which may be dropped when the outbox is full.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Mapping
from enum import IntEnum
from importlib import resources
from typing import Any

from agent.errors import ValidationError


class Priority(IntEnum):
    """Low-priority events may be dropped (oldest first) when the outbox is full."""

    LOW = 0
    HIGH = 1


#: Event type → priority. A run's outcome and the outbox's own alarms are never dropped.
EVENT_TYPES: dict[str, Priority] = {
    "AGENT_STARTED": Priority.LOW,
    "LOG": Priority.LOW,
    "RUN_STATUS": Priority.LOW,
    "RUN_OUTCOME": Priority.HIGH,
    "FLEET_PROVISIONED": Priority.HIGH,
    "COMMAND_RESULT": Priority.LOW,
    "OUTBOX_HIGH_WATER": Priority.HIGH,
    "OUTBOX_DROPPED": Priority.HIGH,
}

SCHEMA_FILES = (
    "event.schema.json",
    "status.schema.json",
    "error.schema.json",
    "describe-device.schema.json",
    "registration-task.schema.json",
    "fleet-provisioning.schema.json",
)


def utc_timestamp(now: dt.datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``."""
    if now is not None:
        return now.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    moment = time.time()
    second = int(moment)
    prefix = _SECOND_CACHE.get(second)
    if prefix is None:  # one strftime per second; events are stamped many times a second
        _SECOND_CACHE.clear()
        prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _SECOND_CACHE[second] = prefix
    return f"{prefix}.{int((moment - second) * 1000):03d}Z"


_SECOND_CACHE: dict[int, str] = {}


def new_event_id() -> str:
    """A random (version 4) UUID in its canonical text form."""
    value = int.from_bytes(os.urandom(16), "big")
    value = (value & ~(0xF000 << 64) | (4 << 76)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def priority_of(event_type: str) -> Priority:
    """The priority of a known event type."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise ValidationError(
            f"unknown event type {event_type!r}", reason="EVENT_TYPE_UNKNOWN"
        ) from None


def make_event(
    event_type: str, body: Mapping[str, Any], *, seq: int, thing_name: str
) -> dict[str, Any]:
    """Build one event envelope."""
    return {
        "eventId": new_event_id(),
        "seq": seq,
        "time": utc_timestamp(),
        "type": event_type,
        "thingName": thing_name,
        "body": dict(body),
    }


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return _ENCODER.encode(event).encode()


def load_schema(name: str) -> dict[str, Any]:
    """One of the shipped JSON Schemas (``event.schema.json`` ...)."""
    text = resources.files("agent.mqtt").joinpath("schemas", name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
