"""Recovery on the real kernel: exact revert of complete state, DHCP clients, start-up hook.

Every comparison here is of full ``ip -j`` dumps (addresses of every link, routes of every
table in both families, policy rules), normalised only where the kernel itself moves on
(lifetimes count down, so a finite one is compared as "finite").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.env import need_binary
from tests.helpers.network import static_ip
from tests.integration.netconf.conftest import Lab, sh, wait_for

pytestmark = pytest.mark.netns

FOREVER = 4294967295
DEAD_GATEWAYS = {
    "Ethernet0": static_ip("198.18.1.30", "24", "198.18.1.99", ["198.18.1.54"]),
    "Ethernet1": static_ip("198.18.2.30", "24", "198.18.2.99", []),
}


def dumps(lab: Lab) -> dict[str, Any]:
    """``ip -j`` addresses, routes of every table (v4 and v6) and rules, normalised."""

    def ip(*args: str) -> Any:
        return json.loads(sh("ip", "-n", lab.ns, "-j", *args).stdout or "[]")

    links = ip("addr", "show")
    for link in links:
        for entry in link.get("addr_info", []):
            for key in ("valid_life_time", "preferred_life_time"):
                if key in entry:
                    entry[key] = "forever" if entry[key] == FOREVER else "finite"

    def ordered(items: list[Any]) -> list[Any]:
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))

    return {
        "addr": ordered(links),
        "route4": ordered(ip("-4", "route", "show", "table", "all")),
        "route6": ordered(ip("-6", "route", "show", "table", "all")),
        "rule4": ordered(ip("-4", "rule", "show")),
        "rule6": ordered(ip("-6", "rule", "show")),
    }


def start_dnsmasq(lab: Lab, port: int) -> Path:
    """A DHCP server on gw<port> (198.18.<port+1>.100-150, router .1, DNS .53)."""
    for binary in ("dnsmasq", "dhcpcd", "unshare"):  # the server, and the agent's client
        need_binary(binary)
    net = f"198.18.{port + 1}"
    leases = lab.tmp / f"dnsmasq{port}.leases"
    name = f"dnsmasq{port}"
    proc = lab.start(
        lab.in_peer(
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--log-dhcp",
            f"--interface=gw{port}", "--bind-interfaces", "--dhcp-authoritative",
            f"--dhcp-range={net}.100,{net}.150,255.255.255.0,1h",
            f"--dhcp-option=option:router,{net}.1", f"--dhcp-option=option:dns-server,{net}.53",
            f"--dhcp-leasefile={leases}",
        ),
        name,
    )  # fmt: skip
    wait_for(
        lambda: "sockets bound exclusively" in lab.log(name) or proc.poll() is not None,
        10,
        f"{name} to listen",
    )
    assert proc.poll() is None, lab.log(name)
    return leases


def acks(lab: Lab, port: int) -> int:
    return lab.log(f"dnsmasq{port}").count(f"DHCPACK(gw{port})")


def default_routes(lab: Lab) -> list[tuple[str, str, int, str]]:
    out = json.loads(sh("ip", "-n", lab.ns, "-j", "-4", "route", "show", "default").stdout)
    return sorted(
        (r["dev"], r["gateway"], r.get("metric", 0), r.get("protocol", "boot")) for r in out
    )


def our_dhcpcd_pid(lab: Lab, ifname: str) -> int | None:
    path = lab.tmp / "run" / "dhcpcd" / f"{ifname}-4.pid"
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid in ns_pids(lab) else None


def ns_pids(lab: Lab) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", lab.ns).stdout.split()]


def apply(lab: Lab, payload: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return lab.agent("net", "apply", str(lab.payload_file(payload)), *args)


def add_rich_state(lab: Lab) -> None:
    """An onlink route, a policy-routing table with its rule, IPv6 addresses and a v6 route."""
    for args in (
        ("route", "add", "198.18.9.0/24", "via", "198.18.77.1", "dev", "eth0", "onlink"),
        ("rule", "add", "from", "198.18.1.10", "table", "100", "priority", "1000"),
        ("route", "add", "default", "via", "198.18.1.1", "dev", "eth0", "table", "100",
         "metric", "5", "proto", "static"),
        ("route", "add", "198.18.50.0/24", "via", "198.18.77.1", "dev", "eth0", "onlink",
         "table", "100", "src", "198.18.1.10"),
        ("-6", "addr", "add", "2001:db8:1::10/64", "dev", "eth0", "nodad"),
        ("-6", "addr", "add", "2001:db8:1::11/64", "dev", "eth0", "nodad",
         "preferred_lft", "300", "valid_lft", "600"),
        ("-6", "route", "add", "2001:db8:9::/48", "via", "2001:db8:1::1", "dev", "eth0",
         "metric", "77"),
        ("-6", "route", "add", "2001:db8:10::/48", "dev", "eth0", "table", "100"),
    ):  # fmt: skip
        sh("ip", "-n", lab.ns, *args)


def kill_during_trial(lab: Lab) -> None:
    """Start ``net apply`` of gateways that never answer and SIGKILL it mid-trial."""
    proc = lab.start(
        lab.agent_argv("net", "apply", str(lab.payload_file(DEAD_GATEWAYS)), "--probe-timeout",
                       "120"),
        "apply",
    )  # fmt: skip
    wait_for(lab.marker_row, 30, "the durable trial marker")
    wait_for(
        lambda: "198.18.2.30" in sh("ip", "-n", lab.ns, "addr", "show", "eth1").stdout,
        30,
        "the trial address",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_revert_restores_complete_state_and_the_dhcp_client(lab: Lab) -> None:
    start_dnsmasq(lab, 1)
    result = apply(lab, {"Ethernet1": {"ConnectionType": "DHCP"}}, "--probe-timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    first = our_dhcpcd_pid(lab, "eth1")
    assert first is not None
    add_rich_state(lab)
    before = dumps(lab)
    leased = next(a for a in before["addr"] if a["ifname"] == "eth1")["addr_info"][0]
    assert leased["dynamic"] is True
    assert leased["valid_life_time"] == "finite"
    served = acks(lab, 1)

    result = apply(lab, DEAD_GATEWAYS, "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert json.loads(result.stdout)["error"]["reason"] == "PROBE_GATEWAY_UNREACHABLE"
    assert lab.marker_row() is None
    assert lab.history()[-1]["failures"] == "[]"
    # the port is on DHCP again: a new dhcpcd (ours, same metric) renewed the lease
    second = wait_for(lambda: our_dhcpcd_pid(lab, "eth1"), 20, "dhcpcd back on eth1")
    assert second != first
    wait_for(lambda: acks(lab, 1) > served, 30, "the restarted client to renew its lease")
    wait_for(lambda: dumps(lab) == before, 20, "the state to settle")
    assert dumps(lab) == before


def test_revert_goes_on_past_a_failing_step_and_ends_the_trial(lab: Lab) -> None:
    add_rich_state(lab)
    before = dumps(lab)
    kill_during_trial(lab)
    # while the box was down, IPv6 went away on eth0: its addresses cannot be restored
    sh("ip", "netns", "exec", lab.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    result = lab.agent("net", "recover", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["action"] == "reverted"
    assert any("2001:db8:1::10" in f for f in out["failures"]), out
    assert lab.marker_row() is None
    recorded = json.loads(lab.history()[-1]["failures"])
    assert recorded == out["failures"]
    # everything else is back: IPv4 addresses, the onlink route and table 100
    after = dumps(lab)
    assert after["route4"] == before["route4"]
    assert after["rule4"] == before["rule4"]
    # and the next apply runs
    good = {"Ethernet1": static_ip("198.18.2.40", "24", "198.18.2.1", [])}
    result = apply(lab, good, "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_recover_force_ends_a_trial_whose_process_hangs(lab: Lab) -> None:
    before = dumps(lab)
    payload = {"Ethernet0": static_ip("198.18.1.40", "24", "198.18.1.99", [])}
    proc = lab.start(
        lab.agent_argv("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "300"),
        "apply",
    )
    wait_for(lab.marker_row, 30, "the durable trial marker")
    wait_for(
        lambda: "198.18.1.40" in sh("ip", "-n", lab.ns, "addr", "show", "eth0").stdout,
        30,
        "the trial address",
    )
    os.kill(proc.pid, signal.SIGSTOP)  # alive but hung
    try:
        refused = lab.agent("net", "recover", "--json")
        assert refused.returncode != 0
        assert json.loads(refused.stdout)["error"]["reason"] == "NETWORK_TRIAL_IN_PROGRESS"
        forced = lab.agent("net", "recover", "--force", "--json")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert json.loads(forced.stdout)["action"] == "reverted"
        assert lab.marker_row() is None
        assert dumps(lab) == before
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_two_dhcp_ports_get_their_own_metrics_and_paths(lab: Lab) -> None:
    leases0, leases1 = start_dnsmasq(lab, 0), start_dnsmasq(lab, 1)
    payload = {"Ethernet0": {"ConnectionType": "DHCP"}, "Ethernet1": {"ConnectionType": "DHCP"}}
    plan = json.loads(lab.agent("net", "plan", str(lab.payload_file(payload)), "--json").stdout)
    assert [p["metric"] for p in plan["plan"]["ports"]] == [100, 200]
    result = apply(lab, payload, "--probe-timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    # off-subnet traffic leaves through Ethernet0; each port's DHCP routes carry its metric
    assert default_routes(lab) == [
        ("eth0", "198.18.1.1", 100, "dhcp"),
        ("eth1", "198.18.2.1", 200, "dhcp"),
    ]
    subnet = json.loads(sh("ip", "-n", lab.ns, "-j", "route", "show", "dev", "eth1").stdout)
    assert {r.get("metric") for r in subnet} == {200}
    # the agent's own paths: pid files and sockets, leases, resolv.conf
    run = lab.tmp / "run" / "dhcpcd"
    assert our_dhcpcd_pid(lab, "eth0")
    assert our_dhcpcd_pid(lab, "eth1")
    assert {p.name for p in run.glob("*.pid")} == {"eth0-4.pid", "eth1-4.pid"}
    state = lab.tmp / "state" / "dhcpcd"
    wait_for(lambda: (state / "eth0.lease").exists() and (state / "eth1.lease").exists(), 10, "")
    # both clients write through the same hook state: the servers of both leases
    resolv = wait_for(
        lambda: (t := (lab.tmp / "resolv.conf").read_text()) and "198.18.2.53" in t and t,
        10,
        "both ports' DNS servers",
    )
    assert "nameserver 198.18.1.53" in resolv
    assert not Path("/run/dhcpcd/eth0-4.pid").exists()
    assert not Path("/var/lib/dhcpcd/eth0.lease").exists()
    for leases in (leases0, leases1):
        assert leases.read_text().strip()


def test_a_system_dhcp_client_is_started_again_after_a_static_trial(lab: Lab) -> None:
    need_binary("dhclient")
    start_dnsmasq(lab, 1)
    sh("ip", "-n", lab.ns, "addr", "flush", "dev", "eth1")
    sys_dir = lab.tmp / "system-dhclient"
    sys_dir.mkdir()
    argv = ["dhclient", "-4", "-pf", str(sys_dir / "pid"), "-lf", str(sys_dir / "leases"), "eth1"]
    sh(*lab.in_ns(*argv))
    wait_for(lambda: "198.18.2.1" in str(default_routes(lab)), 30, "the system client's lease")
    old_pid = int((sys_dir / "pid").read_text())
    before = dumps(lab)

    result = apply(lab, {"Ethernet1": DEAD_GATEWAYS["Ethernet1"]}, "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    # the trial stopped it; the revert ran the recorded command again
    new_pid = wait_for(
        lambda: (
            (p := int((sys_dir / "pid").read_text() or 0)) != old_pid and p in ns_pids(lab) and p
        ),
        30,
        "the system DHCP client to be started again",
    )
    cmdline = Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")
    assert [a.decode() for a in cmdline if a] == argv
    wait_for(lambda: dumps(lab) == before, 30, "the lease to be back")


def test_committed_plan_uses_its_backend_after_reboot(lab: Lab) -> None:
    """Apply with --backend netlink while the config says networkd; recover uses netlink."""
    start_dnsmasq(lab, 1)
    lab.write_config(network={"backend": "networkd"})
    payload = {
        "Ethernet0": static_ip("198.18.1.60", "24", "198.18.1.1", ["198.18.1.53"]),
        "Ethernet1": {"ConnectionType": "DHCP"},
    }
    result = apply(lab, payload, "--backend", "netlink", "--probe-timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    committed = dumps(lab)
    # a reboot: the kernel forgets addresses and routes, processes and /run are gone
    for pid in ns_pids(lab):
        os.kill(pid, signal.SIGKILL)
    for ifname in ("eth0", "eth1"):
        sh("ip", "-n", lab.ns, "addr", "flush", "dev", ifname)
        sh("ip", "-n", lab.ns, "route", "flush", "dev", ifname, check=False)
    subprocess.run(["rm", "-rf", str(lab.tmp / "run")], check=True)
    assert default_routes(lab) == []

    result = lab.agent("net", "recover", "--json")  # the unit's ExecStartPre
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"action": "reapplied", "backend": "netlink"}
    wait_for(lambda: len(default_routes(lab)) == 2, 30, "both ports configured again")
    assert default_routes(lab) == [
        ("eth0", "198.18.1.1", 100, "static"),
        ("eth1", "198.18.2.1", 200, "dhcp"),
    ]
    after = dumps(lab)
    assert after["route4"] == committed["route4"]


def test_symlinked_resolv_conf_stays_a_link(lab: Lab) -> None:
    real = lab.tmp / "resolver" / "resolv.conf"
    real.parent.mkdir()
    real.write_text("nameserver 198.18.1.250\n")
    link = lab.tmp / "resolv.conf"
    link.symlink_to(real)
    good = {"Ethernet0": static_ip("198.18.1.20", "24", "198.18.1.1", ["198.18.1.53"])}
    result = apply(lab, good, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert link.is_symlink()
    assert link.readlink() == real
    assert "nameserver 198.18.1.53" in real.read_text()
    committed = real.read_text()
    # a failed trial restores the link and its content exactly
    result = apply(lab, {"Ethernet0": DEAD_GATEWAYS["Ethernet0"]}, "--probe-timeout", "2")
    assert result.returncode == 3
    assert link.is_symlink()
    assert link.readlink() == real
    assert real.read_text() == committed


def test_recover_puts_back_ipv6_and_policy_routes_lost_during_the_trial(lab: Lab) -> None:
    add_rich_state(lab)
    before = dumps(lab)
    kill_during_trial(lab)
    # meanwhile something else took IPv6 addresses and routes and table 100 away, and added
    # its own
    for args in (
        ("-6", "addr", "del", "2001:db8:1::10/64", "dev", "eth0"),
        ("-6", "addr", "del", "2001:db8:1::11/64", "dev", "eth0"),
        ("route", "flush", "table", "100"),
        ("-6", "route", "flush", "table", "100"),
        ("-6", "addr", "add", "2001:db8:7::1/64", "dev", "eth1", "nodad"),
        ("route", "add", "198.18.99.0/24", "dev", "eth1", "table", "200"),
    ):
        sh("ip", "-n", lab.ns, *args)
    assert dumps(lab) != before
    result = lab.agent("net", "recover", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["action"] == "reverted"
    assert out["failures"] == []
    after = dumps(lab)
    assert after == before
    eth0 = next(a for a in after["addr"] if a["ifname"] == "eth0")["addr_info"]
    finite = next(a for a in eth0 if a["local"] == "2001:db8:1::11")
    assert finite["valid_life_time"] == "finite"  # restored with what was left, not forever
    assert finite.get("nodad") is True
