"""The event envelope and the event types the appliance reports on ``<prefix>events``.

Every event is one JSON object: ``eventId`` (UUID, the de-duplication key), ``seq`` (per
appliance, strictly increasing across restarts), ``time`` (RFC 3339 UTC), ``type``,
``thingName`` and a typed ``body``. The JSON Schemas in ``agent/mqtt/schemas/`` describe
every type; :data:`EVENT_TYPES` says which may be dropped when the outbox is full.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
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
)


def utc_timestamp(now: dt.datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``."""
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        "eventId": str(uuid.uuid4()),
        "seq": seq,
        "time": utc_timestamp(),
        "type": event_type,
        "thingName": thing_name,
        "body": dict(body),
    }


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def load_schema(name: str) -> dict[str, Any]:
    """One of the shipped JSON Schemas (``event.schema.json`` ...)."""
    text = resources.files("agent.mqtt").joinpath("schemas", name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
