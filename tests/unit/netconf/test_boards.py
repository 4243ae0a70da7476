from __future__ import annotations

from pathlib import Path

import pytest

from agent.netconf.boards import (
    BUNDLED_BOARDS_DIR,
    BoardProfileError,
    load_board,
    resolve_interfaces,
)


def test_generic_is_eth0_eth1() -> None:
    board = load_board("generic")
    assert board.name == "generic"
    assert resolve_interfaces(board, Path("/nonexistent")) == {
        "Ethernet0": "eth0",
        "Ethernet1": "eth1",
    }


@pytest.mark.parametrize("path", sorted(BUNDLED_BOARDS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_bundled_profile_loads(path: Path) -> None:
    assert load_board(path.stem).profile.Ethernet0 is not None


def test_unknown_keys_are_rejected_with_paths(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        '[Ethernet0]\nname = "eth0"\nspeed = 1000\n[Ethernet2]\nname = "eth2"\n[led]\ncolour = 1\n'
    )
    with pytest.raises(BoardProfileError) as caught:
        load_board("x", tmp_path)
    paths = {f.path for f in caught.value.fields}
    assert paths == {"Ethernet0.speed", "Ethernet2", "led.colour"}
    assert caught.value.to_dict()["error"]["reason"] == "BOARD_PROFILE_INVALID"


def test_each_port_names_its_interface_exactly_once(tmp_path: Path) -> None:
    (tmp_path / "y.toml").write_text(
        '[Ethernet0]\nname = "eth0"\nmac = "00:11:22:33:44:55"\n[Ethernet1]\nmac = "zz"\n'
    )
    with pytest.raises(BoardProfileError) as caught:
        load_board("y", tmp_path)
    assert {f.path for f in caught.value.fields} == {"Ethernet0", "Ethernet1.mac"}


def test_missing_board_and_bad_names() -> None:
    with pytest.raises(BoardProfileError) as caught:
        load_board("no-such-board")
    assert caught.value.reason == "BOARD_PROFILE_NOT_FOUND"
    with pytest.raises(BoardProfileError):
        load_board("../etc/passwd")


def _fake_sysfs(tmp_path: Path) -> Path:
    """A /sys/class/net look-alike: the hardware edge of the resolver."""
    sysfs = tmp_path / "sys"
    devices = sysfs / "devices" / "platform" / "soc" / "fe300000.ethernet"
    devices.mkdir(parents=True)
    usb = sysfs / "devices" / "usb2" / "2-1"
    usb.mkdir(parents=True)
    net = sysfs / "class" / "net"
    for name, mac, device in (
        ("end0", "dc:a6:32:00:00:01", devices),
        ("enx00e04c680001", "00:e0:4c:68:00:01", usb),
        ("lo", "00:00:00:00:00:00", None),
    ):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        if device is not None:
            (net / name / "device").symlink_to(device)
    return sysfs


def test_resolve_by_mac_and_sysfs_path(tmp_path: Path) -> None:
    sysfs = _fake_sysfs(tmp_path)
    (tmp_path / "b.toml").write_text(
        '[Ethernet0]\npath = "/sys/devices/platform/soc/*.ethernet"\n'
        '[Ethernet1]\nmac = "00:E0:4C:68:00:01"\n'
    )
    assert resolve_interfaces(load_board(str(tmp_path / "b.toml")), sysfs) == {
        "Ethernet0": "end0",
        "Ethernet1": "enx00e04c680001",
    }


def test_unresolvable_port_is_reported(tmp_path: Path) -> None:
    sysfs = _fake_sysfs(tmp_path)
    (tmp_path / "c.toml").write_text('[Ethernet0]\nmac = "02:00:00:00:00:99"\n')
    with pytest.raises(BoardProfileError) as caught:
        resolve_interfaces(load_board(str(tmp_path / "c.toml")), sysfs)
    assert caught.value.reason == "BOARD_INTERFACE_NOT_FOUND"
    assert caught.value.fields[0].path == "Ethernet0"
