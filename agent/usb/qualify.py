"""Which block device is a provisioning stick: a pure decision over a uevent property set.

The udev adapter (:mod:`agent.usb.udev`) gathers, for each block device event, its uevent
properties, the attributes of its parent ``usb_device`` (if any) and, when udev did not say
which file system it holds, its first sector. :func:`qualify` decides from those alone, so
tests feed recorded property sets through the same function the daemon uses.

A device qualifies when all of these hold:

* it is a block device (``SUBSYSTEM=block``) with a device node;
* it sits on USB (it has a ``usb_device`` parent) whose negotiated ``speed`` is at least
  the minimum (5000 Mb/s by default: the USB 3.0 port; a USB 3 stick in a USB 2 port
  negotiates 480 and is refused);
* when a port is pinned (board profile ``usb.port_path``, a sysfs glob), the USB device's
  sysfs path matches it;
* it is a partition with a FAT file system, or a whole disk holding FAT itself (no partition
  table): udev's ``ID_FS_TYPE`` says so when udevd runs; otherwise the first sector is
  examined. A whole disk with a partition table is left to its partitions' own events.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from agent.usb.partition import looks_like_fat_boot_sector

FAT_FS_TYPES = frozenset({"vfat", "msdos"})
#: The properties a Stick keeps (the rest of a uevent is of no use to the run).
KEPT_PROPERTIES = (
    "DEVNAME",
    "DEVTYPE",
    "DEVPATH",
    "PARTN",
    "ID_BUS",
    "ID_FS_TYPE",
    "ID_FS_LABEL",
    "ID_FS_UUID",
    "ID_SERIAL",
    "ID_VENDOR",
    "ID_MODEL",
    "ID_PART_TABLE_TYPE",
)


@dataclass(frozen=True, slots=True)
class UsbParent:
    """The attributes of a block device's ``usb_device`` parent that matter."""

    sys_path: str
    speed_mbps: float | None
    vendor: str = ""
    product: str = ""
    serial: str = ""


@dataclass(frozen=True, slots=True)
class StickPolicy:
    """What makes a stick acceptable (``[usb]`` and the board profile's ``[usb]``)."""

    min_speed_mbps: float = 5000
    #: sysfs path glob of the provisioning port's USB device; empty: any port.
    port_path: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one device, with the reason (for the journal) when refused."""

    accepted: bool
    why: str


def parse_speed(value: str | None) -> float | None:
    """The ``speed`` sysfs attribute (``"480"``, ``"5000"``, ``"1.5"``) in Mb/s, or None."""
    if value is None:
        return None
    try:
        speed = float(value.strip())
    except ValueError:
        return None
    return speed if speed >= 0 else None


def port_matches(pattern: str, sys_path: str) -> bool:
    """True when ``sys_path`` (a USB device) is the pinned port or below it."""
    if not pattern:
        return True
    return fnmatch.fnmatch(sys_path, pattern) or fnmatch.fnmatch(
        sys_path, pattern.rstrip("/") + "/*"
    )


def needs_first_sector(properties: Mapping[str, str]) -> bool:
    """True when the decision depends on the device's first sector (udev did not probe)."""
    return not properties.get("ID_FS_TYPE") and not properties.get("ID_PART_TABLE_TYPE")


def qualify(
    properties: Mapping[str, str],
    parent: UsbParent | None,
    policy: StickPolicy,
    first_sector: bytes | None = None,
) -> Decision:
    """Decide whether the block device described by ``properties`` is a provisioning stick.

    Args:
        properties: The device's uevent properties (``SUBSYSTEM``, ``DEVTYPE``, ``DEVNAME``,
            and ``ID_FS_TYPE``/``ID_PART_TABLE_TYPE`` when udevd probed it).
        parent: Its ``usb_device`` parent, None when it is not on USB.
        policy: Minimum speed and pinned port.
        first_sector: Its first 512 bytes, when :func:`needs_first_sector` (None: unknown).
    """
    if properties.get("SUBSYSTEM", "block") != "block" or not properties.get("DEVNAME"):
        return Decision(accepted=False, why="not a block device with a device node")
    devtype = properties.get("DEVTYPE", "")
    if devtype not in ("disk", "partition"):
        return Decision(accepted=False, why=f"block device of type {devtype or 'unknown'}")
    refusal = _usb_refusal(parent, policy) or _content_refusal(properties, devtype, first_sector)
    if refusal:
        return Decision(accepted=False, why=refusal)
    assert parent is not None  # noqa: S101 - _usb_refusal refuses a missing parent
    return Decision(accepted=True, why=f"{devtype} on USB at {parent.speed_mbps:g} Mb/s")


def _usb_refusal(parent: UsbParent | None, policy: StickPolicy) -> str:
    if parent is None:
        return "not on USB"
    if parent.speed_mbps is None:
        return "its USB device reports no speed"
    if parent.speed_mbps < policy.min_speed_mbps:
        return (
            f"negotiated {parent.speed_mbps:g} Mb/s, below {policy.min_speed_mbps:g} Mb/s "
            "(plug it into the USB 3 port)"
        )
    if not port_matches(policy.port_path, parent.sys_path):
        return f"not on the provisioning port ({policy.port_path})"
    return ""


def _content_refusal(
    properties: Mapping[str, str], devtype: str, first_sector: bytes | None
) -> str:
    fs_type = properties.get("ID_FS_TYPE", "")
    if fs_type:
        return "" if fs_type in FAT_FS_TYPES else f"file system {fs_type}, not FAT"
    if devtype == "disk" and properties.get("ID_PART_TABLE_TYPE"):
        return "whole disk with a partition table (its partitions count)"
    if first_sector is not None and not looks_like_fat_boot_sector(first_sector):
        if devtype == "disk":
            return "whole disk without a FAT file system (its partitions count)"
        return "partition without a FAT file system"
    return ""


def stick_id(properties: Mapping[str, str], parent: UsbParent) -> str:
    """A stable id: the USB device's vendor, product and serial, and the partition number.

    Without a serial number the port's sysfs path stands in (stable while it stays there).
    """
    who = parent.serial or parent.sys_path.rsplit("/", 1)[-1]
    return (
        f"usb:{parent.vendor or '?'}:{parent.product or '?'}:{who}:{properties.get('PARTN', '0')}"
    )
