"""A throw-away network lab on the real kernel.

Two namespaces per test: the appliance (``eth0``, ``eth1``, renamed veth ends) and a peer
acting as gateway (``gw0`` 198.18.1.1/24, ``gw1`` 198.18.2.1/24). The appliance starts with a
"previous" configuration (addresses, a default route, a static route) so rollbacks have
something exact to restore. Everything, including processes started inside the namespaces,
is removed afterwards even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.env import need_binary, need_root

HERE = Path(__file__).parent
INSPECT = HERE / "nsinspect.py"
REPO = HERE.parents[2]


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command on the host (``ip`` mostly)."""
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Lab:
    """The appliance namespace, its gateway peer and the agent's files."""

    ns: str
    peer: str
    tmp: Path
    config: Path
    extra_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "state" / "state.db"

    def in_ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def in_peer(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.peer, *argv]

    def agent_argv(self, *args: str) -> list[str]:
        return self.in_ns(sys.executable, "-m", "agent", "--config", str(self.config), *args)

    def agent(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``edge-agent ARGS`` inside the appliance namespace."""
        return subprocess.run(
            self.agent_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )

    def start(self, argv: list[str], name: str) -> subprocess.Popen[str]:
        """Start a child process (output in ``<tmp>/<name>.log``) that the lab stops at the end."""
        with (self.tmp / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(argv, text=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.children.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def inspect(self) -> dict[str, Any]:
        """What a status reader sees, and the complete netlink state, of eth0/eth1."""
        out = sh(*self.in_ns(sys.executable, str(INSPECT), "eth0", "eth1"))
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def payload_file(self, payload: dict[str, Any], name: str = "net.json") -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(payload))
        return path

    def write_config(self, **sections: dict[str, Any]) -> None:
        """Rewrite the agent's config, merging ``sections`` over the lab defaults."""
        for name, values in sections.items():
            self.extra_config.setdefault(name, {}).update(values)
        self.config.write_text(_toml(_lab_config(self.tmp, self.extra_config)))

    def marker_row(self) -> sqlite3.Row | None:
        if not self.db.exists():
            return None
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            try:
                row: sqlite3.Row | None = db.execute("SELECT * FROM netconf_trial").fetchone()
            except sqlite3.OperationalError:
                return None
            return row

    def history(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM netconf_history ORDER BY seq").fetchall()
        return [dict(r) for r in rows]


def _lab_config(tmp: Path, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "network": {
            "backend": "netlink",
            "resolv_conf": str(tmp / "resolv.conf"),
            "networkd_runtime_dir": str(tmp / "run-network"),
            "networkd_persist_dir": str(tmp / "etc-network"),
            "dry_run_root": str(tmp / "dry-run"),
        },
        "ntp": {"backend": "none"},
    }  # fmt: skip
    for name, values in extra.items():
        config.setdefault(name, {}).update(values)
    return config


def _toml(config: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


#: The default route's destination as netlink reports it.
DEFAULT_DST = "0.0.0.0"  # noqa: S104 - a route destination, not a bind address

PREVIOUS = [
    ("addr", "add", "198.18.1.10/24", "brd", "+", "dev", "eth0"),
    ("route", "add", "default", "via", "198.18.1.1", "dev", "eth0", "metric", "50"),
    ("addr", "add", "198.18.2.10/24", "brd", "+", "dev", "eth1"),
    ("route", "add", "198.18.200.0/24", "via", "198.18.2.1", "dev", "eth1", "proto", "static"),
]


def _netns_pids(name: str) -> list[int]:
    out = sh("ip", "netns", "pids", name, check=False)
    return [int(p) for p in out.stdout.split()]


def _teardown(lab: Lab) -> None:
    for proc in lab.children:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    # daemons the agent started inside the namespaces (dhclient): ours, stopped by pid
    for name in (lab.ns, lab.peer):
        for pid in _netns_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name in (lab.ns, lab.peer):
        sh("ip", "netns", "del", name, check=False)
    shutil.rmtree(Path("/etc/netns") / lab.ns, ignore_errors=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh appliance namespace with eth0/eth1, a gateway peer and a previous config."""
    need_root("network namespaces need root")
    need_binary("ip")
    token = secrets.token_hex(3)
    lab = Lab(
        ns=f"ea-dev-{token}", peer=f"ea-gw-{token}", tmp=tmp_path, config=tmp_path / "agent.toml"
    )
    lab.write_config()
    try:
        sh("ip", "netns", "add", lab.ns)
        sh("ip", "netns", "add", lab.peer)
        for i in (0, 1):
            dev, peer = f"ea{token}d{i}", f"ea{token}p{i}"
            sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", dev, "netns", lab.ns)
            sh("ip", "link", "set", peer, "netns", lab.peer)
            sh("ip", "-n", lab.ns, "link", "set", dev, "name", f"eth{i}")
            sh("ip", "-n", lab.peer, "link", "set", peer, "name", f"gw{i}")
            sh("ip", "-n", lab.ns, "link", "set", f"eth{i}", "up")
            sh("ip", "-n", lab.peer, "link", "set", f"gw{i}", "up")
            sh("ip", "-n", lab.peer, "addr", "add", f"198.18.{i + 1}.1/24", "dev", f"gw{i}")
        sh("ip", "-n", lab.ns, "link", "set", "lo", "up")
        sh("ip", "-n", lab.peer, "link", "set", "lo", "up")
        for args in PREVIOUS:
            sh("ip", "-n", lab.ns, *args)
        # the kernel's IPv6 link-local addresses are part of the exact state: let their
        # duplicate address detection finish before a test takes its "before" picture
        wait_for(
            lambda: not sh("ip", "-n", lab.ns, "-6", "addr", "show", "tentative").stdout.strip(),
            10,
            "IPv6 duplicate address detection",
        )
        # dhclient-script rewrites /etc/resolv.conf: inside the namespace that is this file
        (Path("/etc/netns") / lab.ns).mkdir(parents=True, exist_ok=True)
        (Path("/etc/netns") / lab.ns / "resolv.conf").write_text("")
        yield lab
    finally:
        _teardown(lab)
