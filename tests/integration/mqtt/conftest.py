"""Fixtures of the MQTT tests: a real mosquitto (mutual TLS, ACL) and schema validation."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from agent.mqtt.events import SCHEMA_FILES, load_schema
from tests.helpers.mosquitto import broker, pki

__all__ = ["broker", "pki", "validate"]


def _registry() -> Registry[Any]:
    resources = []
    for name in SCHEMA_FILES:
        schema = load_schema(name)
        resources.append((schema["$id"], Resource.from_contents(schema)))
        resources.append((name, Resource.from_contents(schema)))
    return Registry().with_resources(resources)


_REGISTRY = _registry()


def validate(schema_name: str, payload: bytes | dict[str, Any], part: str = "") -> dict[str, Any]:
    """Validate one payload against a shipped schema (or one of its ``$defs``)."""
    data: dict[str, Any] = json.loads(payload) if isinstance(payload, bytes) else payload
    schema = load_schema(schema_name)
    if part:
        schema = {"$ref": f"{schema['$id']}#/$defs/{part}"}
    jsonschema.Draft202012Validator(schema, registry=_REGISTRY).validate(data)
    return data


def unique_events(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Events validated against the schema, de-duplicated by eventId (first occurrence kept)."""
    seen: set[str] = set()
    out = []
    for payload in payloads:
        event = validate("event.schema.json", payload)
        if event["eventId"] not in seen:
            seen.add(event["eventId"])
            out.append(event)
    return out


@pytest.fixture(autouse=True)
def _schemas_are_valid() -> None:
    for name in SCHEMA_FILES:
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
