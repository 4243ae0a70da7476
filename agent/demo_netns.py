"""The demo's private network (root only): an appliance namespace and a gateway namespace.

The appliance namespace has ``eth0`` and ``eth1`` (veth ends) and its own loopback; the
gateway namespace holds the other ends with the gateways the demo archive names
(198.18.10.1 and 198.18.11.1, in the benchmarking range). The demo process moves its main
thread into the appliance namespace (``setns``; threads and processes it starts afterwards
are in there too), so the broker, the endpoint and the agent all live on that namespace's
loopback and the netlink backend changes only that namespace's ports. :meth:`remove` comes
back, stops what is left in the two namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
#: (port, appliance address, gateway address) of the demo's two networks.
PORTS = (("eth0", "198.18.10.20", "198.18.10.1"), ("eth1", "198.18.11.20", "198.18.11.1"))


def available() -> str | None:
    """Why the demo cannot use a network namespace here (None: it can)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@dataclass
class DemoNamespace:
    """The two namespaces; :meth:`create`, :meth:`enter`, then :meth:`remove`."""

    token: str = field(default_factory=lambda: secrets.token_hex(3))
    _home: int | None = None
    _made: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The appliance namespace."""
        return f"ea-demo-{self.token}"

    @property
    def peer(self) -> str:
        """The gateway namespace."""
        return f"ea-demogw-{self.token}"

    def create(self) -> None:
        """Both namespaces, the veth pairs, the gateways' addresses; everything up."""
        for name in (self.name, self.peer):
            _ip("netns", "add", name)
            self._made.append(name)
        for index, (port, _address, gateway) in enumerate(PORTS):
            dev, end = f"ead{self.token}{index}", f"eag{self.token}{index}"
            _ip("link", "add", dev, "type", "veth", "peer", "name", end)
            _ip("link", "set", dev, "netns", self.name)
            _ip("link", "set", end, "netns", self.peer)
            _ip("-n", self.name, "link", "set", dev, "name", port)
            _ip("-n", self.peer, "link", "set", end, "name", f"gw{index}")
            _ip("-n", self.name, "link", "set", port, "up")
            _ip("-n", self.peer, "link", "set", f"gw{index}", "up")
            _ip("-n", self.peer, "addr", "add", f"{gateway}/24", "dev", f"gw{index}")
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.peer, "link", "set", "lo", "up")

    def enter(self) -> None:
        """Move the calling thread into the appliance namespace."""
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)

    def leave(self) -> None:
        """Back to the namespace the thread came from."""
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None

    def addresses(self) -> dict[str, list[str]]:
        """The IPv4 addresses of eth0/eth1 in the appliance namespace (``ip -br``)."""
        out: dict[str, list[str]] = {}
        for port, _address, _gateway in PORTS:
            done = subprocess.run(
                ["ip", "-n", self.name, "-4", "-br", "addr", "show", "dev", port],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            )
            fields = done.stdout.split()
            out[port] = fields[2:] if len(fields) > 2 else []  # noqa: PLR2004 - name, state
        return out

    def remove(self) -> None:
        """Leave, stop whatever still runs in the namespaces, delete them."""
        self.leave()
        for name in self._made:
            pids = subprocess.run(
                ["ip", "netns", "pids", name],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._made.clear()
