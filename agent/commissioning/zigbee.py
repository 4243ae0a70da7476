"""Zigbee commissioning through zigpy: install-code joins with ``permit_with_link_key``.

The radio library named in config (zigpy-znp, bellows, zigpy-deconz) provides the
``ControllerApplication``. ``permit_with_link_key`` may block for the whole permit window
(zigpy-znp sleeps through it), so it runs as a background task while the join is awaited;
two windows never overlap. The device is matched by IEEE: ``device_joined`` means
``DISCOVERED``, ``device_initialized`` (interview done) means ``ACTIVATED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from typing import Any

from zigpy.application import ControllerApplication
from zigpy.types import EUI64, KeyData

from agent.commissioning.backend import JoinProgress
from agent.commissioning.errors import (
    CommissioningTimeoutError,
    RadioError,
    RadioUnavailableError,
)
from agent.commissioning.qr import QrPayload
from agent.config import CommissioningSection

_log = logging.getLogger(__name__)

#: config name → (module, class) of the radio library's ControllerApplication.
RADIO_LIBRARIES = {
    "znp": ("zigpy_znp.zigbee.application", "ControllerApplication"),
    "ezsp": ("bellows.zigbee.application", "ControllerApplication"),
    "deconz": ("zigpy_deconz.zigbee.application", "ControllerApplication"),
}


class _JoinWatcher:
    """A zigpy listener that resolves futures when one IEEE joins and is initialised."""

    def __init__(self, ieee: EUI64) -> None:
        loop = asyncio.get_running_loop()
        self.ieee = ieee
        self.joined: asyncio.Future[Any] = loop.create_future()
        self.initialized: asyncio.Future[Any] = loop.create_future()

    def device_joined(self, device: Any) -> None:
        if device.ieee == self.ieee and not self.joined.done():
            self.joined.set_result(device)

    def device_initialized(self, device: Any) -> None:
        if device.ieee == self.ieee:
            if not self.joined.done():
                self.joined.set_result(device)
            if not self.initialized.done():
                self.initialized.set_result(device)


class ZigbeeBackend:
    """Commissions Zigbee devices from install-code (or link-key) QR codes."""

    name = "zigbee"

    def __init__(self, app: ControllerApplication, *, permit_seconds: int = 60) -> None:
        self._app = app
        self._permit_seconds = permit_seconds
        self._window = asyncio.Lock()
        self._permits: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop the radio."""
        for permit in list(self._permits):
            permit.cancel()
        await self._app.shutdown()

    def accepts(self, payload: QrPayload) -> bool:
        """Zigbee install-code codes."""
        return payload.authentication_material_type == "ZIGBEE_QR_BAR_CODE"

    async def _permit(self, ieee: EUI64, key: KeyData) -> None:
        try:
            await self._app.permit_with_link_key(
                node=ieee, link_key=key, time_s=self._permit_seconds
            )
        except NotImplementedError as exc:
            raise RadioError(
                "this Zigbee radio does not support install-code joining",
                reason="INSTALL_CODES_UNSUPPORTED",
            ) from exc
        except (OSError, RuntimeError, ValueError, TimeoutError) as exc:
            raise RadioError(
                f"the Zigbee radio refused the install code: {type(exc).__name__}",
                reason="RADIO_FAILED",
            ) from exc

    async def commission(
        self, payload: QrPayload, progress: JoinProgress, *, within: float
    ) -> None:
        """Open an install-code window for the device and wait for it to join.

        Raises:
            RadioError: the radio refused (``INSTALL_CODES_UNSUPPORTED`` when it cannot).
            CommissioningTimeoutError: no join (or no interview) within ``within`` seconds.
        """
        ieee = EUI64.convert(payload.fields["ieee"])
        key = KeyData(bytes.fromhex(payload.fields["linkKey"]))
        watcher = _JoinWatcher(ieee)
        self._app.add_listener(watcher)
        async with self._window:
            permit = asyncio.get_running_loop().create_task(
                self._permit(ieee, key), name=f"zigbee-permit-{ieee}"
            )
            self._permits.add(permit)
            permit.add_done_callback(self._permits.discard)
            try:
                await self._wait(watcher, permit, progress, within)
            finally:
                self._app.remove_listener(watcher)
                if not permit.done():
                    # The device is in (or the wait failed): the rest of the window is not
                    # needed; the radio library closes it when its task ends.
                    permit.cancel()
                with contextlib.suppress(asyncio.CancelledError, RadioError):
                    await permit

    async def _wait(
        self,
        watcher: _JoinWatcher,
        permit: asyncio.Task[None],
        progress: JoinProgress,
        within: float,
    ) -> None:
        joined = False
        try:
            async with asyncio.timeout(within):
                done, _ = await asyncio.wait(
                    {permit, watcher.joined}, return_when=asyncio.FIRST_COMPLETED
                )
                if permit in done and permit.exception() is not None:
                    raise permit.exception()  # type: ignore[misc] # a RadioError from _permit
                device = await watcher.joined
                joined = True
                progress.discovered({"ieee": str(device.ieee), "nwk": f"0x{device.nwk:04x}"})
                await watcher.initialized
                progress.activated({"ieee": str(device.ieee)})
        except TimeoutError:
            raise CommissioningTimeoutError(
                f"the Zigbee device did not {'finish its interview' if joined else 'join'} "
                f"within {within:g} s",
                reason="INTERVIEW_TIMEOUT" if joined else "JOIN_TIMEOUT",
            ) from None


def controller_class(radio: str) -> type[ControllerApplication]:
    """The radio library's ControllerApplication (imported only when configured).

    Raises:
        RadioUnavailableError: the library is not installed.
    """
    module_name, class_name = RADIO_LIBRARIES[radio]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RadioUnavailableError(
            f"the Zigbee radio library for {radio!r} ({module_name.split('.')[0]}) is not "
            "installed",
            reason="RADIO_LIBRARY_MISSING",
        ) from exc
    cls: type[ControllerApplication] = getattr(module, class_name)
    return cls


async def open_zigbee(section: CommissioningSection) -> ZigbeeBackend:
    """Start the configured radio and return its backend.

    Raises:
        RadioUnavailableError: no radio configured, library missing or the radio not
            answering.
    """
    if section.zigbee_radio == "none":
        raise RadioUnavailableError(
            "no Zigbee radio is configured (commissioning.zigbee_radio)",
            reason="BACKEND_NOT_CONFIGURED",
        )
    cls = controller_class(section.zigbee_radio)
    config = {
        "device": {"path": section.zigbee_device, "baudrate": section.zigbee_baudrate},
        "database_path": str(section.zigbee_database),
    }
    try:
        app = await cls.new(config=config, auto_form=True, start_radio=True)
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise RadioUnavailableError(
            f"the Zigbee radio on {section.zigbee_device} did not start: {type(exc).__name__}",
            reason="RADIO_UNAVAILABLE",
        ) from exc
    return ZigbeeBackend(app, permit_seconds=section.zigbee_permit_seconds)
