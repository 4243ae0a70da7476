"""The FAT reader on real FAT12/16/32 images (and a partitioned one), through StickMedia."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent.usb.errors import (
    ArchiveNameError,
    ArchiveNotAFileError,
    FilesystemError,
    MtoolsError,
    NoArchiveError,
    PartitionTableError,
    SeveralArchivesError,
    StickArchiveTooLargeError,
    StickLinkError,
    StickNotMediaError,
    StickRefusedError,
    StickRemovedError,
    WriteBackError,
)
from agent.usb.media import MediaSettings, StickArchive
from agent.usb.mtools import MTOOLSRC, Mtools, MtoolsSettings
from tests.unit.usb.conftest import (
    PARTITION_START,
    archive_bytes,
    fsck_clean,
    make_image,
    mtools_env,
    mtype,
    open_media,
)

NAME = "certificates-omni_demo-appliance-1.zip"


async def _fetch(
    image: Path, runtime_dir: Path, settings: MediaSettings | None = None
) -> StickArchive:
    async with open_media(image, runtime_dir, settings) as media:
        archive = await media.fetch_archive()
        assert archive.path.read_bytes()  # readable inside the block
        return archive


def _refusal(
    image: Path, runtime_dir: Path, settings: MediaSettings | None = None
) -> StickRefusedError:
    with pytest.raises(StickRefusedError) as info:
        asyncio.run(_fetch(image, runtime_dir, settings))
    return info.value


@pytest.mark.parametrize("fat", [12, 16, 32])
def test_one_archive_is_copied_byte_identical_to_a_private_directory(
    tmp_path: Path, runtime_dir: Path, fat: int
) -> None:
    data = archive_bytes()
    image = make_image(tmp_path / "stick.img", fat=fat, files={NAME: data, "readme.txt": b"hi"})

    async def run() -> tuple[StickArchive, bytes, int, int]:
        async with open_media(image, runtime_dir) as media:
            archive = await media.fetch_archive()
            return (
                archive,
                archive.path.read_bytes(),
                stat.S_IMODE(archive.path.stat().st_mode),
                stat.S_IMODE(archive.path.parent.stat().st_mode),
            )

    archive, copied, file_mode, dir_mode = asyncio.run(run())
    assert copied == data
    assert archive.sha256 == hashlib.sha256(data).hexdigest()
    assert archive.size == len(data)
    assert archive.device_name == "demo-appliance-1"
    assert archive.file_name == NAME
    assert (file_mode, dir_mode) == (0o600, 0o700)
    assert not archive.path.exists(), "the private copy is removed when the stick is released"
    assert list((runtime_dir / "usb").iterdir()) == []


def test_a_partitioned_stick_is_read_at_its_partition(tmp_path: Path, runtime_dir: Path) -> None:
    data = archive_bytes(5000)
    image = make_image(tmp_path / "disk.img", files={NAME: data}, partitioned=True)

    async def run() -> tuple[int, bytes]:
        async with open_media(image, runtime_dir) as media:
            archive = await media.fetch_archive()
            return media.volume.offset, archive.path.read_bytes()

    offset, copied = asyncio.run(run())
    assert offset == PARTITION_START * 512
    assert copied == data


def test_long_names_are_kept(tmp_path: Path, runtime_dir: Path) -> None:
    device = "appliance-" + "x" * 90 + "_Z9"
    image = make_image(
        tmp_path / "stick.img",
        files={
            f"certificates-omni_{device}.zip": b"zip",
            "Ünïcode notes for the technician.txt": b"x",
            "another rather long file name.json": b"{}",
        },
    )
    assert asyncio.run(_fetch(image, runtime_dir)).device_name == device


def test_no_archive(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={"notes.txt": b"x", "other.zip": b"z"})
    error = _refusal(image, runtime_dir)
    assert isinstance(error, NoArchiveError)
    assert error.reason == "NO_ARCHIVE_ON_STICK"
    assert error.to_dict()["error"]["statusCode"] == 400


def test_two_archives(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(
        tmp_path / "stick.img",
        files={NAME: b"a", "certificates-omni_second.zip": b"b"},
    )
    error = _refusal(image, runtime_dir)
    assert isinstance(error, SeveralArchivesError)
    assert error.reason == "SEVERAL_ARCHIVES_ON_STICK"
    assert not list((runtime_dir / "usb").iterdir()), "nothing was copied"


def test_an_archive_differing_only_in_case_counts_as_a_second(
    tmp_path: Path, runtime_dir: Path
) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"a", "CERTIFICATES-OMNI_X.ZIP": b"b"})
    assert isinstance(_refusal(image, runtime_dir), SeveralArchivesError)


def test_too_big(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: archive_bytes(8193)})
    error = _refusal(image, runtime_dir, MediaSettings(max_archive_bytes=8192))
    assert isinstance(error, StickArchiveTooLargeError)
    assert error.reason == "ARCHIVE_TOO_LARGE_ON_STICK"
    # exactly at the cap is fine
    small = make_image(tmp_path / "ok.img", files={NAME: archive_bytes(8192)})
    assert (
        asyncio.run(_fetch(small, runtime_dir, MediaSettings(max_archive_bytes=8192))).size == 8192
    )


def test_a_directory_named_like_an_archive(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", dirs=[NAME])
    error = _refusal(image, runtime_dir)
    assert isinstance(error, ArchiveNotAFileError)
    assert error.reason == "ARCHIVE_IS_DIRECTORY"


def test_an_archive_name_without_a_valid_device_name(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={"certificates-omni_bad name!.zip": b"z"})
    error = _refusal(image, runtime_dir)
    assert isinstance(error, ArchiveNameError)
    assert error.reason == "ARCHIVE_NAME_INVALID"


def test_an_archive_in_a_subfolder_is_not_taken(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", dirs=["sub"])
    subprocess.run(
        ["mcopy", "-i", str(image), "-", f"::/sub/{NAME}"],
        input=b"zip",
        check=True,
        capture_output=True,
        env=mtools_env(),
    )
    assert mtype(image, f"sub/{NAME}") == b"zip"
    assert isinstance(_refusal(image, runtime_dir), NoArchiveError)


def test_a_corrupt_fat(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    with image.open("r+b") as fh:  # the media descriptor of the first FAT
        fh.seek(int.from_bytes(_read(image, 14, 2), "little") * 512)
        fh.write(b"\x00\x00\x00\x00")
        fh.seek(21)
        fh.write(b"\xf0")
    error = _refusal(image, runtime_dir)
    assert isinstance(error, FilesystemError)
    assert error.reason == "FAT_UNREADABLE"


def test_a_wiped_boot_sector(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    with image.open("r+b") as fh:
        fh.write(bytes(512))
    error = _refusal(image, runtime_dir)
    assert isinstance(error, FilesystemError)


def test_a_partition_table_pointing_outside_the_stick(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "disk.img", files={NAME: b"zip"}, partitioned=True)
    with image.open("r+b") as fh:
        fh.seek(446 + 12)
        fh.write((10**9).to_bytes(4, "little"))
    error = _refusal(image, runtime_dir)
    assert isinstance(error, PartitionTableError)
    assert error.reason == "PARTITION_OUT_OF_BOUNDS"


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def test_a_symlinked_image_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    link = tmp_path / "link.img"
    link.symlink_to(image)
    error = _refusal(link, runtime_dir)
    assert isinstance(error, StickLinkError)
    assert error.reason == "STICK_IS_LINK"


def test_a_path_that_is_no_medium(tmp_path: Path, runtime_dir: Path) -> None:
    folder = tmp_path / "folder.img"
    folder.mkdir()
    assert isinstance(_refusal(folder, runtime_dir), StickNotMediaError)
    fifo = tmp_path / "fifo.img"
    os.mkfifo(fifo)
    assert isinstance(_refusal(fifo, runtime_dir), StickNotMediaError)


def test_a_vanished_stick(tmp_path: Path, runtime_dir: Path) -> None:
    with pytest.raises(StickRemovedError) as info:
        asyncio.run(_fetch(tmp_path / "gone.img", runtime_dir))
    assert info.value.reason == "STICK_REMOVED"
    assert info.value.status_code == 500


@pytest.mark.parametrize("partitioned", [False, True])
def test_write_back_is_readable_and_the_fat_stays_clean(
    tmp_path: Path, runtime_dir: Path, partitioned: bool
) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"}, partitioned=partitioned)
    result = json.dumps({"status": "SUCCEEDED"}).encode()
    log = "line one\nline two ünï\n".encode()

    async def run() -> bool:
        async with open_media(image, runtime_dir) as media:
            await media.fetch_archive()
            await media.write_back(b"first", b"first")
            return await media.write_back(result, log)  # a second write replaces

    assert asyncio.run(run()) is True
    offset = PARTITION_START * 512 if partitioned else 0
    target = f"{image}@@{offset}" if offset else str(image)
    assert mtype(target, "edge-agent/result.json") == result
    assert mtype(target, "edge-agent/provisioning.log") == log
    check = fsck_clean(image, offset)
    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        NAME.encode()
        in subprocess.run(
            ["mdir", "-b", "-i", target, "::/"], capture_output=True, check=True, env=mtools_env()
        ).stdout
    )


def test_write_back_can_be_off(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    before = image.read_bytes()

    async def run() -> bool:
        async with open_media(image, runtime_dir, MediaSettings(write_back=False)) as media:
            return await media.write_back(b"{}", b"log")

    assert asyncio.run(run()) is False
    assert image.read_bytes() == before


def test_write_back_refuses_a_file_in_the_way(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip", "edge-agent": b"a file"})

    async def run() -> None:
        async with open_media(image, runtime_dir) as media:
            await media.write_back(b"{}", b"log")

    with pytest.raises(WriteBackError) as info:
        asyncio.run(run())
    assert info.value.reason == "WRITE_BACK_FAILED"


def test_reading_never_writes_the_stick(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    before = image.read_bytes()
    asyncio.run(_fetch(image, runtime_dir))
    assert image.read_bytes() == before


def test_mtools_runs_with_a_private_minimal_environment(tmp_path: Path) -> None:
    tools = Mtools(tmp_path / "w")
    env = tools.environment()
    assert set(env) == {"PATH", "LC_ALL", "HOME", "MTOOLSRC"}
    assert Path(env["MTOOLSRC"]).read_text() == MTOOLSRC
    assert "MTOOLS_SKIP_CHECK=0" in MTOOLSRC
    assert stat.S_IMODE(Path(env["MTOOLSRC"]).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(env["HOME"]).stat().st_mode) == 0o700


def test_a_listing_past_the_cap_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    files = {f"a rather long file name number {i}.txt": b"x" for i in range(20)}
    image = make_image(tmp_path / "stick.img", files=files)
    settings = MediaSettings(mtools=MtoolsSettings(max_listing_bytes=200))
    error = _refusal(image, runtime_dir, settings)
    assert error.reason == "FAT_LISTING_TOO_LARGE"


def test_a_hanging_mtools_times_out(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hang = bin_dir / "mdir"
    hang.write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    hang.chmod(0o755)
    settings = MediaSettings(mtools=MtoolsSettings(timeout_seconds=0.3, bin_dir=bin_dir))
    with pytest.raises(MtoolsError) as info:
        asyncio.run(_fetch(image, runtime_dir, settings))
    assert info.value.reason == "MTOOLS_TIMEOUT"


def test_missing_mtools(tmp_path: Path, runtime_dir: Path) -> None:
    image = make_image(tmp_path / "stick.img", files={NAME: b"zip"})
    settings = MediaSettings(mtools=MtoolsSettings(bin_dir=tmp_path / "nowhere"))
    with pytest.raises(MtoolsError) as info:
        asyncio.run(_fetch(image, runtime_dir, settings))
    assert info.value.reason == "MTOOLS_MISSING"
