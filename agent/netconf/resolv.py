"""``resolv.conf``: written through whatever manages it, restored as it was (links as links).

* A plain file is rewritten in place (truncate, write, fsync), so a DHCP client that was
  given the same file keeps seeing it.
* A symbolic link stays a link. When it points into a resolver's own directory the agent
  goes through that resolver: ``resolvconf`` (``/run/resolvconf/``: ``resolvconf -a
  edge-agent`` with the servers on standard input, ``-d`` to drop them) or
  systemd-resolved (``/run/systemd/resolve/``: ``resolvectl dns IFNAME SERVERS...``, and
  ``resolvectl revert IFNAME``). Any other link is written through to its target.

A snapshot records the kind (missing, file or link), the link target and the content, and a
restore puts exactly that back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Literal

from agent.netconf.base import Snapshot, run_command
from agent.netconf.plan import NetworkPlan

Manager = Literal["resolvconf", "systemd-resolved"]
RESOLVCONF_DIRS = ("/run/resolvconf/", "/etc/resolvconf/run/")
RESOLVED_DIR = "/run/systemd/resolve/"
RECORD = "edge-agent"


def manager(path: Path) -> Manager | None:
    """The resolver that owns ``path`` (a link into its directory, with its tool installed)."""
    if not path.is_symlink():
        return None
    target = os.path.realpath(path)
    raw = str(path.readlink())
    for where in (target, raw):
        if where.startswith(RESOLVCONF_DIRS) and shutil.which("resolvconf"):
            return "resolvconf"
        if where.startswith(RESOLVED_DIR) and shutil.which("resolvectl"):
            return "systemd-resolved"
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


def snapshot(path: Path) -> Snapshot:
    """What ``path`` is now: missing, a file (with content) or a link (with its target)."""
    if path.is_symlink():
        kind = "link"
        target: str | None = str(path.readlink())
    elif path.exists():
        kind, target = "file", None
    else:
        kind, target = "missing", None
    record = None
    if manager(path) == "resolvconf":
        # Debian's resolvconf keeps records in interface/, openresolv in interfaces/
        for sub in ("interface", "interfaces"):
            record = record or _read(Path(RESOLVCONF_DIRS[0]) / sub / RECORD)
    return {
        "path": str(path),
        "kind": kind,
        "target": target,
        "content": _read(path) if kind != "missing" else None,
        "record": record,
    }


def _write_in_place(path: Path, text: str) -> None:
    """Rewrite a file's content through its inode (and through a link to its target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _relink(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.edge-agent-link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(path)


def write(path: Path, plan: NetworkPlan, text: str) -> None:
    """Give the plan's DNS servers to the resolver that manages ``path``, or write it."""
    owner = manager(path)
    if owner == "resolvconf":
        run_command(
            ["sh", "-c", 'printf "%s" "$1" | resolvconf -a "$2"', "sh", text, RECORD],
            what="hand the DNS servers to resolvconf",
        )
        return
    if owner == "systemd-resolved":
        for port in plan.ports:
            if port.dns:
                run_command(
                    ["resolvectl", "dns", port.ifname, *[str(d) for d in port.dns]],
                    what=f"hand the DNS servers of {port.ifname} to systemd-resolved",
                )
        return
    _write_in_place(path, text)


def _restore_manager(owner: Manager, snap: Snapshot, ifnames: list[str]) -> None:
    if owner == "resolvconf":
        if snap.get("record") is None:
            run_command(["resolvconf", "-d", RECORD], what="drop ours from resolvconf")
        else:
            run_command(
                ["sh", "-c", 'printf "%s" "$1" | resolvconf -a "$2"', "sh", snap["record"], RECORD],
                what="restore resolvconf",
            )
        return
    for ifname in ifnames:
        run_command(["resolvectl", "revert", ifname], what=f"revert DNS of {ifname}")


def _restore_path(path: Path, snap: Snapshot, managed: bool) -> None:
    if snap["kind"] == "missing":
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if snap["kind"] == "link":
        if not path.is_symlink() or str(path.readlink()) != snap["target"]:
            _relink(path, snap["target"])
        if not managed and snap["content"] is not None and _read(path) != snap["content"]:
            _write_in_place(path, snap["content"])
        return
    if path.is_symlink():
        path.unlink()
    if _read(path) != snap["content"]:
        _write_in_place(path, snap["content"])


def restore(snap: Snapshot, ifnames: list[str]) -> list[str]:
    """Put ``resolv.conf`` back exactly; returns what could not be restored."""
    path = Path(snap["path"])
    owner = manager(path) if snap["kind"] == "link" else None
    try:
        if owner is not None:
            _restore_manager(owner, snap, ifnames)
        _restore_path(path, snap, managed=owner is not None)
    except Exception as exc:  # noqa: BLE001 - a revert records every failure and goes on
        return [f"{path}: {exc}"]
    return []
