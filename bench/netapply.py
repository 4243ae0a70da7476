"""Apply + commit per port (netlink backend) beside plain ``ip addr add`` + ``ip route add``.

Runs as root in a throw-away network namespace (veth pairs renamed eth0/eth1, a gateway peer,
addresses from 198.18.0.0/15) and removes it afterwards. The agent side is the whole trial
without the probe's waiting: snapshot, durable trial marker (SQLite, synchronous=FULL),
apply over rtnetlink, commit record. The baseline is what a shell script would do for the
same change: ``ip addr flush`` + ``ip addr add`` + ``ip route add`` on each port.

    .venv/bin/python bench/netapply.py [--rounds N]
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.netconf.base import ProbeResult
from agent.netconf.plan import NetworkPlan, PortPlan
from agent.netconf.timesync import NoTimeBackend


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _plan(round_no: int) -> NetworkPlan:
    host = 10 + round_no % 200
    return NetworkPlan(
        ports=(
            PortPlan(
                "Ethernet0",
                "eth0",
                "static",
                ipaddress.IPv4Interface(f"198.18.1.{host}/24"),
                ipaddress.IPv4Address("198.18.1.1"),
                (),
                100,
            ),
            PortPlan(
                "Ethernet1",
                "eth1",
                "static",
                ipaddress.IPv4Interface(f"198.18.2.{host}/24"),
                ipaddress.IPv4Address("198.18.2.1"),
                (),
                200,
            ),
        )
    )


def _no_wait(plan: NetworkPlan, window: float, endpoint: tuple[str, int] | None) -> ProbeResult:
    del plan, window, endpoint
    return ProbeResult(ok=True, message="probe wait excluded from the benchmark")


def inner(rounds: int) -> None:
    """Runs inside the namespace."""
    from agent.netconf.dhcp import Dhcpcd  # noqa: PLC0415 - after entering the netns
    from agent.netconf.netlink import NetlinkBackend  # noqa: PLC0415
    from agent.netconf.rollback import NetConf  # noqa: PLC0415
    from agent.store import Store  # noqa: PLC0415

    agent_ms: list[float] = []
    baseline_ms: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        client = Dhcpcd(run_dir=Path(tmp) / "run", lease_dir=Path(tmp) / "lib")
        backend = NetlinkBackend(resolv_conf=Path(tmp) / "resolv.conf", dhcp_client=client)
        with Store(Path(tmp) / "state.db") as store:
            netconf = NetConf(store, backend, NoTimeBackend(), prober=_no_wait)
            netconf.apply(_plan(0))  # warm up
            # interleaved, so both sides see the same machine load
            for i in range(1, rounds + 1):
                start = time.perf_counter()
                result = netconf.apply(_plan(i))
                agent_ms.append((time.perf_counter() - start) * 1000 / 2)
                if result.outcome != "committed":
                    raise SystemExit(f"apply was not committed: {result.message}")
                plan = _plan(i + rounds)
                start = time.perf_counter()
                for port in plan.ports:
                    _sh("ip", "addr", "flush", "dev", port.ifname)
                    _sh("ip", "addr", "add", str(port.address), "dev", port.ifname)
                    _sh(
                        "ip", "route", "add", "default", "via", str(port.gateway),
                        "dev", port.ifname, "metric", str(port.metric),
                    )  # fmt: skip
                baseline_ms.append((time.perf_counter() - start) * 1000 / 2)

    agent = statistics.median(agent_ms)
    base = statistics.median(baseline_ms)
    print(f"rounds: {rounds} (2 ports each; figures are per port, medians)")
    print(f"agent apply+commit (netlink, durable marker, no probe wait): {agent:8.3f} ms/port")
    print(f"baseline ip addr flush+add + ip route add:                  {base:8.3f} ms/port")
    print(f"p90 agent {statistics.quantiles(agent_ms, n=10)[-1]:.3f} ms, "
          f"p90 baseline {statistics.quantiles(baseline_ms, n=10)[-1]:.3f} ms")  # fmt: skip
    print(f"ratio agent/baseline: {agent / base:.2f}")


def outer(rounds: int) -> int:
    """Builds the namespace, runs :func:`inner` inside it, cleans up."""
    token = secrets.token_hex(3)
    ns, peer = f"ea-bench-{token}", f"ea-bgw-{token}"
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "netns", "add", peer)
        for i in (0, 1):
            dev, gw = f"eb{token}d{i}", f"eb{token}p{i}"
            _sh("ip", "link", "add", dev, "type", "veth", "peer", "name", gw)
            _sh("ip", "link", "set", dev, "netns", ns)
            _sh("ip", "link", "set", gw, "netns", peer)
            _sh("ip", "-n", ns, "link", "set", dev, "name", f"eth{i}")
            _sh("ip", "-n", ns, "link", "set", f"eth{i}", "up")
            _sh("ip", "-n", peer, "link", "set", gw, "up")
            _sh("ip", "-n", peer, "addr", "add", f"198.18.{i + 1}.1/24", "dev", gw)
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                __file__,
                "--inner",
                "--rounds",
                str(rounds),
            ],
            check=False,
        ).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "netns", "del", peer], check=False)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.rounds)
        return 0
    return outer(args.rounds)


if __name__ == "__main__":
    sys.exit(main())
