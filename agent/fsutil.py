"""Durable file writes: temp file, fsync, rename, fsync of the directory.

A reader (or the next boot after a power cut) sees either the old file or the complete new
one, never a partial file. Secrets are created with their final mode from the first byte.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from agent.errors import ConfigError

PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644
PRIVATE_DIR = 0o700


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """Create ``path`` (and missing parents) with ``mode``; return it.

    Only directories created here get ``mode`` (set explicitly, so the umask does not
    change it); an existing directory keeps its mode and owner.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        directory.chmod(mode)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


def refuse_shared_dir(path: Path) -> None:
    """Refuse an existing directory that others can write to (keys are not put there).

    Raises:
        ConfigError: ``DIRECTORY_NOT_PRIVATE`` when ``path`` is group- or world-writable.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "key files are written only into a private directory",
            reason="DIRECTORY_NOT_PRIVATE",
        )


def temp_path_for(path: Path) -> Path:
    """A unique temporary name in the same directory (so the rename is atomic)."""
    # The name is shortened so that a target near the 255-byte limit still gets a temp name.
    return path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")


def write_synced(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode``, write ``data`` and fsync it (no rename)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow the mode
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The temporary file is removed if anything fails before the rename.
    """
    tmp = temp_path_for(path)
    try:
        write_synced(tmp, data, mode)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
