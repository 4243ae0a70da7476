"""Real FAT images for the stick tests: mkfs.vfat + mcopy (+ sfdisk for a partitioned one)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from agent.usb.media import MediaSettings, StickMedia
from tests.helpers.env import need_binary

#: Sizes (KiB) mkfs.vfat accepts for each FAT type.
FAT_SIZES = {12: 1440, 16: 20480, 32: 40960}
PARTITION_START = 2048  # sectors: 1 MiB


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, env=_env())


def _env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def mtools_env() -> dict[str, str]:
    """What the tests run mtools with when they inspect an image."""
    return _env()


def make_image(
    path: Path,
    *,
    fat: int = 16,
    files: Mapping[str, bytes] | None = None,
    dirs: Sequence[str] = (),
    partitioned: bool = False,
) -> Path:
    """A FAT image at ``path`` holding ``files`` (root names → content) and ``dirs``."""
    need_binary("mkfs.vfat")
    need_binary("mcopy")
    target = str(path)
    if partitioned:
        need_binary("sfdisk")
        size_kib = 64 * 1024
        with path.open("wb") as fh:
            fh.truncate(size_kib * 1024)
        subprocess.run(
            ["sfdisk", "-q", target],
            input=f"start={PARTITION_START}, type=c\n".encode(),
            check=True,
            capture_output=True,
            env=_env(),
        )
        _run(
            "mkfs.vfat",
            "-F",
            "32",
            "--offset",
            str(PARTITION_START),
            target,
            str(size_kib - PARTITION_START // 2),
        )
        target = f"{path}@@{PARTITION_START * 512}"
    else:
        _run("mkfs.vfat", "-C", "-F", str(fat), "-n", "PROVISION", target, str(FAT_SIZES[fat]))
    staging = path.parent / f".{path.name}.staging"
    staging.mkdir(exist_ok=True)
    for name in dirs:
        _run("mmd", "-i", target, f"::/{name}")
    for index, (name, data) in enumerate((files or {}).items()):
        local = staging / f"f{index}"
        local.write_bytes(data)
        _run("mcopy", "-i", target, local, f"::/{name}")
        local.unlink()
    staging.rmdir()
    return path


def mtype(image: str | Path, name: str) -> bytes:
    """A file of an image, read with mtools."""
    return subprocess.run(
        ["mtype", "-i", str(image), f"::/{name}"], check=True, capture_output=True, env=_env()
    ).stdout


def fsck_clean(image: Path, offset: int = 0) -> subprocess.CompletedProcess[str]:
    """``fsck.fat -n`` of the image (of its partition at ``offset`` when partitioned)."""
    need_binary("fsck.fat")
    target = image
    if offset:
        target = image.with_suffix(".part")
        with image.open("rb") as src, target.open("wb") as dst:
            src.seek(offset)
            dst.write(src.read())
    return subprocess.run(
        ["fsck.fat", "-n", str(target)], capture_output=True, text=True, env=_env(), check=False
    )


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


def open_media(image: Path, runtime_dir: Path, settings: MediaSettings | None = None) -> StickMedia:
    return StickMedia(image, settings or MediaSettings(), runtime_dir=runtime_dir)


def archive_bytes(size: int = 3000) -> bytes:
    return os.urandom(size)
