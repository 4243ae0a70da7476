"""The udev/kernel stick source: a pyudev netlink monitor on the event loop.

The monitor's socket goes to ``loop.add_reader``; each readable wake-up drains the monitor
(``poll(timeout=0)``) into a queue that one task works through in order, so an insertion and
the removal right after it are never reordered. Nothing polls on a timer. libudev is only
called from the event loop's thread; only reading a device's first sector (real I/O on the
stick) runs in a worker thread.

``source="udev"`` listens to udevd's processed events (with ``ID_FS_TYPE`` and friends);
where no udevd runs (``/run/udev/control`` absent) it falls back to the kernel's own uevents
(``source="kernel"``), which carry no file-system type, so the device's first sector is
examined instead (:func:`agent.usb.qualify.qualify`). At start every block device present is
examined as an ``add`` (sticks plugged in before the agent started).

The adapter seam is :class:`DeviceView`: :class:`PyudevMonitor` wraps pyudev's devices in
it, and :class:`RecordedDevice` is a recorded uevent property set with its parent's
attributes, replayed through :meth:`UdevStickSource.handle` exactly as live events are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Protocol, Self

from agent.usb.base import QueueSource, Stick
from agent.usb.partition import SECTOR
from agent.usb.qualify import (
    KEPT_PROPERTIES,
    Decision,
    StickPolicy,
    UsbParent,
    needs_first_sector,
    parse_speed,
    qualify,
    stick_id,
)

log = logging.getLogger(__name__)

#: Present when udevd runs (libudev checks the same file).
UDEV_CONTROL = Path("/run/udev/control")


class DeviceView(Protocol):
    """One block device event, as the decision needs it."""

    @property
    def action(self) -> str:
        """``add``, ``change``, ``remove``, ..."""
        ...

    @property
    def properties(self) -> Mapping[str, str]:
        """The uevent properties."""
        ...

    def usb_parent(self) -> UsbParent | None:
        """The ``usb_device`` parent's attributes, None when not on USB (or gone)."""
        ...

    def first_sector(self) -> bytes | None:
        """The device's first 512 bytes, None when unreadable."""
        ...


class MonitorPort(Protocol):
    """A non-blocking source of :class:`DeviceView` events with a pollable descriptor."""

    def fileno(self) -> int:
        """The descriptor that becomes readable when events wait."""
        ...

    def receive(self) -> DeviceView | None:
        """The next waiting event, None when there is none (never blocks)."""
        ...

    def present(self) -> list[DeviceView]:
        """The block devices present now, as ``add`` events."""
        ...

    def close(self) -> None:
        """Stop listening."""
        ...


@dataclass(frozen=True, slots=True)
class RecordedDevice:
    """A recorded uevent: properties, the USB parent's attributes, the first sector."""

    action: str
    properties: Mapping[str, str]
    parent: UsbParent | None = None
    sector: bytes | None = None

    def usb_parent(self) -> UsbParent | None:
        """The recorded parent."""
        return self.parent

    def first_sector(self) -> bytes | None:
        """The recorded first sector."""
        return self.sector


def read_first_sector(node: str) -> bytes | None:
    """The first sector of a device node (read-only, no links), None when unreadable."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, SECTOR, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


class _PyudevDevice:
    """A pyudev ``Device`` seen through :class:`DeviceView`."""

    def __init__(self, device: Any, action: str | None = None) -> None:
        self._device = device
        self.action: str = action or device.action or "add"
        self.properties: Mapping[str, str] = {k: device.properties[k] for k in device.properties}

    def usb_parent(self) -> UsbParent | None:
        try:
            parent = self._device.find_parent("usb", "usb_device")
        except (OSError, LookupError):
            return None
        if parent is None:
            return None
        attrs = parent.attributes

        def attr(name: str) -> str:
            try:
                return str(attrs.asstring(name)).strip()
            except (KeyError, UnicodeDecodeError, OSError):
                return ""

        return UsbParent(
            sys_path=str(parent.sys_path),
            speed_mbps=parse_speed(attr("speed") or None),
            vendor=attr("idVendor"),
            product=attr("idProduct"),
            serial=attr("serial"),
        )

    def first_sector(self) -> bytes | None:
        node = self._device.device_node
        return read_first_sector(node) if node else None


class PyudevMonitor:
    """pyudev's netlink monitor for block devices, with ``source`` ``udev`` or ``kernel``."""

    def __init__(self, source: Literal["udev", "kernel"]) -> None:
        import pyudev  # noqa: PLC0415 - only the udev source needs libudev

        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._monitor.filter_by("block")
        self._monitor.start()

    def fileno(self) -> int:
        """The netlink socket."""
        return int(self._monitor.fileno())

    def receive(self) -> DeviceView | None:
        """The next waiting event, or None."""
        device = self._monitor.poll(timeout=0)
        return None if device is None else _PyudevDevice(device)

    def present(self) -> list[DeviceView]:
        """Every block device present, as an ``add``."""
        return [_PyudevDevice(d, "add") for d in self._context.list_devices(subsystem="block")]

    def close(self) -> None:
        """Drop the monitor (libudev closes its socket)."""
        self._monitor = None


def device_node(devname: str) -> Path:
    """The node of ``DEVNAME`` (udev gives ``/dev/sdb1``, the kernel ``sdb1``)."""
    return Path(devname) if devname.startswith("/") else Path("/dev") / devname


def effective_source(
    source: Literal["udev", "kernel"], udev_control: Path = UDEV_CONTROL
) -> Literal["udev", "kernel"]:
    """``udev`` when udevd runs, else ``kernel`` (a ``kernel`` request stays ``kernel``)."""
    if source == "udev" and not udev_control.exists():
        return "kernel"
    return source


@dataclass
class UdevStickSource(QueueSource):
    """Sticks from udev (or kernel) block device events; see the module docstring."""

    policy: StickPolicy = field(default_factory=StickPolicy)
    source: Literal["udev", "kernel"] = "udev"
    debounce_seconds: float = 0.5
    #: Makes the monitor for the effective source (tests pass a fake on a pipe).
    monitor_factory: Callable[[Literal["udev", "kernel"]], MonitorPort] = PyudevMonitor
    udev_control: Path = UDEV_CONTROL

    def __post_init__(self) -> None:
        QueueSource.__init__(self, self.debounce_seconds)
        self.kind: Literal["udev", "kernel"] = effective_source(self.source, self.udev_control)
        self._monitor: MonitorPort | None = None
        self._incoming: asyncio.Queue[DeviceView] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._enter()
        self.kind = effective_source(self.source, self.udev_control)
        if self.kind != self.source:
            log.warning("no udevd is running: listening to kernel uevents instead")
        self._incoming = asyncio.Queue()
        try:
            monitor = self.monitor_factory(self.kind)
            self._monitor = monitor
            # listening before enumerating: a stick plugged in between is seen twice, not never
            asyncio.get_running_loop().add_reader(monitor.fileno(), self._readable)
            for device in monitor.present():
                self._incoming.put_nowait(device)
        except BaseException:
            await self.aclose()
            raise
        self._worker = asyncio.create_task(self._work(), name=f"usb-{self.kind}-events")
        log.info("watching for USB sticks (%s events)", self.kind)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching; the iteration ends."""
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._entered:
            self._exit()

    def _readable(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        try:
            while (device := monitor.receive()) is not None:
                self._incoming.put_nowait(device)
        except OSError:
            log.exception("reading the %s event monitor failed", self.kind)

    async def _work(self) -> None:
        while True:
            device = await self._incoming.get()
            try:
                await self.handle(device)
            except Exception:  # the service loop must survive one odd event; it is logged
                log.exception("a block device event could not be handled")

    async def handle(self, device: DeviceView) -> Decision | None:
        """Decide on one event and feed the debouncer; return the decision (None: removal)."""
        props = device.properties
        devpath = props.get("DEVPATH", "")
        if device.action == "remove":
            self._debouncer.removed_devpath(devpath)
            return None
        if device.action not in ("add", "change"):
            return None
        parent = (
            device.usb_parent()
        )  # sysfs attributes: memory reads, and libudev stays on one thread
        decision = qualify(props, parent, self.policy)
        if decision.accepted and needs_first_sector(props):
            sector = await asyncio.to_thread(device.first_sector)
            decision = qualify(props, parent, self.policy, sector)
        name = props.get("DEVNAME", devpath)
        if not decision.accepted:
            (log.info if parent is not None else log.debug)("ignoring %s: %s", name, decision.why)
            return decision
        assert parent is not None  # noqa: S101 - qualify refuses devices not on USB
        stick = Stick(
            stick_id=stick_id(props, parent),
            node=device_node(props["DEVNAME"]),
            source=self.kind,
            devpath=devpath,
            speed_mbps=parent.speed_mbps,
            port=parent.sys_path,
            properties=MappingProxyType({k: props[k] for k in KEPT_PROPERTIES if k in props}),
        )
        log.info("stick %s at %s: %s", stick.stick_id, name, decision.why)
        self._debouncer.inserted(stick)
        return decision
