"""A FAT file system on a stick, read (and written back) in user space with mtools.

:meth:`FatVolume.open` opens the block device or image file once, read-only and without
following a symbolic link, checks that it is a block device or a regular file, reads its first
sector and finds the FAT (offset 0, or the first FAT partition of an MBR table, see
:mod:`agent.usb.partition`). mtools is then handed that open file as ``/dev/fd/N`` (with
``@@OFFSET`` for a partition inside an image), so the file mtools reads is the file checked
here, even if the path is replaced meanwhile. Only :meth:`FatVolume.write_files` writes, and
only when the caller asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import PRIVATE_FILE
from agent.usb.errors import (
    FilesystemError,
    StickLinkError,
    StickNotMediaError,
    StickRemovedError,
    WriteBackError,
)
from agent.usb.mtools import Mtools, MtoolsResult
from agent.usb.partition import SECTOR, fat_offset, looks_like_fat_boot_sector

_ROOT = "::/"
_WRITE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a FAT directory listing."""

    name: str
    is_dir: bool


@dataclass(frozen=True, slots=True)
class _Opened:
    fd: int
    block_device: bool
    rdev: int
    offset: int


def _open_medium(path: Path) -> _Opened:
    """Open ``path`` read-only (no links) and find its FAT; blocking, runs in a thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise StickRemovedError(f"{path} is gone (was the stick pulled?)") from exc
    except OSError as exc:
        if path.is_symlink():
            raise StickLinkError(f"{path} is a symbolic link; copy the image itself") from exc
        raise StickRemovedError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        return _inspect(fd, path)
    except OSError as exc:
        os.close(fd)
        raise StickRemovedError(f"cannot read {path}: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise


def _inspect(fd: int, path: Path) -> _Opened:
    info = os.fstat(fd)
    block = stat.S_ISBLK(info.st_mode)
    if not block and not stat.S_ISREG(info.st_mode):
        raise StickNotMediaError(f"{path} is neither a block device nor an image file")
    os.set_blocking(fd, True)
    size = os.lseek(fd, 0, os.SEEK_END) if block else info.st_size
    offset = fat_offset(os.pread(fd, SECTOR, 0), size)
    if offset and not looks_like_fat_boot_sector(os.pread(fd, SECTOR, offset)):
        raise FilesystemError(f"the partition at byte {offset} holds no FAT file system")
    return _Opened(fd, block, info.st_rdev, offset)


def _write_private(path: Path, data: bytes) -> None:
    """A staging file: created 0600, exclusive; not fsynced (mtools reads it at once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class FatVolume:
    """An open stick and the mtools commands that read and write its FAT."""

    def __init__(self, path: Path, opened: _Opened, mtools: Mtools) -> None:
        self.path = path
        self._opened = opened
        self._mtools = mtools
        self._closed = False

    @classmethod
    async def open(cls, path: Path, mtools: Mtools) -> FatVolume:
        """Open the stick at ``path`` (device node or image file).

        Raises:
            StickLinkError: ``path`` is a symbolic link.
            StickNotMediaError: ``path`` is neither a block device nor a regular file.
            StickRemovedError: ``path`` is gone or cannot be read.
            FilesystemError: No FAT file system (or partition table) on it.
            PartitionTableError: The partition table is unusable.
        """
        return cls(path, await asyncio.to_thread(_open_medium, path), mtools)

    @property
    def offset(self) -> int:
        """Byte offset of the FAT file system on the medium."""
        return self._opened.offset

    @property
    def image(self) -> str:
        """The ``-i`` argument mtools gets: the open file, at the FAT's offset."""
        base = f"/dev/fd/{self._opened.fd}"
        return f"{base}@@{self._opened.offset}" if self._opened.offset else base

    def gone(self) -> bool:
        """True when the medium has disappeared (stick pulled, image deleted)."""
        if self._opened.block_device:
            rdev = self._opened.rdev
            return not Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").exists()
        return not self.path.exists()

    async def _run(self, tool: str, *args: str, max_stdout: int) -> MtoolsResult:
        if self._closed:
            raise StickRemovedError(f"{self.path} was already released")
        return await self._mtools.run(
            tool, ["-i", self.image, *args], max_stdout=max_stdout, pass_fds=(self._opened.fd,)
        )

    def _failed(self, what: str, result: MtoolsResult) -> FilesystemError | StickRemovedError:
        if self.gone():
            return StickRemovedError(f"the stick went away while {what}")
        return FilesystemError(f"the stick's FAT file system is unreadable ({result.error_line()})")

    async def list_dir(self, directory: str = "") -> list[DirEntry]:
        """The entries of ``directory`` (the root by default), hidden ones included.

        Raises:
            FilesystemError: mtools cannot read the file system, or the listing is too long.
            StickRemovedError: The stick went away.
        """
        result = await self._run(
            "mdir",
            "-b",
            "-a",
            _ROOT + directory,
            max_stdout=self._mtools.settings.max_listing_bytes,
        )
        if result.truncated:
            raise FilesystemError(
                "the stick's directory listing is larger than "
                f"{self._mtools.settings.max_listing_bytes} bytes",
                reason="FAT_LISTING_TOO_LARGE",
            )
        if result.returncode != 0:
            raise self._failed("listing it", result)
        prefix = _ROOT + (directory.strip("/") + "/" if directory.strip("/") else "")
        entries: list[DirEntry] = []
        for line in result.stdout.decode("utf-8", errors="replace").splitlines():
            if not line.startswith(prefix) or len(line) == len(prefix):
                continue
            name = line[len(prefix) :]
            is_dir = name.endswith("/")
            entries.append(DirEntry(name.rstrip("/"), is_dir))
        return entries

    async def read_file(self, name: str, max_bytes: int) -> bytes | None:
        """The content of root file ``name``, or None when it is larger than ``max_bytes``.

        Raises:
            FilesystemError: mtools cannot read it.
            StickRemovedError: The stick went away.
        """
        result = await self._run("mcopy", _ROOT + name, "-", max_stdout=max_bytes)
        if result.truncated:
            return None
        if result.returncode != 0:
            raise self._failed(f"reading {name}", result)
        return result.stdout

    async def write_files(
        self,
        directory: str,
        files: Mapping[str, bytes],
        staging: Path,
        root: list[DirEntry] | None = None,
    ) -> None:
        """Write ``files`` (name → content) into ``directory`` of the root, replacing them.

        ``directory`` and the names are plain lower-case names chosen by the agent. Each file
        is staged in ``staging`` (private, removed afterwards) and copied with ``mcopy -o``.
        ``root`` is the root listing when the caller has it (saves one ``mdir``).

        Raises:
            WriteBackError: The directory cannot be made or a file cannot be written.
            StickRemovedError: The stick went away.
        """
        for name in (directory, *files):
            if not name or not set(name) <= _WRITE_NAME_CHARS or name.startswith("."):
                raise ValueError(f"not a plain file name: {name!r}")
        existing = {
            e.name.lower(): e for e in (root if root is not None else await self.list_dir())
        }
        entry = existing.get(directory)
        if entry is not None and not entry.is_dir:
            raise WriteBackError(f"the stick has a file named {directory}, not a directory")
        if entry is None:
            result = await self._run("mmd", _ROOT + directory, max_stdout=4096)
            if result.returncode != 0:
                raise self._write_failed(f"making {directory}/", result)
        for name, data in files.items():
            local = staging / f".{secrets.token_hex(6)}-{name}"
            await asyncio.to_thread(_write_private, local, data)
            try:
                result = await self._run(
                    "mcopy", "-o", str(local), f"{_ROOT}{directory}/{name}", max_stdout=4096
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    local.unlink()
            if result.returncode != 0:
                raise self._write_failed(f"writing {directory}/{name}", result)

    def _write_failed(self, what: str, result: MtoolsResult) -> WriteBackError | StickRemovedError:
        if self.gone():
            return StickRemovedError(f"the stick went away while {what}")
        return WriteBackError(f"{what} on the stick failed ({result.error_line()})")

    async def release(self) -> None:
        """Flush what was written to the medium and close it (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        fd = self._opened.fd
        try:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
