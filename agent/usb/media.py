r"""The provisioning stick as the run sees it: find the archive, copy it, write back, release.

Typical use by the provisioning run (one stick at a time)::

    settings = MediaSettings.from_config(config.usb)
    async with StickMedia(stick.node, settings, runtime_dir=config.agent.runtime_dir) as media:
        archive = await media.fetch_archive()   # StickRefusedError / MediaError on refusal
        ...                                     # validate archive.path, install, network...
        await media.write_back(result_json, provisioning_log)
    # leaving the block flushes and closes the stick and deletes the private copy

The rule for the archive: exactly one root entry named ``certificates-omni_*.zip`` (compared
without regard to case, as FAT does); it must be a file, its name must carry a device name of
the seed's pattern (``^[a-zA-Z0-9\-\_]+$``, 1 to 255 characters; the archive module's
``ARCHIVE_NAME_RE``) and it must be at most ``max_archive_bytes`` long. It is copied into a
fresh private directory (0700; the file 0600, written and fsynced) before anything else
reads it; no other file on the stick is ever read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.archive.manifest import ARCHIVE_NAME_RE
from agent.fsutil import PRIVATE_FILE, ensure_dir, write_synced
from agent.usb.errors import (
    ArchiveNameError,
    ArchiveNotAFileError,
    NoArchiveError,
    SeveralArchivesError,
    StickArchiveTooLargeError,
)
from agent.usb.fat import DirEntry, FatVolume
from agent.usb.mtools import Mtools, MtoolsSettings

log = logging.getLogger(__name__)

ARCHIVE_PREFIX = "certificates-omni_"
ARCHIVE_SUFFIX = ".zip"
RESULT_DIR = "edge-agent"
RESULT_FILE = "result.json"
LOG_FILE = "provisioning.log"


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """How sticks are read and written (``[usb]`` in the configuration)."""

    max_archive_bytes: int = 1024 * 1024
    write_back: bool = True
    mtools: MtoolsSettings = field(default_factory=MtoolsSettings)


@dataclass(frozen=True, slots=True)
class StickArchive:
    """The archive copied off the stick into the private runtime directory."""

    path: Path
    file_name: str
    device_name: str
    size: int
    sha256: str


def is_archive_candidate(name: str) -> bool:
    """True for a root entry that claims to be a provisioning archive (case-insensitive)."""
    low = name.lower()
    return low.startswith(ARCHIVE_PREFIX) and low.endswith(ARCHIVE_SUFFIX)


def choose_archive(entries: list[DirEntry]) -> tuple[DirEntry, str]:
    """The single archive among root ``entries`` and its device name.

    Raises:
        NoArchiveError: None.
        SeveralArchivesError: More than one.
        ArchiveNotAFileError: The one entry is a directory.
        ArchiveNameError: Its name does not carry a valid device name.
    """
    candidates = [e for e in entries if is_archive_candidate(e.name)]
    if not candidates:
        raise NoArchiveError(
            "the stick holds no certificates-omni_<device-name>.zip in its top folder"
        )
    if len(candidates) > 1:
        raise SeveralArchivesError(
            f"the stick holds {len(candidates)} certificates-omni_*.zip entries; "
            "leave exactly one in its top folder"
        )
    (entry,) = candidates
    if entry.is_dir:
        raise ArchiveNotAFileError(f"{_shown(entry.name)} on the stick is a folder, not a file")
    match = ARCHIVE_NAME_RE.fullmatch(entry.name)
    if match is None:
        raise ArchiveNameError(
            f"{_shown(entry.name)} is not certificates-omni_<device-name>.zip "
            "(device names: 1 to 255 letters, digits, '-' and '_')"
        )
    return entry, match.group("name")


def _shown(name: str) -> str:
    """A stick-supplied name made safe for a message (printable, bounded)."""
    clean = "".join(c if c.isprintable() else "?" for c in name)
    return repr(clean if len(clean) <= 80 else clean[:77] + "...")  # noqa: PLR2004


class StickMedia:
    """One stick for one run: an async context manager, usable once."""

    def __init__(self, node: Path, settings: MediaSettings, *, runtime_dir: Path) -> None:
        self.node = node
        self.settings = settings
        self._runtime_dir = runtime_dir
        self._workdir: Path | None = None
        self._volume: FatVolume | None = None
        self._used = False
        self._root: list[DirEntry] | None = None

    async def __aenter__(self) -> Self:
        if self._used:
            raise RuntimeError("a StickMedia is used once")
        self._used = True
        base = ensure_dir(self._runtime_dir / "usb")
        self._workdir = ensure_dir(base / secrets.token_hex(8))
        try:
            self._volume = await FatVolume.open(
                self.node, Mtools(self._workdir, self.settings.mtools)
            )
        except BaseException:
            await self._cleanup()
            raise
        log.info("stick %s opened (FAT at byte %d)", self.node, self._volume.offset)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        if self._volume is not None:
            await self._volume.release()
            log.info("stick %s released", self.node)
        if self._workdir is not None:
            await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)

    @property
    def volume(self) -> FatVolume:
        """The open FAT volume (inside the ``async with`` block only)."""
        if self._volume is None:
            raise RuntimeError("StickMedia is not open")
        return self._volume

    async def fetch_archive(self) -> StickArchive:
        """Find the one archive, copy it into the private directory and return where it is.

        Raises:
            StickRefusedError: One of its subclasses, each with its own reason (no archive,
                several, a folder, a bad name, too large, unreadable FAT).
            MediaError: The stick went away or mtools failed.
        """
        assert self._workdir is not None  # noqa: S101 - set by __aenter__
        self._root = await self.volume.list_dir()
        entry, device_name = choose_archive(self._root)
        limit = self.settings.max_archive_bytes
        data = await self.volume.read_file(entry.name, limit)
        if data is None:
            raise StickArchiveTooLargeError(f"{entry.name} is larger than {limit} bytes")
        copy_dir = ensure_dir(self._workdir / "archive")
        path = copy_dir / entry.name
        await asyncio.to_thread(write_synced, path, data, PRIVATE_FILE)
        digest = hashlib.sha256(data).hexdigest()
        log.info("archive %s copied off the stick (%d bytes)", entry.name, len(data))
        return StickArchive(path, entry.name, device_name, len(data), digest)

    async def write_back(self, result_json: bytes, provisioning_log: bytes) -> bool:
        """Write ``edge-agent/result.json`` and ``edge-agent/provisioning.log`` to the stick.

        Returns False (and writes nothing) when ``write_back`` is off.

        Raises:
            WriteBackError: The stick refused the write.
            StickRemovedError: The stick went away.
        """
        if not self.settings.write_back:
            log.info("write-back to the stick is off")
            return False
        assert self._workdir is not None  # noqa: S101 - set by __aenter__
        await self.volume.write_files(
            RESULT_DIR,
            {RESULT_FILE: result_json, LOG_FILE: provisioning_log},
            staging=self._workdir,
            root=self._root,
        )
        self._root = None  # the root now holds edge-agent/
        log.info("result written back to the stick (%s/%s)", RESULT_DIR, RESULT_FILE)
        return True
