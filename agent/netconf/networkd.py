"""The ``networkd`` backend: systemd-networkd ``.network`` files.

A trial is written to the runtime directory (``/run/systemd/network``, gone at reboot, so a
power cut reverts it) as ``09-edge-agent-trial-<port>.network``; it sorts before the
persistent ``10-edge-agent-<port>.network`` and so wins for its link while it exists. After
the probe passes, the persistent file is written to ``/etc/systemd/network`` and the trial
file removed. networkd is told with ``networkctl reload`` and ``networkctl reconfigure IF``
(both configurable).

Revert restores both files exactly as they were and reloads. A port that had no file of ours
before (networkd did not manage it for us) also gets its live addresses and routes restored
from the snapshot, since networkd leaves an unmanaged link as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from agent.netconf import live
from agent.netconf.base import Change, Snapshot, expand, run_command
from agent.netconf.files import read_optional, restore_file
from agent.netconf.plan import NetworkPlan, PortPlan
from agent.netconf.render import persistent_name, render_network_file, trial_name

_log = logging.getLogger(__name__)

DEFAULT_RUNTIME_DIR = Path("/run/systemd/network")
DEFAULT_PERSIST_DIR = Path("/etc/systemd/network")
DEFAULT_RELOAD_COMMAND = ("networkctl", "reload")
DEFAULT_RECONFIGURE_COMMAND = ("networkctl", "reconfigure", "{ifname}")


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
    ) -> None:
        self.runtime_dir = runtime_dir
        self.persist_dir = persist_dir
        self.reload_command = tuple(reload_command)
        self.reconfigure_command = tuple(reconfigure_command)

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
        """Both files of each port, and the live state of its interface."""
        files: dict[str, str | None] = {}
        with live.ipr() as route:
            ports = [live.snapshot_port(route, p.ifname) for p in plan.ports]
        unmanaged: list[str] = []
        for port in plan.ports:
            trial, persistent = self._files(port)
            files[str(trial)] = read_optional(trial)
            files[str(persistent)] = read_optional(persistent)
            if files[str(persistent)] is None:
                unmanaged.append(port.ifname)
        return {"files": files, "ports": ports, "unmanaged": unmanaged}

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

    def revert(self, snapshot: Snapshot) -> None:
        """Put both files back as they were, reload, restore unmanaged links' live state."""
        for path, content in snapshot["files"].items():
            restore_file(Path(path), content)
        self._reload([p["ifname"] for p in snapshot["ports"]])
        unmanaged = set(snapshot["unmanaged"])
        with live.ipr() as route:
            for port in snapshot["ports"]:
                if port["ifname"] in unmanaged:
                    live.restore_port(route, port)

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
