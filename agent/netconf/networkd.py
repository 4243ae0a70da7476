"""The ``networkd`` backend: systemd-networkd ``.network`` files.

A trial is written to the runtime directory (``/run/systemd/network``, gone at reboot, so a
power cut reverts it) as ``09-edge-agent-trial-<port>.network``; it sorts before the
persistent ``10-edge-agent-<port>.network`` and so wins for its link while it exists. After
the probe passes, the persistent file is written to ``/etc/systemd/network`` and the trial
file removed. networkd is told with ``networkctl reload`` and ``networkctl reconfigure IF``
(both configurable).

Revert restores both files exactly as they were and reloads. Whether networkd manages a port
without the trial file is decided the way networkd decides it
(:mod:`agent.netconf.networkd_match`: every ``.network`` file in ``/etc``, ``/run`` and the
distribution directories, in networkd's order, by its ``[Match]`` section). A managed port is
left to networkd (only the trial's own address and default route are taken away if they are
still there and were not there before); a port that no file matches gets its live addresses
and routes restored from the snapshot, since networkd leaves an unmanaged link as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from agent.netconf import live, netstate
from agent.netconf.base import Change, NetworkApplyError, Snapshot, expand, run_command
from agent.netconf.files import read_optional, restore_file
from agent.netconf.networkd_match import LinkFacts, managing_file
from agent.netconf.plan import NetworkPlan, PortPlan
from agent.netconf.render import persistent_name, render_network_file, trial_name

_log = logging.getLogger(__name__)

DEFAULT_RUNTIME_DIR = Path("/run/systemd/network")
DEFAULT_PERSIST_DIR = Path("/etc/systemd/network")
DEFAULT_RELOAD_COMMAND = ("networkctl", "reload")
DEFAULT_RECONFIGURE_COMMAND = ("networkctl", "reconfigure", "{ifname}")
DEFAULT_DIST_DIRS = (Path("/usr/local/lib/systemd/network"), Path("/usr/lib/systemd/network"))


class NetworkdBackend:
    """Writes ``.network`` files and asks systemd-networkd to use them."""

    name = "networkd"
    live = True

    def __init__(
        self,
        *,
        runtime_dir: Path = DEFAULT_RUNTIME_DIR,
        persist_dir: Path = DEFAULT_PERSIST_DIR,
        reload_command: Sequence[str] = DEFAULT_RELOAD_COMMAND,
        reconfigure_command: Sequence[str] = DEFAULT_RECONFIGURE_COMMAND,
        dist_dirs: Sequence[Path] = DEFAULT_DIST_DIRS,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.persist_dir = persist_dir
        self.reload_command = tuple(reload_command)
        self.reconfigure_command = tuple(reconfigure_command)
        self.dist_dirs = tuple(dist_dirs)

    @property
    def search_dirs(self) -> tuple[Path, ...]:
        """Networkd's directories in precedence order (``/etc``, ``/run``, distribution)."""
        return (self.persist_dir, self.runtime_dir, *self.dist_dirs)

    def _files(self, port: PortPlan) -> tuple[Path, Path]:
        return self.runtime_dir / trial_name(port.port), self.persist_dir / persistent_name(
            port.port
        )

    def changes(self, plan: NetworkPlan) -> list[Change]:
        """The trial files to write, then the persistent files a commit writes."""
        out: list[Change] = []
        for port in plan.ports:
            trial, persistent = self._files(port)
            text = render_network_file(port)
            out.append(Change(str(trial), "write", f"trial for {port.port} ({port.ifname})"))
            if read_optional(persistent) != text:
                out.append(Change(str(persistent), "write", f"on commit: {port.port}"))
        if plan.ports and self.reload_command:
            out.append(Change("systemd-networkd", "run", " ".join(self.reload_command)))
        return out

    def snapshot(self, plan: NetworkPlan) -> Snapshot:
        """Both files of each port, the live state of its link and the file managing it."""
        files: dict[str, str | None] = {}
        managed: dict[str, str | None] = {}
        with live.ipr() as route:
            ports = netstate.snapshot_ports(route, [p.ifname for p in plan.ports])
            links = {p.ifname: live.link(route, p.ifname) for p in plan.ports}
        trial_names = [trial_name(p.port) for p in plan.ports]
        for port in plan.ports:
            trial, persistent = self._files(port)
            files[str(trial)] = read_optional(trial)
            files[str(persistent)] = read_optional(persistent)
            info = links[port.ifname]
            facts = LinkFacts(port.ifname, info.mac if info else "")
            owner = managing_file(facts, self.search_dirs, ignore=trial_names)
            managed[port.ifname] = None if owner is None else str(owner)
        unmanaged = [name for name, owner in managed.items() if owner is None]
        trial_ports = {
            p.ifname: {
                "address": str(p.address) if p.address else None,
                "gateway": str(p.gateway) if p.gateway else None,
                "metric": p.metric,
            }
            for p in plan.ports
        }
        return {
            "files": files,
            "ports": ports,
            "managed": managed,
            "unmanaged": unmanaged,
            "trial": trial_ports,
        }

    def apply(self, plan: NetworkPlan) -> None:
        """Write the trial files and reload networkd."""
        with live.ipr() as route:
            for port in plan.ports:
                live.require_link(route, port.ifname)
        for port in plan.ports:
            trial, _ = self._files(port)
            restore_file(trial, render_network_file(port))
        self._reload([p.ifname for p in plan.ports])

    def commit(self, plan: NetworkPlan) -> None:
        """Persist the files and drop the trial copies."""
        for port in plan.ports:
            trial, persistent = self._files(port)
            restore_file(persistent, render_network_file(port))
            trial.unlink(missing_ok=True)
        self._reload([])

    def revert(self, snapshot: Snapshot) -> list[str]:
        """Put both files back, reload, restore the live state of links no file manages."""
        failures: list[str] = []
        for path, content in snapshot["files"].items():
            try:
                restore_file(Path(path), content)
            except OSError as exc:
                failures.append(f"{path}: {exc.strerror or exc}")
        try:
            self._reload([p["ifname"] for p in snapshot["ports"]])
        except NetworkApplyError as exc:
            failures.append(exc.message)
        unmanaged = set(snapshot["unmanaged"])
        trial = snapshot.get("trial", {})
        with live.ipr() as route:
            for port in snapshot["ports"]:
                if port["ifname"] in unmanaged:
                    failures += netstate.restore_port(route, port)
                elif port["ifname"] in trial and port["exists"]:
                    # networkd owns the link again; only what the trial file added goes
                    failures += netstate.remove_trial_leftovers(route, port, trial[port["ifname"]])
        return failures

    def reapply(self, plan: NetworkPlan) -> None:
        """Nothing to do: networkd reads the persistent files at boot."""
        del plan

    def _reload(self, ifnames: list[str]) -> None:
        if self.reload_command:
            run_command(self.reload_command, what="reload systemd-networkd")
        if self.reconfigure_command:
            for ifname in ifnames:
                run_command(
                    expand(self.reconfigure_command, ifname=ifname),
                    what=f"reconfigure {ifname}",
                )
