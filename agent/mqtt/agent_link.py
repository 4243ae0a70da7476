"""Wiring for one appliance: its topics, the operational link, the outbox and the commands.

:func:`settings_for` turns the credential set in force and the ``[mqtt]`` configuration into
connection settings; :class:`ApplianceMqtt` runs the link with the outbox and the command
server attached (the daemon's MQTT side; the CLI uses it after fleet provisioning).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.archive.install import current_credentials
from agent.config import MqttSection
from agent.errors import StateError
from agent.mqtt.client import Backoff, Endpoint, Identity, Link, Settings
from agent.mqtt.commands import CommandServer, Operation
from agent.mqtt.outbox import Limits, Outbox, open_outbox
from agent.store import Store

_log = logging.getLogger(__name__)


def _log_failure(future: asyncio.Future[dict[str, Any]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.warning("a COMMAND_RESULT event was not recorded: %s", future.exception())


def topic_prefix(section: MqttSection, thing_name: str) -> str:
    """``edge/<thingName>/`` (or the configured prefix), always ending in ``/``."""
    prefix = section.topic_prefix.replace("{thingName}", thing_name)
    return prefix if prefix.endswith("/") else f"{prefix}/"


def settings_for(
    state_dir: Path, section: MqttSection, *, endpoint: Endpoint | None = None
) -> tuple[Settings, str]:
    """Connection settings for the credential set in force, and the thing name."""
    current = current_credentials(state_dir)
    if current is None:
        raise StateError("no credentials are installed", reason="NOT_PROVISIONED")
    manifest = json.loads((current / "manifest.json").read_bytes())
    thing = str(manifest["iotThingName"])
    where = endpoint or Endpoint.parse(section.endpoint or str(manifest["iotEndpoint"]))
    settings = Settings(
        endpoint=where,
        identity=Identity.from_credential_set(current),
        client_id=thing,
        protocol=section.protocol,
        keepalive=section.keepalive_seconds,
        connect_timeout=section.connect_timeout_seconds,
        inflight_window=section.inflight_window,
        status_topic=f"{topic_prefix(section, thing)}status",
        backoff=Backoff(section.reconnect_initial_seconds, section.reconnect_max_seconds),
    )
    return settings, thing


class ApplianceMqtt:
    """The operational MQTT side: link + outbox + commands, as one async context."""

    def __init__(
        self,
        state_dir: Path,
        section: MqttSection,
        *,
        endpoint: Endpoint | None = None,
        operations: dict[str, Operation] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.section = section
        self.settings, self.thing_name = settings_for(state_dir, section, endpoint=endpoint)
        self.prefix = topic_prefix(section, self.thing_name)
        self._operations = operations
        self.link = Link(self.settings)
        self.outbox: Outbox | None = None
        self.commands: CommandServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._command_store: Store | None = None

    async def __aenter__(self) -> Self:
        self.outbox = await open_outbox(
            self.state_dir,
            thing_name=self.thing_name,
            topic=f"{self.prefix}events",
            limits=Limits(self.section.outbox_max_events, self.section.outbox_max_bytes),
            window=self.section.inflight_window,
        )
        self.link.add_hook(self.outbox.attach)
        if self._operations is not None:
            self._command_store = Store(self.state_dir / "agent.db")
            self.commands = CommandServer(
                self.prefix, self._operations, self._command_store, on_result=self._report
            )
            self.link.add_hook(self.commands.attach)
        self._task = asyncio.create_task(self.link.run(), name="mqtt-link")
        return self

    def _report(
        self, operation: str, outcome: str, token: str | None, body: dict[str, Any]
    ) -> None:
        """A ``COMMAND_RESULT`` event for every reply."""
        if self.outbox is None:
            return
        event: dict[str, Any] = {"operation": operation, "outcome": outcome}
        if token is not None:
            event["clientToken"] = token
        if outcome == "rejected":
            event["reason"] = str(body.get("error", {}).get("reason", "INTERNAL_ERROR"))
        future = self.outbox.submit("COMMAND_RESULT", event)
        future.add_done_callback(_log_failure)

    def require_outbox(self) -> Outbox:
        """The outbox (inside the context)."""
        if self.outbox is None:
            raise StateError("the MQTT side is not running", reason="OUTBOX_CLOSED")
        return self.outbox

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.outbox is not None:
            await self.outbox.close()
        if self._command_store is not None:
            self._command_store.close()
