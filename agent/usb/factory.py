"""Building the stick source and the media settings from the configuration and board."""

from __future__ import annotations

from agent.config import UsbSection
from agent.netconf.boards import UsbSpec
from agent.usb.base import StickSource
from agent.usb.media import MediaSettings
from agent.usb.mtools import MtoolsSettings
from agent.usb.qualify import StickPolicy


def stick_policy(usb: UsbSection, board_usb: UsbSpec | None = None) -> StickPolicy:
    """The acceptance policy: ``[usb] min_speed_mbps`` over the board's; the board's port."""
    spec = board_usb or UsbSpec()
    speed = usb.min_speed_mbps if usb.min_speed_mbps is not None else spec.min_speed_mbps
    return StickPolicy(min_speed_mbps=speed, port_path=spec.port_path)


def media_settings(usb: UsbSection) -> MediaSettings:
    """How sticks are read and written back."""
    return MediaSettings(
        max_archive_bytes=usb.max_archive_bytes,
        write_back=usb.write_back,
        mtools=MtoolsSettings(
            timeout_seconds=usb.mtools_timeout_seconds,
            max_listing_bytes=usb.mtools_max_listing_bytes,
            bin_dir=usb.mtools_dir,
        ),
    )


def open_source(usb: UsbSection, board_usb: UsbSpec | None = None) -> StickSource:
    """The configured stick source (not yet started: use it with ``async with``)."""
    if usb.source == "directory":
        from agent.usb.directory import DirectoryStickSource  # noqa: PLC0415 - lazy backends

        return DirectoryStickSource(usb.directory, debounce_seconds=usb.debounce_seconds)
    from agent.usb.udev import UdevStickSource  # noqa: PLC0415 - lazy backends

    return UdevStickSource(
        policy=stick_policy(usb, board_usb),
        source=usb.source,
        debounce_seconds=usb.debounce_seconds,
    )
