"""The networkd backend's files, proven by the real systemd-networkd inside the namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.network import static_ip
from tests.integration.netconf.conftest import DEFAULT_DST, HERE, Lab, sh, wait_for
from tests.integration.netconf.test_netlink import routes

pytestmark = pytest.mark.netns

SUPERVISOR = HERE / "networkd_supervisor.py"

# ip netns exec gives a private (slave) mount namespace: these mounts stay inside it.
SETUP = """
set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/network /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif
mount --bind "$1" /run/systemd/network
mount --bind "$2" /etc/systemd/network
mkdir -p /usr/lib/systemd/network
mount --bind "$6" /usr/lib/systemd/network
mount -o remount,bind,ro /sys
exec "$3" "$4" --serve "$5"
"""


@pytest.fixture
def networkd(lab: Lab) -> Path:
    """systemd-networkd serving the lab's networkd directories; returns its state dir."""
    run_dir, etc_dir, state = lab.tmp / "run-network", lab.tmp / "etc-network", lab.tmp / "nd"
    dist_dir = lab.tmp / "usr-lib-network"  # the distribution's .network files
    for d in (run_dir, etc_dir, state, dist_dir):
        d.mkdir()
    proc = lab.start(
        lab.in_ns(
            "sh", "-c", SETUP, "setup",
            str(run_dir), str(etc_dir), sys.executable, str(SUPERVISOR), str(state),
            str(dist_dir),
        ),
        "networkd",
    )  # fmt: skip
    wait_for(lambda: (state / "generation").exists() or proc.poll() is not None, 20, "networkd")
    assert proc.poll() is None, lab.log("networkd")
    lab.write_config(
        network={
            "backend": "networkd",
            "networkd_reload_command": [sys.executable, str(SUPERVISOR), "--reload", str(state)],
            "networkd_reconfigure_command": [],
            "networkd_dist_dirs": [str(dist_dir)],
        }
    )
    return state


def _link_state(lab: Lab, state: Path, ifname: str) -> str:
    """networkd's own state file for the link, read through the supervisor's mount view."""
    index = json.loads(sh("ip", "-n", lab.ns, "-j", "link", "show", ifname).stdout)[0]["ifindex"]
    pid = int((state / "supervisor.pid").read_text())
    path = Path(f"/proc/{pid}/root/run/systemd/netif/links/{index}")
    return path.read_text() if path.exists() else ""


def test_networkd_configures_the_link_then_commit_persists(lab: Lab, networkd: Path) -> None:
    payload = {
        "Ethernet1": static_ip("198.18.2.20", "255.255.255.0", "198.18.2.1", ["198.18.2.53"])
    }
    result = lab.agent(
        "net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "30", "--json"
    )
    assert result.returncode == 0, result.stdout + result.stderr + lab.log("networkd")[-3000:]
    assert json.loads(result.stdout)["outcome"] == "committed"

    state = lab.inspect()
    assert {"addr": "198.18.2.20", "netmask": "255.255.255.0"} in state["view"]["eth1"]["inet"]
    assert (DEFAULT_DST, 0, "198.18.2.1", 200, 4) in routes(state, "eth1")
    # the commit moved the file from the volatile trial directory to the persistent one
    persisted = lab.tmp / "etc-network" / "10-edge-agent-ethernet1.network"
    assert "Address=198.18.2.20/24" in persisted.read_text()
    assert list((lab.tmp / "run-network").iterdir()) == []
    # networkd (restarted by the commit's reload) manages eth1 from the persistent file
    text = wait_for(
        lambda: (t := _link_state(lab, networkd, "eth1")) and "ADMIN_STATE=configured" in t and t,
        20,
        "networkd to report eth1 configured",
    )
    assert "10-edge-agent-ethernet1.network" in text
    assert "DNS=198.18.2.53" in text
    assert "eth1: State changed: configuring -> configured" in lab.log("networkd")


def test_networkd_trial_with_dead_gateway_is_reverted(lab: Lab, networkd: Path) -> None:
    before = lab.inspect()
    old = lab.tmp / "etc-network" / "10-edge-agent-ethernet0.network"
    payload = {"Ethernet0": static_ip("198.18.1.30", "24", "198.18.1.99", [])}
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "3")
    assert result.returncode == 3, result.stdout + result.stderr
    assert json.loads(result.stdout)["error"]["reason"] == "PROBE_GATEWAY_UNREACHABLE"
    assert list((lab.tmp / "run-network").iterdir()) == []
    assert not old.exists()
    assert lab.inspect()["exact"] == before["exact"]


def test_a_link_managed_by_a_distribution_file_is_left_to_networkd(
    lab: Lab, networkd: Path
) -> None:
    dist = lab.tmp / "usr-lib-network" / "80-dist-ethernet.network"
    dist.write_text(
        "[Match]\nType=ether\nName=eth0\n\n[Network]\nAddress=198.18.1.11/24\n\n"
        "[Route]\nGateway=198.18.1.1\nMetric=60\n"
    )
    reload = [sys.executable, str(SUPERVISOR), "--reload", str(networkd)]
    sh(*reload)
    wait_for(
        lambda: "80-dist-ethernet.network" in _link_state(lab, networkd, "eth0"),
        20,
        "networkd to configure eth0 from the distribution file",
    )
    payload = {"Ethernet0": static_ip("198.18.1.30", "24", "198.18.1.99", [])}
    proc = lab.start(
        lab.agent_argv("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "3"),
        "apply",
    )
    row = wait_for(lab.marker_row, 30, "the trial marker")
    snapshot = json.loads(row["snapshot"])["network"]
    assert snapshot["managed"] == {"eth0": str(dist)}
    assert snapshot["unmanaged"] == []  # so the revert leaves eth0 to networkd
    assert proc.wait(timeout=60) == 3, lab.log("apply")
    # after the revert networkd configures eth0 from the distribution file again
    text = wait_for(
        lambda: (t := _link_state(lab, networkd, "eth0")) and "ADMIN_STATE=configured" in t and t,
        20,
        "networkd to configure eth0 again",
    )
    assert "80-dist-ethernet.network" in text
    addrs = sh("ip", "-n", lab.ns, "-4", "addr", "show", "eth0").stdout
    assert "198.18.1.11/24" in addrs
    assert "198.18.1.30" not in addrs
