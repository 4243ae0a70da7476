"""The operating-system edge of the trial logic: boot id, processes, signals, detached starts.

Everything here reads ``/proc`` or talks to other processes; the rollback and DHCP logic
call these functions and never touch ``/proc`` or :func:`os.kill` themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Process:
    """A running process as ``/proc`` shows it."""

    pid: int
    comm: str
    argv: tuple[str, ...]


def boot_id() -> str:
    """This boot's id (a crashed trial from an earlier boot is always stale)."""
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = (PROC / f"{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _netns(pid: int | str) -> str:
    try:
        return str((PROC / f"{pid}/ns/net").readlink())
    except OSError:
        return ""


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:  # noqa: PTH123 - hundreds of reads: the plain call is faster
            return f.read()
    except OSError:
        return None


def processes_in_my_netns(names: Collection[str] | None = None) -> Iterator[Process]:
    """Live processes that share this process's network namespace (``names``: by ``comm``)."""
    mine = _netns("self")
    for name in os.listdir(PROC):  # noqa: PTH208 - names only, no Path per process
        if not name.isdigit():
            continue
        raw_comm = _read(f"{PROC}/{name}/comm")
        if raw_comm is None:
            continue
        comm = raw_comm.decode(errors="replace").strip()
        if names is not None and comm not in names:
            continue
        pid = int(name)
        if _netns(pid) != mine or not alive(pid):
            continue
        raw = _read(f"{PROC}/{name}/cmdline")
        if raw is None:
            continue
        argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
        yield Process(pid, comm, argv)


def terminate(pid: int, timeout: float = 5.0) -> bool:
    """Send SIGTERM and wait until ``pid`` is gone (SIGKILL after ``timeout``); True if gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
            return not alive(pid)
        time.sleep(0.02)
    return True


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when it is missing or not a number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def spawn_detached(argv: Sequence[str]) -> None:
    """Start a daemon in its own session, its output discarded; do not wait for it.

    Raises:
        OSError: The program cannot be started.
    """
    subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
