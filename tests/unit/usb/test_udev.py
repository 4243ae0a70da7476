"""Recorded uevent property sets through the udev adapter's decision seam and event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.usb.base import StickEvent, StickInserted, StickRemoved
from agent.usb.partition import SECTOR
from agent.usb.qualify import StickPolicy, parse_speed, qualify
from agent.usb.udev import UdevStickSource, device_node, effective_source
from tests.unit.usb.conftest import make_image
from tests.unit.usb.recorded import FakeMonitor, on_parent, recorded

USB3 = StickPolicy()


def _decide(
    device_name: str, policy: StickPolicy = USB3, **changes: str | None
) -> tuple[bool, str]:
    device = recorded(device_name, sector=None, **changes)
    decision = qualify(device.properties, device.parent, policy, device.sector)
    return decision.accepted, decision.why


def test_a_usb3_stick_qualifies() -> None:
    assert _decide("usb3_partition") == (True, "partition on USB at 5000 Mb/s")


def test_the_same_stick_on_a_usb2_port_does_not() -> None:
    accepted, why = _decide("usb2_port_partition")
    assert not accepted
    assert "480 Mb/s" in why
    assert "USB 3" in why


def test_the_minimum_speed_is_configurable() -> None:
    assert _decide("usb2_port_partition", StickPolicy(min_speed_mbps=480))[0]


def test_a_non_usb_disk_does_not_qualify() -> None:
    assert _decide("sata_disk_partition") == (False, "not on USB")


def test_a_whole_disk_fat_stick_qualifies() -> None:
    assert _decide("usb3_whole_disk_fat") == (True, "disk on USB at 5000 Mb/s")


def test_a_disk_with_a_partition_table_leaves_it_to_its_partitions() -> None:
    accepted, why = _decide("usb3_disk_with_partition_table")
    assert not accepted
    assert "partition table" in why


def test_another_file_system_does_not_qualify() -> None:
    assert _decide("usb3_ext4_partition") == (False, "file system ext4, not FAT")


def test_a_pinned_port() -> None:
    pinned = StickPolicy(port_path="/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1")
    assert _decide("usb3_partition", pinned)[0]
    accepted, why = _decide("usb3_whole_disk_fat", pinned)  # 2-2: the other port
    assert not accepted
    assert "provisioning port" in why
    glob = StickPolicy(port_path="/sys/devices/pci0000:00/*/usb2/*")
    assert _decide("usb3_whole_disk_fat", glob)[0]


def test_no_speed_or_no_node() -> None:
    device = on_parent(recorded("usb3_partition"), speed_mbps=None)
    assert not qualify(device.properties, device.parent, USB3).accepted
    assert not _decide("usb3_partition", DEVNAME=None)[0]
    assert not _decide("usb3_partition", SUBSYSTEM="usb")[0]


def test_kernel_events_are_judged_by_their_first_sector(tmp_path: Path) -> None:
    fat = make_image(tmp_path / "fat.img", fat=12).read_bytes()[:SECTOR]
    mbr = make_image(tmp_path / "mbr.img", partitioned=True).read_bytes()[:SECTOR]
    part = recorded("usb3_partition_kernel_source")
    assert qualify(part.properties, part.parent, USB3, fat).accepted
    assert not qualify(part.properties, part.parent, USB3, bytes(SECTOR)).accepted
    disk = recorded("usb3_partition_kernel_source", DEVTYPE="disk", PARTN=None)
    assert qualify(disk.properties, disk.parent, USB3, fat).accepted
    decision = qualify(disk.properties, disk.parent, USB3, mbr)
    assert not decision.accepted
    assert "partitions count" in decision.why


def test_speed_attribute_parsing() -> None:
    assert parse_speed("5000\n") == 5000
    assert parse_speed("1.5") == 1.5
    assert parse_speed("fast") is None
    assert parse_speed(None) is None


def test_kernel_devnames_are_relative() -> None:
    assert device_node("sdb1") == Path("/dev/sdb1")
    assert device_node("/dev/sdb1") == Path("/dev/sdb1")


def test_udev_falls_back_to_kernel_without_udevd(tmp_path: Path) -> None:
    assert effective_source("udev", tmp_path / "control") == "kernel"
    (tmp_path / "control").touch()
    assert effective_source("udev", tmp_path / "control") == "udev"
    assert effective_source("kernel", tmp_path / "control") == "kernel"


async def _next(source: UdevStickSource) -> StickEvent:
    async with asyncio.timeout(5.0):
        return await anext(source)


def _source(monitor: FakeMonitor, tmp_path: Path, debounce: float = 0.0) -> UdevStickSource:
    (tmp_path / "control").touch()
    return UdevStickSource(
        policy=USB3,
        debounce_seconds=debounce,
        monitor_factory=lambda _kind: monitor,
        udev_control=tmp_path / "control",
    )


def test_insertion_and_pulled_stick_through_the_event_loop(tmp_path: Path) -> None:
    monitor = FakeMonitor()

    async def run() -> list[StickEvent]:
        async with _source(monitor, tmp_path) as source:
            assert source.kind == "udev"
            monitor.emit(recorded("usb2_port_partition"))  # refused: never reported
            monitor.emit(recorded("usb3_partition"))
            inserted = await _next(source)
            assert [s.stick_id for s in source.present()] == [inserted.stick.stick_id]  # type: ignore[union-attr]
            monitor.emit(recorded("usb3_partition_removed"))
            removed = await _next(source)
            assert source.present() == []
            return [inserted, removed]

    inserted, removed = asyncio.run(run())
    assert isinstance(inserted, StickInserted)
    stick = inserted.stick
    assert stick.node == Path("/dev/sdb1")
    assert stick.stick_id == "usb:0781:5581:4C530001230915116183:1"
    assert stick.speed_mbps == 5000
    assert stick.properties["ID_FS_LABEL"] == "PROVISION"
    assert "SEQNUM" not in stick.properties
    assert removed == StickRemoved(stick.stick_id, Path("/dev/sdb1"))
    assert monitor.closed


def test_sticks_present_at_start_are_reported_first(tmp_path: Path) -> None:
    monitor = FakeMonitor(
        present=[recorded("sata_disk_partition"), recorded("usb3_whole_disk_fat")]
    )

    async def run() -> StickEvent:
        async with _source(monitor, tmp_path) as source:
            return await _next(source)

    event = asyncio.run(run())
    assert isinstance(event, StickInserted)
    assert event.stick.node == Path("/dev/sdc")


def test_a_bouncing_stick_is_debounced(tmp_path: Path) -> None:
    monitor = FakeMonitor()

    async def run() -> list[StickEvent]:
        events: list[StickEvent] = []
        async with _source(monitor, tmp_path, debounce=0.2) as source:
            # plugged, pulled at once, plugged again, a change event: one insertion
            monitor.emit(recorded("usb3_partition"))
            monitor.emit(recorded("usb3_partition_removed"))
            monitor.emit(recorded("usb3_partition"))
            monitor.emit(recorded("usb3_partition", ACTION="change"))
            events.append(await _next(source))
            monitor.emit(recorded("usb3_partition", ACTION="change"))
            monitor.emit(recorded("usb3_partition_removed"))
            events.append(await _next(source))
        return events

    inserted, removed = asyncio.run(run())
    assert isinstance(inserted, StickInserted)
    assert isinstance(removed, StickRemoved)
    assert removed.stick_id == inserted.stick.stick_id


def test_a_removal_of_an_unreported_device_is_not_an_event(tmp_path: Path) -> None:
    monitor = FakeMonitor()

    async def run() -> StickEvent:
        async with _source(monitor, tmp_path) as source:
            monitor.emit(recorded("usb3_partition_removed"))
            monitor.emit(recorded("usb3_whole_disk_fat"))
            return await _next(source)

    assert isinstance(asyncio.run(run()), StickInserted)


def test_the_source_is_not_reentrant_and_iteration_ends_on_close(tmp_path: Path) -> None:
    async def run() -> None:
        source = _source(FakeMonitor(), tmp_path)
        async with source:
            with pytest.raises(RuntimeError, match="already running"):
                await source.__aenter__()
        assert [e async for e in source] == []
        async with _source(FakeMonitor(), tmp_path) as again:  # a fresh monitor each time
            assert again.present() == []

    asyncio.run(run())


def test_a_monitor_that_cannot_start_leaves_the_source_usable(tmp_path: Path) -> None:
    calls: list[str] = []

    def factory(kind: str) -> FakeMonitor:
        calls.append(kind)
        if len(calls) == 1:
            raise OSError("netlink unavailable")
        return FakeMonitor()

    async def run() -> None:
        (tmp_path / "control").touch()
        source = UdevStickSource(monitor_factory=factory, udev_control=tmp_path / "control")
        with pytest.raises(OSError, match="netlink"):
            await source.__aenter__()
        async with source:
            assert source.kind == "udev"

    asyncio.run(run())
