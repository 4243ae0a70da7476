"""Time backends: ``chrony``, ``timesyncd`` and ``none``, and the bounded wait for sync.

``chrony`` writes ``<sources_dir>/edge-agent.sources`` (``server HOST [port N] iburst``) and
runs ``chronyc reload sources``; synchronisation is read from ``chronyc -c tracking`` (the
last CSV field, the leap status, is ``Normal`` once a source is selected).

``timesyncd`` writes ``<dropin_dir>/50-edge-agent.conf`` (``[Time] NTP=...``) and restarts
the daemon; it is synchronised once ``/run/systemd/timesync/synchronized`` exists.
timesyncd cannot use a port, so a server given as ``host:port`` is refused for it.

:func:`wait_for_sync` polls the backend until it reports synchronisation or the bound expires
and tells the caller whether the clock can now be trusted (the archive's clock policy).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FieldProblem
from agent.netconf.base import (
    Change,
    NetworkApplyError,
    Snapshot,
    TimeBackend,
    TimeStatus,
    TimeSyncError,
    run_command,
)
from agent.netconf.files import read_optional, restore_file
from agent.netconf.plan import DEFAULT_NTP_PORT, NetworkConfigurationError, NtpServer

_log = logging.getLogger(__name__)

CHRONY_SOURCES_DIR = Path("/etc/chrony/sources.d")
CHRONY_FILE = "edge-agent.sources"
TIMESYNCD_DROPIN_DIR = Path("/etc/systemd/timesyncd.conf.d")
TIMESYNCD_FILE = "50-edge-agent.conf"
TIMESYNCD_SYNCED_FLAG = Path("/run/systemd/timesync/synchronized")
_TRACKING_FIELDS = 14


def render_chrony_sources(servers: Sequence[NtpServer], options: str = "iburst") -> str:
    """A chrony ``sources.d`` file for the servers, in preference order."""
    lines = ["# Written by edge-agent from the provisioning archive."]
    for server in servers:
        port = f" port {server.port}" if server.port != DEFAULT_NTP_PORT else ""
        lines.append(f"server {server.host}{port} {options}".rstrip())
    return "\n".join(lines) + "\n"


def parse_tracking(text: str) -> TimeStatus:
    """Read ``chronyc -c tracking`` output."""
    fields = text.strip().split(",")
    if len(fields) < _TRACKING_FIELDS:
        return TimeStatus(synchronized=False, detail=f"unexpected tracking output: {text.strip()}")
    leap = fields[-1]
    ref_name = fields[1]
    stratum = int(fields[2]) if fields[2].isdigit() else 0
    synced = leap != "Not synchronised" and stratum > 0
    return TimeStatus(
        synchronized=synced,
        server_name=ref_name if synced else "",
        server_address=ref_name if synced and _looks_ip(ref_name) else "",
        detail=f"leap status {leap}, stratum {stratum}",
    )


def _looks_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ChronyBackend:
    """chrony: a ``sources.d`` file and ``chronyc``."""

    name = "chrony"

    def __init__(
        self,
        *,
        sources_dir: Path = CHRONY_SOURCES_DIR,
        chronyc: Sequence[str] = ("chronyc",),
        source_options: str = "iburst",
    ) -> None:
        self.path = sources_dir / CHRONY_FILE
        self.chronyc = tuple(chronyc)
        self.source_options = source_options

    def changes(self, servers: Sequence[NtpServer]) -> list[Change]:
        """The sources file and the reload."""
        text = render_chrony_sources(servers, self.source_options)
        if read_optional(self.path) == text:
            return []
        out = [Change(str(self.path), "write", ", ".join(str(s) for s in servers))]
        if self.chronyc:
            out.append(Change("chronyd", "run", " ".join([*self.chronyc, "reload", "sources"])))
        return out

    def snapshot(self) -> Snapshot:
        """The sources file as it is."""
        return {"path": str(self.path), "content": read_optional(self.path)}

    def apply(self, servers: Sequence[NtpServer]) -> None:
        """Write the sources file, then ``chronyc reload sources``."""
        restore_file(self.path, render_chrony_sources(servers, self.source_options))
        self._reload()

    def revert(self, snapshot: Snapshot) -> None:
        """Restore the sources file and reload."""
        restore_file(Path(snapshot["path"]), snapshot["content"])
        self._reload()

    def _reload(self) -> None:
        if not self.chronyc:
            return
        try:
            run_command([*self.chronyc, "reload", "sources"], what="reload chrony's sources")
        except NetworkApplyError as exc:
            raise TimeSyncError(exc.message, reason="CHRONY_RELOAD_FAILED") from exc

    def status(self) -> TimeStatus:
        """``chronyc -c tracking``."""
        if not self.chronyc:
            return TimeStatus(synchronized=False, detail="chronyc disabled")
        try:
            result = run_command(
                [*self.chronyc, "-c", "tracking"], what="read chrony's tracking", timeout=10
            )
        except NetworkApplyError as exc:
            return TimeStatus(synchronized=False, detail=exc.message)
        return parse_tracking(result.stdout)


class TimesyncdBackend:
    """systemd-timesyncd: a ``timesyncd.conf.d`` drop-in and a restart."""

    name = "timesyncd"

    def __init__(
        self,
        *,
        dropin_dir: Path = TIMESYNCD_DROPIN_DIR,
        restart_command: Sequence[str] = ("systemctl", "restart", "systemd-timesyncd"),
        synced_flag: Path = TIMESYNCD_SYNCED_FLAG,
    ) -> None:
        self.path = dropin_dir / TIMESYNCD_FILE
        self.restart_command = tuple(restart_command)
        self.synced_flag = synced_flag
        self._servers: tuple[NtpServer, ...] = ()

    @staticmethod
    def check(servers: Sequence[NtpServer]) -> None:
        """Timesyncd has no port setting: refuse ``host:port`` servers."""
        problems = [
            FieldProblem(
                f"NetworkingConfiguration.Ntp.NtpServers[{i}]",
                "systemd-timesyncd cannot use an NTP server on a port other than 123",
            )
            for i, s in enumerate(servers)
            if s.port != DEFAULT_NTP_PORT
        ]
        if problems:
            raise NetworkConfigurationError(
                "the NTP servers cannot be used with timesyncd", fields=problems
            )

    @staticmethod
    def render(servers: Sequence[NtpServer]) -> str:
        """The drop-in text."""
        names = " ".join(s.host for s in servers)
        return f"# Written by edge-agent from the provisioning archive.\n[Time]\nNTP={names}\n"

    def changes(self, servers: Sequence[NtpServer]) -> list[Change]:
        """The drop-in and the restart."""
        self.check(servers)
        if read_optional(self.path) == self.render(servers):
            return []
        out = [Change(str(self.path), "write", ", ".join(s.host for s in servers))]
        if self.restart_command:
            out.append(Change("systemd-timesyncd", "run", " ".join(self.restart_command)))
        return out

    def snapshot(self) -> Snapshot:
        """The drop-in as it is."""
        return {"path": str(self.path), "content": read_optional(self.path)}

    def apply(self, servers: Sequence[NtpServer]) -> None:
        """Write the drop-in and restart timesyncd."""
        self.check(servers)
        restore_file(self.path, self.render(servers))
        self._servers = tuple(servers)
        self._restart()

    def revert(self, snapshot: Snapshot) -> None:
        """Restore the drop-in and restart."""
        restore_file(Path(snapshot["path"]), snapshot["content"])
        self._restart()

    def _restart(self) -> None:
        if not self.restart_command:
            return
        try:
            run_command(self.restart_command, what="restart systemd-timesyncd")
        except NetworkApplyError as exc:
            raise TimeSyncError(exc.message, reason="TIMESYNCD_RESTART_FAILED") from exc

    def status(self) -> TimeStatus:
        """Synchronised when timesyncd's flag file exists."""
        synced = self.synced_flag.exists()
        configured = _timesyncd_servers(read_optional(self.path))
        return TimeStatus(
            synchronized=synced,
            server_name=configured[0] if synced and configured else "",
            server_address=configured[0]
            if synced and configured and _looks_ip(configured[0])
            else "",
            detail=f"{self.synced_flag} {'exists' if synced else 'is absent'}",
        )


def _timesyncd_servers(text: str | None) -> list[str]:
    for line in (text or "").splitlines():
        if line.startswith("NTP="):
            return line[4:].split()
    return []


class NoTimeBackend:
    """``none``: the agent leaves time alone and never claims the clock is synchronised."""

    name = "none"

    def changes(self, servers: Sequence[NtpServer]) -> list[Change]:
        """Nothing."""
        del servers
        return []

    def snapshot(self) -> Snapshot:
        """Nothing to record."""
        return {}

    def apply(self, servers: Sequence[NtpServer]) -> None:
        """Ignore the servers."""
        _log.info("NTP backend is 'none': %d server(s) not applied", len(servers))

    def revert(self, snapshot: Snapshot) -> None:
        """Nothing to restore."""
        del snapshot

    def status(self) -> TimeStatus:
        """Unknown, so not synchronised."""
        return TimeStatus(synchronized=False, detail="NTP backend is 'none'")


@dataclass(frozen=True, slots=True)
class SyncResult:
    """The outcome of :func:`wait_for_sync`."""

    trusted: bool
    waited_seconds: float
    status: TimeStatus

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {
            "clockTrusted": self.trusted,
            "waitedSeconds": round(self.waited_seconds, 3),
            "server": self.status.server_name,
            "detail": self.status.detail,
        }


def wait_for_sync(
    backend: TimeBackend,
    timeout: float,
    *,
    interval: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncResult:
    """Poll ``backend.status()`` until synchronised or ``timeout`` seconds have passed.

    Returns:
        Whether the clock is trusted now, how long it took and the last status.
    """
    start = clock()
    deadline = start + timeout
    while True:
        status = backend.status()
        now = clock()
        if status.synchronized:
            return SyncResult(trusted=True, waited_seconds=now - start, status=status)
        if now >= deadline:
            return SyncResult(trusted=False, waited_seconds=now - start, status=status)
        sleep(min(interval, max(deadline - now, 0.0)))
