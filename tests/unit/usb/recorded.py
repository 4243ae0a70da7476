"""Recorded uevent property sets (uevents.json) and a fake monitor on a real pipe."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.usb.qualify import UsbParent
from agent.usb.udev import DeviceView, RecordedDevice

_EVENTS = Path(__file__).with_name("uevents.json")


def recorded(name: str, *, sector: bytes | None = None, **changes: str | None) -> RecordedDevice:
    """The recorded event ``name``; ``changes`` replace properties, ``sector`` is its start."""
    raw = json.loads(_EVENTS.read_text())[name]
    parent = UsbParent(**raw["parent"]) if raw["parent"] else None
    props = dict(raw["properties"])
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    return RecordedDevice(raw["action"], props, parent, sector)


def on_parent(device: RecordedDevice, **changes: Any) -> RecordedDevice:
    """The same event with the parent's attributes changed."""
    assert device.parent is not None
    return replace(device, parent=replace(device.parent, **changes))


class FakeMonitor:
    """A monitor whose descriptor is a real pipe: ``emit`` makes it readable, as netlink."""

    def __init__(self, present: list[DeviceView] | None = None) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._waiting: list[DeviceView] = []
        self._present = present or []
        self.closed = False

    def emit(self, device: DeviceView) -> None:
        self._waiting.append(device)
        os.write(self._write, b"!")

    def fileno(self) -> int:
        return self._read

    def receive(self) -> DeviceView | None:
        try:
            os.read(self._read, 1)
        except BlockingIOError:
            return None
        return self._waiting.pop(0)

    def present(self) -> list[DeviceView]:
        return list(self._present)

    def close(self) -> None:
        self.closed = True
        os.close(self._read)
        os.close(self._write)
