"""The netlink backend on the real kernel: static, DHCP, rollback, crash recovery."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from tests.helpers.env import need_binary
from tests.helpers.network import static_ip
from tests.integration.netconf.conftest import DEFAULT_DST, Lab, sh, wait_for

pytestmark = pytest.mark.netns


def routes(state: dict[str, Any], ifname: str) -> list[tuple[Any, ...]]:
    """Main-table IPv4 routes of the port: (dst, dst_len, gateway, metric, protocol)."""
    return [
        (r["dst"] or DEFAULT_DST, r["dst_len"], r["gateway"], r["priority"], r["proto"])
        for r in state["exact"][ifname]["routes"]
        if r["family"] == 4 and r["table"] == 254
    ]


def test_static_ip_on_both_ports(lab: Lab) -> None:
    payload = {
        "Ethernet0": static_ip("198.18.1.20", "255.255.255.0", "198.18.1.1", ["198.18.1.53"]),
        "Ethernet1": static_ip("198.18.2.20", "/24", "198.18.2.1", ["198.18.2.53", "198.18.1.53"]),
    }
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["outcome"] == "committed"
    assert "eth0: gateway 198.18.1.1 answers ICMP" in out["probe"]["checks"]
    assert "eth1: gateway 198.18.2.1 answers ICMP" in out["probe"]["checks"]

    state = lab.inspect()
    assert state["view"]["eth0"]["inet"] == [{"addr": "198.18.1.20", "netmask": "255.255.255.0"}]
    assert state["view"]["eth1"]["inet"] == [{"addr": "198.18.2.20", "netmask": "255.255.255.0"}]
    # only one default route wins: Ethernet0's (metric 100); Ethernet1's has metric 200
    assert state["default_gateway"][:2] == ["198.18.1.1", "eth0"]
    assert (DEFAULT_DST, 0, "198.18.1.1", 100, 4) in routes(state, "eth0")
    assert (DEFAULT_DST, 0, "198.18.2.1", 200, 4) in routes(state, "eth1")
    # the previous static route on eth1 is gone with the previous configuration
    assert all(r[0] != "198.18.200.0" for r in routes(state, "eth1"))
    assert (lab.tmp / "resolv.conf").read_text().splitlines()[1:] == [
        "nameserver 198.18.1.53",
        "nameserver 198.18.2.53",
    ]
    assert lab.marker_row() is None
    assert [h["outcome"] for h in lab.history()] == ["committed"]

    status = lab.agent("net", "status", "--json")
    assert status.returncode == 0, status.stderr
    networking = json.loads(status.stdout)["NetworkingStatus"]
    assert networking["Ethernet0Status"] == {
        "IpAddress": "198.18.1.20/24",
        "ConnectionStatus": "CONNECTED",
        "HwAddress": state["view"]["eth0"]["mac"],
    }
    assert networking["Ethernet1Status"]["IpAddress"] == "198.18.2.20/24"
    assert networking["NtpStatus"]["ConnectionStatus"] == "NOT_CONNECTED"


def test_plan_lists_exact_changes_and_touches_nothing(lab: Lab) -> None:
    before = lab.inspect()["exact"]
    payload = {"Ethernet0": static_ip("198.18.1.20", "24", "198.18.1.1", [])}
    result = lab.agent("net", "plan", str(lab.payload_file(payload)), "--json")
    assert result.returncode == 0, result.stderr
    changes = [
        (c["target"], c["action"], c["detail"]) for c in json.loads(result.stdout)["changes"]
    ]
    assert ("eth0", "remove", "address 198.18.1.10/24") in changes
    assert ("eth0", "add", "address 198.18.1.20/24") in changes
    assert ("eth0", "remove", "route default via 198.18.1.1 metric 50") in changes
    assert ("eth0", "add", "route default via 198.18.1.1 metric 100") in changes
    assert lab.inspect()["exact"] == before
    assert lab.marker_row() is None


def test_status_shows_no_carrier_as_not_connected(lab: Lab) -> None:
    sh("ip", "-n", lab.peer, "link", "set", "gw1", "down")
    result = lab.agent("net", "status", "--json")
    networking = json.loads(result.stdout)["NetworkingStatus"]
    assert networking["Ethernet1Status"]["ConnectionStatus"] == "NOT_CONNECTED"
    assert networking["Ethernet0Status"]["ConnectionStatus"] == "CONNECTED"
    sh("ip", "-n", lab.ns, "addr", "flush", "dev", "eth0")
    result = lab.agent("net", "status", "--json")
    networking = json.loads(result.stdout)["NetworkingStatus"]
    assert networking["Ethernet0Status"]["ConnectionStatus"] == "CONNECTING"
    assert networking["Ethernet0Status"]["IpAddress"] == ""


def test_unreachable_gateway_rolls_back_exactly(lab: Lab) -> None:
    before = lab.inspect()
    payload = {
        "Ethernet0": static_ip("198.18.1.30", "255.255.255.0", "198.18.1.99", []),
        "Ethernet1": static_ip("198.18.2.30", "255.255.255.0", "198.18.2.1", []),
    }
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["reason"] == "PROBE_GATEWAY_UNREACHABLE"
    assert "198.18.1.99" in error["message"]
    after = lab.inspect()
    assert after["exact"] == before["exact"]
    assert after["view"] == before["view"]
    assert lab.marker_row() is None
    assert [h["reason"] for h in lab.history()] == ["PROBE_GATEWAY_UNREACHABLE"]


def test_unreachable_tcp_endpoint_rolls_back(lab: Lab) -> None:
    before = lab.inspect()["exact"]
    payload = {"Ethernet0": static_ip("198.18.1.30", "24", "198.18.1.1", [])}
    result = lab.agent(
        "net", "apply", str(lab.payload_file(payload)),
        "--probe-timeout", "1", "--probe-endpoint", "198.18.1.1:8883",
    )  # fmt: skip
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["reason"] == "PROBE_ENDPOINT_UNREACHABLE"
    assert lab.inspect()["exact"] == before


def test_killed_mid_trial_next_start_reverts(lab: Lab) -> None:
    before = lab.inspect()
    payload = {"Ethernet0": static_ip("198.18.1.40", "255.255.255.0", "198.18.1.99", [])}
    proc = lab.start(
        lab.agent_argv("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "120"),
        "apply",
    )
    wait_for(lab.marker_row, 30, "the durable trial marker")
    wait_for(
        lambda: (
            lab.inspect()["view"]["eth0"]["inet"]
            == [{"addr": "198.18.1.40", "netmask": "255.255.255.0"}]
        ),
        30,
        "the trial address on eth0",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # the trial configuration is still in force and the marker survived the crash
    assert lab.marker_row() is not None
    assert lab.inspect()["exact"] != before["exact"]

    status = json.loads(lab.agent("net", "status", "--json").stdout)
    assert status["trialInProgress"] is True
    assert status["NetworkingStatus"]["Ethernet0Status"]["ConnectionStatus"] == "CONNECTING"

    result = lab.agent("net", "recover", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["action"] == "reverted"
    after = lab.inspect()
    assert after["exact"] == before["exact"]
    assert after["view"] == before["view"]
    assert lab.marker_row() is None
    assert lab.history()[-1]["reason"] == "TRIAL_INTERRUPTED"


def test_apply_after_crash_reverts_first(lab: Lab) -> None:
    payload = {"Ethernet0": static_ip("198.18.1.40", "24", "198.18.1.99", [])}
    proc = lab.start(
        lab.agent_argv("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "120"),
        "apply",
    )
    wait_for(lab.marker_row, 30, "the durable trial marker")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    good = {"Ethernet0": static_ip("198.18.1.50", "24", "198.18.1.1", [])}
    result = lab.agent("net", "apply", str(lab.payload_file(good, "good.json")), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [h["outcome"] for h in lab.history()] == ["recovered", "committed"]
    inet = lab.inspect()["view"]["eth0"]["inet"]
    assert inet == [{"addr": "198.18.1.50", "netmask": "255.255.255.0"}]


def test_committed_plan_is_reapplied_at_start(lab: Lab) -> None:
    payload = {"Ethernet0": static_ip("198.18.1.60", "24", "198.18.1.1", [])}
    assert lab.agent("net", "apply", str(lab.payload_file(payload))).returncode == 0
    sh("ip", "-n", lab.ns, "addr", "flush", "dev", "eth0")  # as after a reboot
    assert lab.inspect()["view"]["eth0"]["inet"] == []
    result = lab.agent("net", "recover", "--json")
    assert json.loads(result.stdout) == {"action": "reapplied", "backend": "netlink"}
    state = lab.inspect()
    assert state["view"]["eth0"]["inet"] == [{"addr": "198.18.1.60", "netmask": "255.255.255.0"}]
    assert (DEFAULT_DST, 0, "198.18.1.1", 100, 4) in routes(state, "eth0")


def test_dhcp_hands_the_port_to_the_dhcp_client(lab: Lab) -> None:
    for binary in ("dnsmasq", "dhcpcd", "unshare"):
        need_binary(binary)
    leases = lab.tmp / "dnsmasq.leases"
    dnsmasq = lab.start(
        lab.in_peer(
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            "--interface=gw0", "--bind-interfaces", "--dhcp-authoritative",
            "--dhcp-range=198.18.1.100,198.18.1.150,255.255.255.0,1h",
            "--dhcp-option=option:router,198.18.1.1", f"--dhcp-leasefile={leases}",
        ),
        "dnsmasq",
    )  # fmt: skip
    wait_for(
        lambda: "sockets bound exclusively" in lab.log("dnsmasq") or dnsmasq.poll() is not None,
        10,
        "dnsmasq to listen",
    )
    assert dnsmasq.poll() is None, lab.log("dnsmasq")
    payload = {"Ethernet0": {"ConnectionType": "DHCP"}}
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    state = lab.inspect()
    inet = state["view"]["eth0"]["inet"]
    # the static address is gone; the only address is the lease from the DHCP server
    assert len(inet) == 1
    assert inet[0]["addr"] != "198.18.1.10"
    assert inet[0]["addr"].startswith("198.18.1.1")
    assert 100 <= int(inet[0]["addr"].rsplit(".", 1)[1]) <= 150
    assert inet[0]["addr"] in leases.read_text()
    assert state["default_gateway"][:2] == ["198.18.1.1", "eth0"]
    # the client keeps running (it renews the lease); its pid file, in the agent's own
    # runtime directory, says which process
    pid = int((lab.tmp / "run" / "dhcpcd" / "eth0-4.pid").read_text())
    assert pid in [int(p) for p in sh("ip", "netns", "pids", lab.ns).stdout.split()]
    # eth1 was not in the payload and is untouched
    assert state["view"]["eth1"]["inet"] == [{"addr": "198.18.2.10", "netmask": "255.255.255.0"}]


def test_dhcp_without_a_server_rolls_back(lab: Lab) -> None:
    need_binary("dhcpcd")
    before = lab.inspect()
    payload = {"Ethernet0": {"ConnectionType": "DHCP"}}
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "2")
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["reason"] == "PROBE_ADDRESS_MISSING"
    assert lab.inspect()["exact"] == before["exact"]
    # the DHCP client the trial started was stopped again
    wait_for(
        lambda: not sh("ip", "netns", "pids", lab.ns).stdout.split(),
        10,
        "the DHCP client to stop",
    )


def test_missing_interface_is_refused_and_nothing_changes(lab: Lab) -> None:
    before = lab.inspect()
    board = lab.tmp / "board.toml"
    board.write_text('[Ethernet0]\nname = "eth0"\n[Ethernet1]\nname = "eth9"\n')
    payload = {
        "Ethernet0": static_ip("198.18.1.30", "24", "198.18.1.1", []),
        "Ethernet1": static_ip("198.18.2.30", "24", "198.18.2.1", []),
    }
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--board", str(board))
    assert result.returncode == 3
    error = json.loads(result.stdout)["error"]
    assert error["reason"] == "INTERFACE_NOT_FOUND"
    assert "eth9" in error["message"]
    assert lab.inspect()["exact"] == before["exact"]
    assert lab.marker_row() is None


def test_board_resolves_ports_by_mac_in_the_namespace(lab: Lab) -> None:
    macs = {i: lab.inspect()["view"][i]["mac"] for i in ("eth0", "eth1")}
    board = lab.tmp / "swapped.toml"
    # the integrator's board wires Ethernet0 to the interface the kernel calls eth1
    board.write_text(f'[Ethernet0]\nmac = "{macs["eth1"]}"\n[Ethernet1]\nmac = "{macs["eth0"]}"\n')
    status = json.loads(lab.agent("net", "status", "--board", str(board), "--json").stdout)
    assert status["interfaces"] == {"Ethernet0": "eth1", "Ethernet1": "eth0"}
    assert status["NetworkingStatus"]["Ethernet0Status"]["HwAddress"] == macs["eth1"]
    payload = {"Ethernet0": static_ip("198.18.2.40", "24", "198.18.2.1", [])}
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--board", str(board))
    assert result.returncode == 0, result.stdout + result.stderr
    assert lab.inspect()["view"]["eth1"]["inet"] == [
        {"addr": "198.18.2.40", "netmask": "255.255.255.0"}
    ]
