"""The OS side of bulk registration: confined input files, report files, the runner lock.

Only this module opens file descriptors or takes ``flock`` locks for
:mod:`agent.registry.bulk`:

* :func:`open_input` opens an input file read-only and proves it lies inside the bulk root
  (``O_NOFOLLOW``, then the real path read back from ``/proc/self/fd``);
* :class:`ReportFile` appends to a report, fsyncs it and cuts it back to its committed size;
* :func:`runner_lock` holds a task's ``flock`` (the kernel drops it when its holder dies);
* :func:`touch_synced` creates a flag file durably.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.errors import FieldProblem, InvalidRequestError, StateError
from agent.fsutil import fsync_dir


class BulkInputError(InvalidRequestError):
    """The input file cannot be used (outside the root, missing, not a regular file)."""

    default_reason = "INPUT_FILE_INVALID"


def _escape(message: str, field: str) -> BulkInputError:
    return BulkInputError(
        message, reason="INPUT_PATH_ESCAPES_ROOT", fields=[FieldProblem(field, message)]
    )


def input_path(root: Path, bucket: str, key: str) -> Path:
    """The local path that ``bucket``/``key`` name under ``root`` (lexical checks only).

    Raises:
        BulkInputError: the bucket or key is absolute, has empty, ``.`` or ``..`` parts.
    """
    if bucket in {".", ".."} or "/" in bucket:
        raise _escape("inputFileBucket must name one directory of the bulk root", "inputFileBucket")
    if key.startswith("/"):
        raise _escape("inputFileKey must be relative to its bucket", "inputFileKey")
    parts = key.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise _escape("inputFileKey must not have empty, '.' or '..' path segments", "inputFileKey")
    return root.joinpath(bucket, *parts)


def open_input(root: Path, bucket: str, key: str) -> tuple[int, os.stat_result]:
    """Open the input file read-only, proving it lies inside ``root``.

    The path is checked lexically, then opened (the last component without following a
    symbolic link), and the opened file's real path is read back from ``/proc/self/fd`` and
    must be under the real ``root``: a symbolic link anywhere on the way that leads out of
    the root is refused, even if it is swapped in between check and open.

    Returns:
        The open file descriptor and its ``fstat``.

    Raises:
        BulkInputError: outside the root, missing, unreadable or not a regular file.
    """
    path = input_path(root, bucket, key)
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        raise BulkInputError(
            f"the bulk input root {root} does not exist", reason="INPUT_ROOT_MISSING"
        ) from exc
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BulkInputError(
            f"there is no input file {key!r} in bucket {bucket!r}",
            reason="INPUT_FILE_NOT_FOUND",
            fields=[FieldProblem("inputFileKey", "no such file")],
        ) from exc
    except OSError as exc:
        reason = "INPUT_PATH_ESCAPES_ROOT" if exc.errno == 40 else "INPUT_FILE_UNREADABLE"  # noqa: PLR2004 - ELOOP
        raise BulkInputError(
            f"the input file {key!r} in bucket {bucket!r} cannot be opened: {exc.strerror}",
            reason=reason,
            fields=[FieldProblem("inputFileKey", exc.strerror or "cannot be opened")],
        ) from exc
    try:
        info = _check_opened(fd, real_root, bucket, key)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _check_opened(fd: int, real_root: Path, bucket: str, key: str) -> os.stat_result:
    real = Path(f"/proc/self/fd/{fd}").readlink()
    if not real.is_relative_to(real_root) or real == real_root:
        raise _escape(
            f"the input file {key!r} in bucket {bucket!r} leads outside the bulk root",
            "inputFileKey",
        )
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise BulkInputError(
            f"the input file {key!r} in bucket {bucket!r} is not a regular file",
            reason="INPUT_FILE_NOT_REGULAR",
            fields=[FieldProblem("inputFileKey", "not a regular file")],
        )
    os.set_blocking(fd, True)
    return info


def file_identity(info: os.stat_result) -> str:
    """Device, inode, size and mtime: the input file must not change under a task."""
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


@dataclass(slots=True)
class ReportFile:
    """One report file, appended in batches and cut back to its committed size on resume."""

    path: Path
    handle: IO[bytes]
    size: int

    @classmethod
    def open(cls, path: Path, committed: int) -> ReportFile:
        """Open (creating) the report and cut it back to ``committed`` bytes."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        handle = os.fdopen(fd, "r+b", buffering=1 << 16)
        if os.fstat(fd).st_size < committed:
            handle.close()
            raise StateError(
                f"the report {path} is shorter than its committed size; it was changed "
                "outside the agent",
                reason="REPORT_DAMAGED",
            )
        handle.truncate(committed)
        handle.seek(committed)
        return cls(path, handle, committed)

    def append(self, data: bytes) -> None:
        """Append report lines (buffered)."""
        self.handle.write(data)
        self.size += len(data)

    def sync(self) -> None:
        """Flush and fsync what was appended."""
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self.handle.close()


@contextlib.contextmanager
def runner_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold the ``flock`` on ``path``; yields False when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def touch_synced(path: Path) -> None:
    """Create ``path`` (empty) and make its directory entry durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
