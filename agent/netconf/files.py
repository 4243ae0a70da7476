"""Small durable file helpers shared by the file-writing backends."""

from __future__ import annotations

import contextlib
from pathlib import Path

from agent.fsutil import PUBLIC_FILE, atomic_write


def read_optional(path: Path) -> str | None:
    """A file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


def restore_file(path: Path, content: str | None, mode: int = PUBLIC_FILE) -> None:
    """Write ``content`` durably (temp, fsync, rename), or remove the file when it is None."""
    if content is None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, content.encode(), mode)
