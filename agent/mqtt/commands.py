"""Commands to the appliance: ``<prefix>cmd/<Operation>`` → ``.../accepted`` | ``.../rejected``.

A request is a JSON object in the seed's request shape, optionally with ``ClientToken``
(1-64 of ``[a-zA-Z0-9=_-]``). A reply goes to ``<prefix>cmd/<Operation>/accepted`` with the
operation's response, or ``.../rejected`` with the error shape. With MQTT 5, a request's
response topic and correlation data are honoured: the reply goes to the response topic,
carries the correlation data and a user property ``outcome`` (``accepted``/``rejected``).

A malformed request is rejected before its operation runs (nothing is applied). A request
with a ``ClientToken`` that was seen before with the same operation and body gets the
recorded reply again without running anything; the same token with a different body is a
``ConflictException``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import (
    AgentError,
    ConflictError,
    FieldProblem,
    InternalError,
    InvalidRequestError,
    ResourceNotFoundError,
    ValidationError,
)
from agent.jsonutil import loads_strict
from agent.mqtt.client import MqttConnectionError, Session, make_properties
from agent.mqtt.events import utc_timestamp
from agent.store import Store

_log = logging.getLogger(__name__)

CLIENT_TOKEN_RE = re.compile(r"^[a-zA-Z0-9=_-]{1,64}$")
OPERATION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
MAX_REQUEST_BYTES = 128 * 1024
COMPONENT = "mqtt_commands"
MIGRATIONS = (
    """
    CREATE TABLE mqtt_commands (
        operation      TEXT NOT NULL,
        client_token   TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        outcome        TEXT NOT NULL,
        reply          TEXT NOT NULL,
        created_at     TEXT NOT NULL,
        PRIMARY KEY (operation, client_token)
    );
    """,
)

#: An operation: takes the validated request object, returns the accepted reply body.
Operation = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: where, what, and whether it was accepted."""

    topic: str
    outcome: str
    body: dict[str, Any]
    properties: Properties | None


class CommandServer:
    """Subscribes to the command topics of one appliance and answers them.

    Args:
        prefix: the appliance's topic prefix (``edge/<thingName>/``).
        operations: operation name → implementation (run in a worker thread).
        store: records ClientToken replies (idempotency across restarts).
        on_result: called with (operation, outcome, client token or None, reply body) after
            each reply.
    """

    def __init__(
        self,
        prefix: str,
        operations: Mapping[str, Operation],
        store: Store,
        *,
        on_result: Callable[[str, str, str | None, dict[str, Any]], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self.operations = dict(operations)
        self._store = store
        self._on_result = on_result
        self._lock = asyncio.Lock()
        store.migrate(COMPONENT, MIGRATIONS)

    async def attach(self, session: Session) -> None:
        """Subscribe on ``session`` (a :class:`~agent.mqtt.client.Link` hook)."""
        await session.subscribe(f"{self.prefix}cmd/+", lambda m: self._handle(session, m))

    async def _handle(self, session: Session, message: aiomqtt.Message) -> None:
        reply = await self.answer(
            message.topic.value,
            message.payload if isinstance(message.payload, bytes) else b"",
            message.properties if session.mqtt5 else None,
        )
        try:
            await session.publish(
                reply.topic, json.dumps(reply.body).encode(), properties=reply.properties
            )
        except MqttConnectionError as exc:
            _log.warning("could not send the reply on %s: %s", reply.topic, exc.message)

    async def answer(
        self, topic: str, payload: bytes, properties: Properties | None = None
    ) -> Reply:
        """Run one command; return its reply (also recorded for its ClientToken)."""
        operation = topic.removeprefix(f"{self.prefix}cmd/")
        token: str | None = None
        async with self._lock:  # one command at a time: replays see the first one's record
            try:
                request = _parse(operation, payload)
                token = request.get("ClientToken")
                digest = hashlib.sha256(payload).hexdigest()
                if token is not None:
                    recorded = await asyncio.to_thread(self._recorded, operation, token, digest)
                    if recorded is not None:
                        outcome, body = recorded
                        return self._reply(operation, outcome, body, properties, token)
                implementation = self._operation(operation)
                body = await asyncio.to_thread(implementation, request)
                outcome = "accepted"
            except AgentError as exc:
                body, outcome = exc.to_dict(), "rejected"
            except Exception:  # noqa: BLE001 - a command must always get a reply
                _log.exception("command %s failed", operation)
                body = InternalError(f"{operation} failed inside the agent").to_dict()
                outcome = "rejected"
            else:
                if token is not None:
                    body = {**body, "ClientToken": token}
                    await asyncio.to_thread(self._record, operation, token, digest, outcome, body)
            return self._reply(operation, outcome, body, properties, token)

    def _operation(self, operation: str) -> Operation:
        implementation = self.operations.get(operation)
        if implementation is None:
            raise ResourceNotFoundError(
                f"the appliance has no operation {operation!r}", reason="OPERATION_UNKNOWN"
            )
        return implementation

    def _reply(
        self,
        operation: str,
        outcome: str,
        body: dict[str, Any],
        request_properties: Properties | None,
        token: str | None,
    ) -> Reply:
        if self._on_result is not None:
            self._on_result(operation, outcome, token, body)
        topic = f"{self.prefix}cmd/{operation}/{outcome}"
        properties = None
        response_topic = getattr(request_properties, "ResponseTopic", None)
        correlation = getattr(request_properties, "CorrelationData", None)
        if request_properties is not None and (response_topic or correlation):
            properties = make_properties(PacketTypes.PUBLISH)
            if correlation:
                properties.CorrelationData = correlation
            properties.UserProperty = [("outcome", outcome)]
            if response_topic:
                topic = response_topic
        return Reply(topic, outcome, body, properties)

    def _recorded(
        self, operation: str, token: str, digest: str
    ) -> tuple[str, dict[str, Any]] | None:
        row = self._store.db.execute(
            "SELECT request_sha256, outcome, reply FROM mqtt_commands "
            "WHERE operation = ? AND client_token = ?",
            (operation, token),
        ).fetchone()
        if row is None:
            return None
        if row[0] != digest:
            raise ConflictError(
                f"ClientToken {token!r} was already used for a different {operation} request",
                reason="CLIENT_TOKEN_REUSED",
                fields=[FieldProblem("ClientToken", "already used with other parameters")],
            )
        reply: dict[str, Any] = json.loads(row[2])
        return str(row[1]), reply

    def _record(
        self, operation: str, token: str, digest: str, outcome: str, body: dict[str, Any]
    ) -> None:
        with self._store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO mqtt_commands(operation, client_token, request_sha256, "
                "outcome, reply, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (operation, token, digest, outcome, json.dumps(body), utc_timestamp()),
            )


def _parse(operation: str, payload: bytes) -> dict[str, Any]:
    if not OPERATION_RE.match(operation):
        raise InvalidRequestError(
            f"{operation!r} is not an operation name", reason="OPERATION_UNKNOWN"
        )
    if len(payload) > MAX_REQUEST_BYTES:
        raise ValidationError(
            f"the request is larger than {MAX_REQUEST_BYTES} bytes", reason="REQUEST_TOO_LARGE"
        )
    try:
        request = loads_strict(payload.decode("utf-8")) if payload.strip() else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(
            f"the request is not valid JSON: {exc}", reason="MALFORMED_JSON"
        ) from None
    if not isinstance(request, dict):
        raise InvalidRequestError("the request must be a JSON object", reason="MALFORMED_REQUEST")
    token = request.get("ClientToken")
    if token is not None and (not isinstance(token, str) or not CLIENT_TOKEN_RE.match(token)):
        raise ValidationError(
            "ClientToken must be 1-64 characters of [a-zA-Z0-9=_-]",
            reason="FIELD_VALIDATION_FAILED",
            fields=[FieldProblem("ClientToken", "must match [a-zA-Z0-9=_-]{1,64}")],
        )
    return request
