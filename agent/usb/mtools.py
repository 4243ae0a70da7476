"""Running mtools on an untrusted stick: minimal environment, own config, limits, timeout.

Every mtools command runs with an environment of four variables (``PATH``, ``LC_ALL``,
``HOME`` and ``MTOOLSRC``): ``HOME`` is a private directory, so no ``~/.mtoolsrc`` is read,
and ``MTOOLSRC`` names a private file written here that turns the file system sanity checks
on (``MTOOLS_SKIP_CHECK=0``) and keeps long names and their case. Standard input is
``/dev/null`` (mtools never waits for an answer), standard output is read up to a cap and
the process is killed past it, standard error is kept short, and the whole command has a
timeout. mtools reads the medium in user space: nothing is mounted, the kernel never parses
the stick's FAT, and no capability beyond opening the device is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import PRIVATE_FILE, ensure_dir
from agent.usb.errors import MtoolsError

log = logging.getLogger(__name__)

MTOOLSRC = """\
# mtools configuration of edge-agent (the stick is untrusted).
MTOOLS_SKIP_CHECK=0
MTOOLS_NO_VFAT=0
MTOOLS_LOWER_CASE=0
MTOOLS_FAT_COMPATIBILITY=0
MTOOLS_LOCK_TIMEOUT=2
"""
_STDERR_CAP = 8192
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class MtoolsSettings:
    """Limits for every mtools command (``[usb]`` in the configuration)."""

    timeout_seconds: float = 10.0
    #: Largest directory listing accepted (a hostile FAT can hold many entries).
    max_listing_bytes: int = 256 * 1024
    #: Directory holding ``mdir``, ``mcopy``, ``mmd``.
    bin_dir: Path = Path("/usr/bin")


@dataclass(frozen=True, slots=True)
class MtoolsResult:
    """What one command returned; ``truncated`` when its output passed the cap."""

    returncode: int
    stdout: bytes
    stderr: bytes
    truncated: bool

    def error_line(self) -> str:
        """The first line of standard error, printable characters only (for messages)."""
        text = self.stderr.decode("utf-8", errors="replace").strip().splitlines()
        first = text[0] if text else f"exit status {self.returncode}"
        return "".join(c if c.isprintable() else "?" for c in first)[:200]


class Mtools:
    """mtools bound to a private directory holding its configuration and home."""

    def __init__(self, workdir: Path, settings: MtoolsSettings | None = None) -> None:
        self.settings = settings or MtoolsSettings()
        self.home = ensure_dir(workdir / "mtools")
        self.config = self.home / "mtoolsrc"
        # A fresh private file each time (runtime data: no need to survive a power cut).
        self.config.unlink(missing_ok=True)
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            os.write(fd, MTOOLSRC.encode())
        finally:
            os.close(fd)

    def environment(self) -> dict[str, str]:
        """The whole environment mtools runs with."""
        return {
            "PATH": str(self.settings.bin_dir),
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.home),
            "MTOOLSRC": str(self.config),
        }

    async def run(
        self, tool: str, args: Sequence[str], *, max_stdout: int, pass_fds: Sequence[int] = ()
    ) -> MtoolsResult:
        """Run ``tool`` (``mdir``, ``mcopy``, ``mmd``) with ``args``.

        Standard output beyond ``max_stdout`` bytes kills the command (``truncated``).

        Raises:
            MtoolsError: The tool is missing (``MTOOLS_MISSING``) or did not finish within
                the timeout (``MTOOLS_TIMEOUT``).
        """
        program = self.settings.bin_dir / tool
        try:
            proc = await asyncio.create_subprocess_exec(
                str(program),
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(),
                cwd=self.home,
                pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError as exc:
            raise MtoolsError(
                f"{program} is not installed (Debian package mtools)", reason="MTOOLS_MISSING"
            ) from exc
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                return await self._collect(proc, max_stdout)
        except TimeoutError as exc:
            raise MtoolsError(
                f"{tool} did not finish within {self.settings.timeout_seconds:g} s",
                reason="MTOOLS_TIMEOUT",
            ) from exc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    @staticmethod
    async def _collect(proc: asyncio.subprocess.Process, max_stdout: int) -> MtoolsResult:
        assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
        assert proc.stderr is not None  # noqa: S101
        stderr_task = asyncio.ensure_future(_drain(proc.stderr, _STDERR_CAP))
        out = bytearray()
        truncated = False
        while chunk := await proc.stdout.read(_CHUNK):
            out += chunk
            if len(out) > max_stdout:
                truncated = True
                proc.kill()
                del out[max_stdout + 1 :]
                break
        stderr = await stderr_task
        returncode = await proc.wait()
        return MtoolsResult(returncode, bytes(out), stderr, truncated)


async def _drain(stream: asyncio.StreamReader, cap: int) -> bytes:
    """Read ``stream`` to its end (so the writer never blocks), keeping the first ``cap``."""
    kept = bytearray()
    while chunk := await stream.read(_CHUNK):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)
