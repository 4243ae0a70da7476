"""Where the FAT file system starts on a stick: pure functions over its first sector.

A stick is either a "superfloppy" (a FAT boot sector at byte 0, as on a partition's own
block device or a whole-disk FAT stick) or carries an MBR partition table whose first FAT
partition holds the file system. Everything read from the stick is untrusted: every field is
bounds-checked against the size of the medium before it is used as an offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.usb.errors import FilesystemError, PartitionTableError

SECTOR = 512
_SIGNATURE = b"\x55\xaa"
_TABLE_OFFSET = 446
_ENTRY = struct.Struct("<B3sB3sII")
#: MBR partition types of FAT file systems (FAT12, FAT16 <32M, FAT16, FAT32 CHS/LBA, FAT16 LBA).
FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})
_GPT_PROTECTIVE = 0xEE
_BYTES_PER_SECTOR = frozenset({512, 1024, 2048, 4096})
_MEDIA_BYTES = frozenset({0xF0, *range(0xF8, 0x100)})


@dataclass(frozen=True, slots=True)
class PartitionEntry:
    """One primary MBR partition entry."""

    index: int
    status: int
    type: int
    start_lba: int
    sectors: int


def looks_like_fat_boot_sector(sector: bytes) -> bool:
    """True when ``sector`` is a plausible FAT boot sector (jump, BPB geometry, signature)."""
    if len(sector) < SECTOR or sector[510:512] != _SIGNATURE:
        return False
    jump_ok = (sector[0] == 0xEB and sector[2] == 0x90) or sector[0] == 0xE9  # noqa: PLR2004
    bytes_per_sector = int.from_bytes(sector[11:13], "little")
    per_cluster = sector[13]
    reserved = int.from_bytes(sector[14:16], "little")
    fats = sector[16]
    return (
        jump_ok
        and bytes_per_sector in _BYTES_PER_SECTOR
        and per_cluster != 0
        and per_cluster & (per_cluster - 1) == 0
        and reserved >= 1
        and fats >= 1
        and sector[21] in _MEDIA_BYTES
    )


def partition_entries(sector: bytes) -> list[PartitionEntry]:
    """The four primary entries of an MBR; empty entries (type 0) are left out.

    Raises:
        PartitionTableError: The sector has no MBR signature or an entry's status byte is
            neither 0x00 nor 0x80 (not a partition table).
    """
    if len(sector) < SECTOR or sector[510:512] != _SIGNATURE:
        raise PartitionTableError("the stick has no MBR partition table signature")
    out: list[PartitionEntry] = []
    for index in range(4):
        raw = sector[_TABLE_OFFSET + 16 * index : _TABLE_OFFSET + 16 * (index + 1)]
        status, _chs1, ptype, _chs2, start, sectors = _ENTRY.unpack(raw)
        if status not in (0x00, 0x80):
            raise PartitionTableError(
                f"partition entry {index + 1} has an invalid status byte 0x{status:02x}"
            )
        if ptype:
            out.append(PartitionEntry(index + 1, status, ptype, start, sectors))
    return out


def fat_offset(sector: bytes, media_size: int, sector_size: int = SECTOR) -> int:
    """Byte offset of the FAT file system on a medium of ``media_size`` bytes.

    ``sector`` is the medium's first sector. A FAT boot sector there means offset 0;
    otherwise the MBR's first FAT partition is used, checked to lie inside the medium.

    Raises:
        FilesystemError: Neither a FAT boot sector nor a partition table.
        PartitionTableError: GPT, no FAT partition, or a partition outside the medium.
    """
    if looks_like_fat_boot_sector(sector):
        return 0
    if len(sector) < SECTOR or sector[510:512] != _SIGNATURE:
        raise FilesystemError("the stick holds neither a FAT file system nor a partition table")
    entries = partition_entries(sector)
    if any(e.type == _GPT_PROTECTIVE for e in entries):
        raise PartitionTableError(
            "the stick has a GPT partition table; format it with one MBR FAT partition",
            reason="PARTITION_TABLE_UNSUPPORTED",
        )
    fat = [e for e in entries if e.type in FAT_TYPES]
    if not fat:
        raise PartitionTableError(
            "the stick's partition table has no FAT partition", reason="NO_FAT_PARTITION"
        )
    first = fat[0]
    end = (first.start_lba + first.sectors) * sector_size
    if first.start_lba < 1 or first.sectors < 1 or end > media_size:
        raise PartitionTableError(
            f"partition {first.index} lies outside the stick "
            f"(sectors {first.start_lba}+{first.sectors}, stick {media_size} bytes)",
            reason="PARTITION_OUT_OF_BOUNDS",
        )
    return first.start_lba * sector_size
