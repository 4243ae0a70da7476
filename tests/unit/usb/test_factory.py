"""[usb] and [status] configuration, and the source and settings built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import UsbSection, parse_config
from agent.errors import ConfigError
from agent.netconf.boards import UsbSpec, load_board
from agent.usb.directory import DirectoryStickSource
from agent.usb.factory import media_settings, open_source, stick_policy
from agent.usb.udev import UdevStickSource


def test_defaults() -> None:
    config = parse_config("")
    assert config.usb.source == "udev"
    assert config.usb.min_speed_mbps is None
    assert config.usb.write_back is True
    assert config.status.led_class_root == Path("/sys/class/leds")
    assert stick_policy(config.usb).min_speed_mbps == 5000


def test_sections_are_read_and_checked() -> None:
    config = parse_config(
        '[usb]\nsource = "directory"\ndirectory = "/tmp/sticks"\nmin_speed_mbps = 480\n'
        "write_back = false\nmax_archive_bytes = 65536\nmtools_timeout_seconds = 3\n"
        '[status]\nled_class_root = "/tmp/leds"\nrestore_after_seconds = 30\n'
    )
    assert config.usb.directory == Path("/tmp/sticks")
    settings = media_settings(config.usb)
    assert (settings.write_back, settings.max_archive_bytes) == (False, 65536)
    assert settings.mtools.timeout_seconds == 3
    assert config.status.restore_after_seconds == 30
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[usb]\nsource = "floppy"\nmtools_timeout_seconds = 0\nbogus = 1\n[status]\nx = 1\n'
        )
    assert {f.path for f in info.value.fields} == {
        "usb.source",
        "usb.mtools_timeout_seconds",
        "usb.bogus",
        "status.x",
    }


def test_the_config_speed_overrides_the_boards_and_the_port_comes_from_the_board() -> None:
    board = load_board("rpi4-usbeth").profile.usb
    assert board.port_path.startswith("/sys/devices/platform/scb/")
    policy = stick_policy(UsbSection(), board)
    assert (policy.min_speed_mbps, policy.port_path) == (5000, board.port_path)
    assert stick_policy(UsbSection(min_speed_mbps=480), board).min_speed_mbps == 480
    assert stick_policy(UsbSection(), UsbSpec(min_speed_mbps=10000)).min_speed_mbps == 10000


def test_open_source_picks_the_backend(tmp_path: Path) -> None:
    directory = open_source(UsbSection(source="directory", directory=tmp_path))
    assert isinstance(directory, DirectoryStickSource)
    assert directory.directory == tmp_path
    kernel = open_source(UsbSection(source="kernel"))
    assert isinstance(kernel, UdevStickSource)
    assert kernel.kind == "kernel"
