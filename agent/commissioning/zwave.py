"""Z-Wave commissioning through a Z-Wave JS server (zwave-js-server-python 0.56, schema 35).

A SmartStart code (version 1) becomes a provisioning-list entry: the device includes
itself when powered, and the ``node added`` event whose provisioning entry has our DSK
makes the thing ``DISCOVERED``; its ``ready`` (interview done) makes it ``ACTIVATED``. An S2
code (version 0) or a DSK-only code starts an S2 inclusion with the DSK. An inclusion with
less security than requested is flagged (``lowSecurity``) on the thing's event. On failure
the entry is removed again (or the inclusion stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Self

import aiohttp
from zwave_js_server.client import Client
from zwave_js_server.const import InclusionStrategy, SecurityClass
from zwave_js_server.exceptions import BaseZwaveJSServerError
from zwave_js_server.model.controller import Controller
from zwave_js_server.model.controller.inclusion_and_provisioning import ProvisioningEntry

from agent.commissioning.backend import JoinProgress
from agent.commissioning.errors import (
    CommissioningTimeoutError,
    RadioError,
    RadioUnavailableError,
)
from agent.commissioning.qr import QrPayload

_log = logging.getLogger(__name__)
_PRODUCT_FIELDS = ("manufacturerId", "productType", "productId", "applicationVersion")


def provisioning_entry(payload: QrPayload) -> ProvisioningEntry:
    """The provisioning-list entry for a SmartStart code."""
    classes = [SecurityClass(c) for c in payload.fields["requestedSecurityClasses"]]
    extra = {k: payload.fields[k] for k in _PRODUCT_FIELDS if k in payload.fields}
    return ProvisioningEntry(
        dsk=payload.fields["dsk"],
        security_classes=classes,
        requested_security_classes=classes,
        additional_properties=extra,
    )


def _radio_error(action: str, exc: Exception) -> RadioError:
    return RadioError(f"the Z-Wave JS server failed to {action}: {type(exc).__name__}")


class ZWaveBackend:
    """Commissions Z-Wave devices from S2/SmartStart and DSK-only codes."""

    name = "zwave"

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self._inclusion = asyncio.Lock()

    def accepts(self, payload: QrPayload) -> bool:
        """Z-Wave codes."""
        return payload.authentication_material_type == "ZWAVE_QR_BAR_CODE"

    async def provision(self, payload: QrPayload) -> None:
        """Add a SmartStart code to the provisioning list.

        Raises:
            RadioError: the server refused.
        """
        try:
            await self._controller.async_provision_smart_start_node(provisioning_entry(payload))
        except (BaseZwaveJSServerError, ValueError) as exc:
            raise _radio_error("add the provisioning entry", exc) from exc

    async def provisioned(self) -> list[dict[str, Any]]:
        """The provisioning list (DSKs are secret: callers must not log them)."""
        try:
            entries = await self._controller.async_get_provisioning_entries()
        except BaseZwaveJSServerError as exc:
            raise _radio_error("list the provisioning entries", exc) from exc
        return [entry.to_dict() for entry in entries]

    async def unprovision(self, dsk: str) -> None:
        """Remove an entry from the provisioning list.

        Raises:
            RadioError: the server refused.
        """
        try:
            await self._controller.async_unprovision_smart_start_node(dsk)
        except BaseZwaveJSServerError as exc:
            raise _radio_error("remove the provisioning entry", exc) from exc

    async def commission(
        self, payload: QrPayload, progress: JoinProgress, *, within: float
    ) -> None:
        """Provision (SmartStart) or include (S2) the device and wait for it.

        Raises:
            RadioError: the server refused.
            CommissioningTimeoutError: no ``node added`` (or no interview) in time.
        """
        dsk = payload.fields["dsk"]
        added: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        unsubscribe = self._controller.on("node added", added.put_nowait)
        smart_start = payload.format == "zwave-smartstart"
        try:
            async with self._inclusion:
                if smart_start:
                    await self.provision(payload)
                else:
                    await self._begin_s2(payload)
                try:
                    await self._wait(dsk, added, progress, within, smart_start=smart_start)
                except BaseException:
                    await self._undo(dsk, smart_start=smart_start)
                    raise
        finally:
            unsubscribe()

    async def _begin_s2(self, payload: QrPayload) -> None:
        try:
            if payload.format == "zwave-dsk":
                started = await self._controller.async_begin_inclusion(
                    InclusionStrategy.SECURITY_S2, dsk=payload.fields["dsk"]
                )
            else:
                started = await self._controller.async_begin_inclusion(
                    InclusionStrategy.SECURITY_S2, provisioning=provisioning_entry(payload)
                )
        except (BaseZwaveJSServerError, ValueError) as exc:
            raise _radio_error("start an S2 inclusion", exc) from exc
        if not started:
            raise RadioError("the Z-Wave controller did not start the inclusion")

    async def _undo(self, dsk: str, *, smart_start: bool) -> None:
        with contextlib.suppress(BaseZwaveJSServerError, RadioError):
            if smart_start:
                await self.unprovision(dsk)
            else:
                await self._controller.async_stop_inclusion()

    async def _is_ours(self, node_id: int, dsk: str, *, smart_start: bool) -> bool:
        if not smart_start:
            return True  # one S2 inclusion at a time: the added node is the one included
        try:
            entry = await self._controller.async_get_provisioning_entry(node_id)
        except BaseZwaveJSServerError:
            return False
        return entry is not None and entry.dsk == dsk

    async def _wait(
        self,
        dsk: str,
        added: asyncio.Queue[dict[str, Any]],
        progress: JoinProgress,
        within: float,
        *,
        smart_start: bool,
    ) -> None:
        try:
            async with asyncio.timeout(within):
                while True:
                    event = await added.get()
                    node = event["node"]
                    if await self._is_ours(node.node_id, dsk, smart_start=smart_start):
                        break
                result = event.get("result") or {}
                low = bool(result.get("lowSecurity"))
                if low:
                    _log.warning("Z-Wave node %s was included with low security", node.node_id)
                progress.discovered(
                    {
                        "nodeId": node.node_id,
                        "lowSecurity": low,
                        "lowSecurityReason": result.get("lowSecurityReason"),
                    }
                )
                if not node.ready:
                    ready = asyncio.Event()
                    node.once("ready", lambda _event: ready.set())
                    await ready.wait()
                progress.activated({"nodeId": node.node_id})
        except TimeoutError:
            raise CommissioningTimeoutError(
                f"the Z-Wave device did not join within {within:g} s", reason="JOIN_TIMEOUT"
            ) from None


class ZWaveConnection:
    """A connection to a Z-Wave JS server with its receive loop; yields the backend."""

    def __init__(self, url: str, *, ready_timeout: float = 30.0) -> None:
        self.url = url
        self._ready_timeout = ready_timeout
        self._session: aiohttp.ClientSession | None = None
        self._client: Client | None = None
        self._listen: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, start listening and wait for the driver's state.

        Raises:
            RadioUnavailableError: the server is not reachable or not ready in time.
        """
        self._session = aiohttp.ClientSession()
        self._client = Client(self.url, self._session)
        ready = asyncio.Event()
        try:
            await self._client.connect()
            self._listen = asyncio.get_running_loop().create_task(
                self._client.listen(ready), name="zwave-js-listen"
            )
            async with asyncio.timeout(self._ready_timeout):
                await ready.wait()
        except (BaseZwaveJSServerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self.close()
            raise RadioUnavailableError(
                f"the Z-Wave JS server at {self.url} is not available: {type(exc).__name__}",
                reason="ZWAVE_SERVER_UNAVAILABLE",
            ) from exc

    @property
    def backend(self) -> ZWaveBackend:
        """The backend on this connection."""
        if self._client is None or self._client.driver is None:
            raise RadioUnavailableError("the Z-Wave JS server is not connected")
        return ZWaveBackend(self._client.driver.controller)

    async def close(self) -> None:
        """Disconnect and stop the receive loop."""
        if self._client is not None and self._client.connected:
            await self._client.disconnect()
        if self._listen is not None:
            self._listen.cancel()
            with contextlib.suppress(asyncio.CancelledError, BaseZwaveJSServerError):
                await self._listen
            self._listen = None
        if self._session is not None:
            await self._session.close()
            self._session = None
