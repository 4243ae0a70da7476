"""DHCP clients of the netlink backend: the agent's own dhcpcd, and clients found running.

The agent does not speak DHCP itself. A DHCP port is handed to **dhcpcd** (Debian's
``dhcpcd-base``), one process per interface, started as ``dhcp_command`` (default
``dhcpcd -4 -b -m {metric} {ifname}`` plus options): ``-m`` gives the port's routes its
metric (Ethernet0 100, Ethernet1 200), ``-4`` keeps it to IPv4 and ``-b`` returns at once.

dhcpcd keeps its pid file and control socket in ``/run/dhcpcd`` and its lease in
``/var/lib/dhcpcd``, and writes DNS to ``/etc/resolv.conf`` (compiled-in paths). The agent
runs it in a private mount namespace in which those are the agent's own directories
(``<agent.runtime_dir>/dhcpcd`` and ``<agent.state_dir>/dhcpcd``) and ``/etc/resolv.conf`` is
``network.resolv_conf``, so two namespaces with the same interface name never share a pid
file or a lease, and the agent finds its client by its own pid file.

Before a trial the backend records which DHCP client serves each port (:func:`find_clients`):
the agent's own dhcpcd, or a client the system started (``dhclient``, ``dhcpcd``, ``udhcpc``
running in this network namespace and naming the interface), with the command that started
it. A revert starts that client again, so a port that was on DHCP is on DHCP again rather
than holding a frozen copy of its lease.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.netconf import osproc
from agent.netconf.base import expand, run_command
from agent.netconf.files import restore_file

_log = logging.getLogger(__name__)

DEFAULT_DHCP_COMMAND = ("dhcpcd", "-4", "-b", "-m", "{metric}", "-C", "hostname", "{ifname}")
CLIENT_NAMES = ("dhcpcd", "dhclient", "udhcpc")
SYSTEM_RESOLV_CONF = Path("/etc/resolv.conf")
DHCPCD_RUN_DIR = "/run/dhcpcd"
DHCPCD_DB_DIR = "/var/lib/dhcpcd"

# Runs in a fresh private mount namespace (unshare --mount): the three mounts are seen by
# dhcpcd and its helpers only.
_PRIVATE_PATHS = """set -e
mkdir -p "$4" "$5"
mount --bind "$1" "$4"
mount --bind "$2" "$5"
if [ -n "$3" ]; then mount --bind "$3" /etc/resolv.conf; fi
shift 5
exec "$@"
"""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """A DHCP client serving one interface, and how to start it again."""

    ifname: str
    pid: int
    argv: tuple[str, ...]
    ours: bool
    metric: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form (kept in the trial snapshot)."""
        return {
            "ifname": self.ifname,
            "pid": self.pid,
            "argv": list(self.argv),
            "ours": self.ours,
            "metric": self.metric,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientRecord:
        """Rebuild from :meth:`to_json` output."""
        metric = data.get("metric")
        return cls(
            ifname=data["ifname"],
            pid=int(data["pid"]),
            argv=tuple(data["argv"]),
            ours=bool(data["ours"]),
            metric=None if metric is None else int(metric),
        )


class Dhcpcd:
    """The agent's own dhcpcd per interface, with the agent's paths."""

    def __init__(
        self,
        *,
        run_dir: Path,
        lease_dir: Path,
        resolv_conf: Path = SYSTEM_RESOLV_CONF,
        command: Sequence[str] = DEFAULT_DHCP_COMMAND,
    ) -> None:
        self.run_dir = run_dir
        self.lease_dir = lease_dir
        self.resolv_conf = resolv_conf
        self.command = tuple(command)

    def argv(self, ifname: str, metric: int) -> list[str]:
        """The full command line: the private mounts, then ``dhcp_command``."""
        resolv = ""
        if os.path.realpath(self.resolv_conf) != os.path.realpath(SYSTEM_RESOLV_CONF):
            resolv = str(self.resolv_conf)
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _PRIVATE_PATHS, "edge-agent-dhcp",
            str(self.run_dir), str(self.lease_dir), resolv, DHCPCD_RUN_DIR, DHCPCD_DB_DIR,
            *expand(self.command, ifname=ifname, metric=str(metric)),
        ]  # fmt: skip

    def _record_path(self, ifname: str) -> Path:
        return self.run_dir / f"{ifname}.edge-agent.json"

    def pid(self, ifname: str) -> int | None:
        """The pid of our running dhcpcd on ``ifname``, if any."""
        for name in (f"{ifname}-4.pid", f"{ifname}.pid", f"{ifname}-6.pid"):
            pid = osproc.read_pid(self.run_dir / name)
            if pid is not None and osproc.alive(pid):
                return pid
        return None

    def metric(self, ifname: str) -> int | None:
        """The metric our dhcpcd on ``ifname`` was started with."""
        try:
            return int(json.loads(self._record_path(ifname).read_text())["metric"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start(self, ifname: str, metric: int) -> None:
        """Start dhcpcd on ``ifname`` (stopping ours first if it runs)."""
        self.stop(ifname)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        if not self.resolv_conf.exists():
            self.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
            self.resolv_conf.touch()
        argv = self.argv(ifname, metric)
        restore_file(self._record_path(ifname), json.dumps({"metric": metric, "argv": argv}))
        run_command(argv, what=f"start the DHCP client on {ifname}")

    def stop(self, ifname: str) -> None:
        """Stop our dhcpcd on ``ifname``; its lease stays valid for the next start."""
        pid = self.pid(ifname)
        if pid is not None:
            osproc.terminate(pid)
        self._record_path(ifname).unlink(missing_ok=True)


def _names_interface(proc: osproc.Process, ifname: str) -> bool:
    if proc.comm not in CLIENT_NAMES:
        return False
    words = " ".join(proc.argv).split()
    if words[:1] == ["dhcpcd:"]:  # dhcpcd rewrites its title: "dhcpcd: eth1 [ip4]"
        return words[1:2] == [ifname]
    return ifname in words[1:]


def _rebuild(proc: osproc.Process, ifname: str) -> tuple[str, ...]:
    words = " ".join(proc.argv).split()
    if words[:1] != ["dhcpcd:"]:
        return proc.argv
    flags = {"[ip4]": "-4", "[ip6]": "-6"}
    families = [flags[w] for w in words[2:] if w in flags]
    return ("dhcpcd", *(families if len(families) == 1 else []), ifname)


def find_clients(ifnames: Sequence[str], ours: Dhcpcd) -> dict[str, list[ClientRecord]]:
    """The DHCP clients serving each interface now: ours first, then any the system started."""
    out: dict[str, list[ClientRecord]] = {}
    mine: dict[str, int | None] = {}
    for ifname in ifnames:
        mine[ifname] = pid = ours.pid(ifname)
        out[ifname] = []
        if pid is not None:
            out[ifname].append(ClientRecord(ifname, pid, (), ours=True, metric=ours.metric(ifname)))
    for proc in osproc.processes_in_my_netns(CLIENT_NAMES):
        for ifname in ifnames:
            if proc.pid != mine[ifname] and _names_interface(proc, ifname):
                out[ifname].append(
                    ClientRecord(ifname, proc.pid, _rebuild(proc, ifname), ours=False)
                )
    return out


def stop_client(record: ClientRecord, ours: Dhcpcd) -> None:
    """Stop one recorded client (ours through its pid file, others by pid)."""
    if record.ours:
        ours.stop(record.ifname)
    else:
        osproc.terminate(record.pid)


def restart_client(record: ClientRecord, ours: Dhcpcd, default_metric: int) -> None:
    """Start a recorded client again, the way it was started.

    Raises:
        NetworkApplyError: Our dhcpcd cannot be started.
        OSError: A system client's command cannot be started.
    """
    if record.ours:
        ours.start(record.ifname, record.metric if record.metric is not None else default_metric)
    else:
        _log.info("restarting the DHCP client on %s: %s", record.ifname, " ".join(record.argv))
        osproc.spawn_detached(record.argv)
