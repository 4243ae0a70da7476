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
from collections.abc import Callable, Mapping
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
    "MANAGED_THING_STATUS": Priority.HIGH,
    "COMMISSIONING_SCAN": Priority.LOW,
}

SCHEMA_FILES = (
    "event.schema.json",
    "status.schema.json",
    "error.schema.json",
    "describe-device.schema.json",
    "registration-task.schema.json",
    "fleet-provisioning.schema.json",
    "managed-thing.schema.json",
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
    h = os.urandom(16).hex()
    # version nibble 4; variant bits 10 (the nibble's two low random bits are kept)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"


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


def make_encoded(
    event_type: str, body: Mapping[str, Any], *, seq: int, thing_name: str
) -> tuple[dict[str, Any], bytes]:
    """:func:`make_event` and its :func:`encode`, byte for byte, with one JSON pass.

    Only ``body`` goes through the encoder: the envelope around it is a template whose
    variable parts are an id and a stamp made of ASCII letters, digits and ``-:.``, an
    integer, and the type and thing name (JSON-encoded once each, then cached).
    """
    event_id, stamp, content = new_event_id(), utc_timestamp(), dict(body)
    head = _HEADS.get((event_type, thing_name))
    if head is None:
        if len(_HEADS) > _HEADS_MAX:
            _HEADS.clear()
        head = (_ENCODER.encode(event_type), _ENCODER.encode(thing_name))
        _HEADS[(event_type, thing_name)] = head
    text = (
        f'{{"eventId":"{event_id}","seq":{seq:d},"time":"{stamp}","type":{head[0]},'
        f'"thingName":{head[1]},"body":{_encode_body(content)}}}'
    )
    event = {
        "eventId": event_id,
        "seq": seq,
        "time": stamp,
        "type": event_type,
        "thingName": thing_name,
        "body": content,
    }
    return event, text.encode()


def _make_body_encoder() -> Callable[[dict[str, Any]], str]:
    """``_ENCODER.encode`` for a dict, with the C encoder built once instead of per call.

    The same settings as :data:`_ENCODER` (compact, UTF-8, ``default`` raising TypeError);
    no circular-reference markers, so a body that contains itself fails with RecursionError.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the plain encoder
        return _ENCODER.encode
    encoder = make(
        None,
        _ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,  # noqa: FBT003 - sort_keys, positional in the C signature
        False,  # noqa: FBT003 - skipkeys
        True,  # noqa: FBT003 - allow_nan, as json.dumps
    )

    def encode_body(body: dict[str, Any]) -> str:
        return "".join(encoder(body, 0))

    return encode_body


_encode_body = _make_body_encoder()

#: (type, thing name) -> their JSON text; a handful of entries in practice.
_HEADS: dict[tuple[str, str], tuple[str, str]] = {}
_HEADS_MAX = 256


def load_schema(name: str) -> dict[str, Any]:
    """One of the shipped JSON Schemas (``event.schema.json`` ...)."""
    text = resources.files("agent.mqtt").joinpath("schemas", name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
