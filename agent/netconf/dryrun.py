"""The ``dry-run`` backend: renders what would be configured under a root directory.

Nothing outside ``root`` changes: the ``.network`` files land in
``<root>/etc/systemd/network``, DNS in ``<root>/etc/resolv.conf``. Used by ``net plan`` and
the demo, and handy for reviewing an archive's settings on a workstation.
"""

from __future__ import annotations

from pathlib import Path

from agent.netconf.base import Change, Snapshot
from agent.netconf.files import read_optional, restore_file
from agent.netconf.plan import NetworkPlan
from agent.netconf.render import persistent_name, render_network_file, render_resolv_conf


class DryRunBackend:
    """Writes the rendered configuration under ``root`` and nowhere else."""

    name = "dry-run"
    live = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def rendered(self, plan: NetworkPlan) -> dict[Path, str]:
        """Every file the plan renders, by path under the root."""
        out = {
            self.root / "etc/systemd/network" / persistent_name(p.port): render_network_file(p)
            for p in plan.ports
        }
        resolv = render_resolv_conf(plan)
        if resolv is not None:
            out[self.root / "etc/resolv.conf"] = resolv
        return out

    def changes(self, plan: NetworkPlan) -> list[Change]:
        """The files under the root that would be created or changed."""
        return [
            Change(str(path), "write", f"{len(text.splitlines())} lines")
            for path, text in self.rendered(plan).items()
            if read_optional(path) != text
        ]

    def snapshot(self, plan: NetworkPlan) -> Snapshot:
        """The current content of each file the plan renders."""
        return {"files": {str(p): read_optional(p) for p in self.rendered(plan)}}

    def apply(self, plan: NetworkPlan) -> None:
        """Write the files under the root."""
        for path, text in self.rendered(plan).items():
            restore_file(path, text)

    def commit(self, plan: NetworkPlan) -> None:
        """Nothing more to do."""
        del plan

    def revert(self, snapshot: Snapshot) -> list[str]:
        """Put the files back as they were; returns the files that could not be restored."""
        failures = []
        for path, content in snapshot["files"].items():
            try:
                restore_file(Path(path), content)
            except OSError as exc:
                failures.append(f"{path}: {exc.strerror or exc}")
        return failures

    def reapply(self, plan: NetworkPlan) -> None:
        """Nothing to do."""
        del plan
