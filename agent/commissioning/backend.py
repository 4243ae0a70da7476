"""The interface every radio backend implements, and the commissioner that drives them.

A backend takes one decoded code and brings its device onto the network, reporting
through a :class:`JoinProgress` when the device is seen (``DISCOVERED``) and when it is set
up (``ACTIVATED``). It raises a :class:`~agent.commissioning.errors.CommissioningError` on
failure; the :class:`Commissioner` records that failure on the managed thing (``FAILED``
with the error's reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.commissioning.errors import (
    CommissioningError,
    RadioUnavailableError,
    UnsupportedDeviceError,
)
from agent.commissioning.qr import QrPayload
from agent.commissioning.things import (
    ACTIVATED,
    DISCOVERED,
    FAILED,
    PRE_ASSOCIATED,
    ManagedThings,
)
from agent.errors import AgentError

_log = logging.getLogger(__name__)


class JoinProgress(Protocol):
    """What a backend reports while its device joins."""

    def discovered(self, detail: dict[str, Any]) -> None:
        """The device was seen on the network (joined, node added)."""

    def activated(self, detail: dict[str, Any]) -> None:
        """The device is set up (interviewed, configured)."""


class RadioBackend(Protocol):
    """One radio: Zigbee, Z-Wave or Wi-Fi."""

    name: str

    def accepts(self, payload: QrPayload) -> bool:
        """Whether this backend commissions devices with this kind of code."""

    async def commission(
        self, payload: QrPayload, progress: JoinProgress, *, within: float
    ) -> None:
        """Bring the device on the network; return once it is activated.

        Raises:
            CommissioningError: the radio refused, failed or the device did not join in time.
        """


@dataclass
class _ThingProgress:
    things: ManagedThings
    thing_id: str
    details: list[dict[str, Any]] = field(default_factory=list)
    state: str = PRE_ASSOCIATED

    def discovered(self, detail: dict[str, Any]) -> None:
        if self.state == PRE_ASSOCIATED:
            if detail.get("lowSecurity"):
                self.things.transition(
                    self.thing_id,
                    DISCOVERED,
                    reason="LOW_SECURITY_INCLUSION",
                    message="the device was included with less security than it requested",
                )
            else:
                self.things.transition(self.thing_id, DISCOVERED)
            self.state = DISCOVERED
        self.details.append(detail)

    def activated(self, detail: dict[str, Any]) -> None:
        self.discovered(detail)
        if self.state == DISCOVERED:
            self.things.transition(self.thing_id, ACTIVATED)
            self.state = ACTIVATED


class Commissioner:
    """Chooses the backend for a managed thing's code and records every step on the thing."""

    def __init__(
        self,
        things: ManagedThings,
        backends: Sequence[RadioBackend],
        *,
        join_timeout: float,
    ) -> None:
        self._things = things
        self._backends = tuple(backends)
        self._timeout = join_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def backend_for(self, payload: QrPayload) -> RadioBackend:
        """The backend for this code.

        Raises:
            UnsupportedDeviceError: no radio commissions this kind of code (Matter, for now).
            RadioUnavailableError: the right radio is not configured.
        """
        if payload.authentication_material_type is None:
            raise UnsupportedDeviceError(
                f"{payload.format} devices are not supported yet", reason="FORMAT_NOT_SUPPORTED"
            )
        for backend in self._backends:
            if backend.accepts(payload):
                return backend
        raise RadioUnavailableError(
            f"no radio backend is configured for {payload.format} codes",
            reason="BACKEND_NOT_CONFIGURED",
        )

    async def commission(self, thing_id: str) -> str:
        """Commission one thing; return its final status (``ACTIVATED`` or ``FAILED``)."""
        payload = self._things.payload(thing_id)
        try:
            backend = self.backend_for(payload)
        except AgentError as exc:
            self._things.transition(thing_id, FAILED, reason=exc.reason, message=exc.message)
            return FAILED
        self._things.transition(thing_id, PRE_ASSOCIATED)
        progress = _ThingProgress(self._things, thing_id)
        try:
            await backend.commission(payload, progress, within=self._timeout)
        except CommissioningError as exc:
            _log.warning("commissioning %s on %s failed: %s", thing_id, backend.name, exc.reason)
            self._things.transition(thing_id, FAILED, reason=exc.reason, message=exc.message)
            return FAILED
        except AgentError as exc:
            self._things.transition(thing_id, FAILED, reason=exc.reason, message=exc.message)
            return FAILED
        if progress.state != ACTIVATED:
            progress.activated({"backend": backend.name})
        return ACTIVATED

    def start(self, thing_id: str) -> asyncio.Task[None]:
        """Commission in the background (the task is kept until it ends)."""

        async def run() -> None:
            try:
                await self.commission(thing_id)
            except asyncio.CancelledError:
                self._interrupted(thing_id)
                raise
            except Exception:  # noqa: BLE001 - top of a background job: log and report
                _log.exception("commissioning %s crashed", thing_id)
                try:
                    self._things.transition(
                        thing_id, FAILED, reason="INTERNAL_ERROR", message="unexpected failure"
                    )
                except AgentError:
                    _log.exception("could not record the failure of %s", thing_id)

        task = asyncio.get_running_loop().create_task(run(), name=f"commission-{thing_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _interrupted(self, thing_id: str) -> None:
        try:
            status = self._things.status(thing_id)
            if status not in (ACTIVATED, FAILED):
                self._things.transition(
                    thing_id,
                    FAILED,
                    reason="AGENT_STOPPED",
                    message="the agent stopped while the device was being commissioned",
                )
        except AgentError:
            _log.exception("could not record the interruption of %s", thing_id)

    async def stop(self) -> None:
        """Cancel every background commissioning (each unfinished thing: ``AGENT_STOPPED``)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> int:
        """Commissionings in progress."""
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every background commissioning to end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
