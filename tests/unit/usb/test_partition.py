"""Finding the FAT on a stick from its first sector, with every field bounds-checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.usb.errors import FilesystemError, PartitionTableError
from agent.usb.partition import (
    SECTOR,
    fat_offset,
    looks_like_fat_boot_sector,
    partition_entries,
)
from tests.unit.usb.conftest import PARTITION_START, make_image

MIB64 = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def mbr(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    image = make_image(tmp_path_factory.mktemp("mbr") / "disk.img", partitioned=True)
    return image.read_bytes()[:SECTOR]


def _with_entry(
    sector: bytes,
    index: int,
    *,
    status: int = 0,
    ptype: int = 0x0C,
    start: int = PARTITION_START,
    sectors: int = 1000,
) -> bytes:
    raw = bytearray(sector)
    at = 446 + 16 * index
    raw[at] = status
    raw[at + 4] = ptype
    raw[at + 8 : at + 12] = start.to_bytes(4, "little")
    raw[at + 12 : at + 16] = sectors.to_bytes(4, "little")
    return bytes(raw)


@pytest.mark.parametrize("fat", [12, 16, 32])
def test_a_superfloppy_starts_at_zero(tmp_path: Path, fat: int) -> None:
    sector = make_image(tmp_path / "s.img", fat=fat).read_bytes()[:SECTOR]
    assert looks_like_fat_boot_sector(sector)
    assert fat_offset(sector, 10**9) == 0


def test_the_first_fat_partition_of_an_mbr(mbr: bytes) -> None:
    assert not looks_like_fat_boot_sector(mbr)
    assert [(e.index, e.type, e.start_lba) for e in partition_entries(mbr)] == [
        (1, 0x0C, PARTITION_START)
    ]
    assert fat_offset(mbr, MIB64) == PARTITION_START * SECTOR
    # a Linux partition first, FAT second
    two = _with_entry(_with_entry(mbr, 0, ptype=0x83, start=100, sectors=100), 1, start=4096)
    assert fat_offset(two, MIB64) == 4096 * SECTOR


def test_a_partition_past_the_end_is_refused(mbr: bytes) -> None:
    with pytest.raises(PartitionTableError) as info:
        fat_offset(mbr, 1024 * 1024)  # the medium is smaller than the table claims
    assert info.value.reason == "PARTITION_OUT_OF_BOUNDS"
    with pytest.raises(PartitionTableError):
        fat_offset(_with_entry(mbr, 0, start=0), MIB64)
    with pytest.raises(PartitionTableError):
        fat_offset(_with_entry(mbr, 0, start=0xFFFFFFFF, sectors=0xFFFFFFFF), MIB64)


def test_gpt_no_fat_partition_and_bad_status(mbr: bytes) -> None:
    with pytest.raises(PartitionTableError) as info:
        fat_offset(_with_entry(mbr, 0, ptype=0xEE, start=1), MIB64)
    assert info.value.reason == "PARTITION_TABLE_UNSUPPORTED"
    with pytest.raises(PartitionTableError) as info:
        fat_offset(_with_entry(mbr, 0, ptype=0x83), MIB64)
    assert info.value.reason == "NO_FAT_PARTITION"
    with pytest.raises(PartitionTableError) as info:
        fat_offset(_with_entry(mbr, 0, status=0x7F), MIB64)
    assert info.value.reason == "PARTITION_TABLE_INVALID"


def test_neither_fat_nor_a_table() -> None:
    for sector in (bytes(SECTOR), b"\x55\xaa", b""):
        with pytest.raises(FilesystemError) as info:
            fat_offset(sector, MIB64)
        assert info.value.reason == "FAT_UNREADABLE"


def test_a_boot_sector_with_impossible_geometry_is_not_fat(tmp_path: Path) -> None:
    good = bytearray(make_image(tmp_path / "s.img", fat=16).read_bytes()[:SECTOR])
    for offset, value in (
        (11, b"\x00\x03"),
        (13, b"\x03"),
        (14, b"\x00\x00"),
        (16, b"\x00"),
        (21, b"\x12"),
        (0, b"\x00"),
    ):
        bad = bytearray(good)
        bad[offset : offset + len(value)] = value
        assert not looks_like_fat_boot_sector(bytes(bad)), offset
