"""The parts recovery relies on, on real files and real processes: networkd's file choice,
resolv.conf links, DHCP client recognition, the OS adapter, the history of failed steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.netconf import osproc, resolv
from agent.netconf.base import Change, Snapshot
from agent.netconf.dhcp import ClientRecord, Dhcpcd, _names_interface, _rebuild
from agent.netconf.networkd_match import LinkFacts, managing_file, match_section, network_files
from agent.netconf.plan import NetworkPlan
from agent.netconf.rollback import NetConf
from agent.store import Store

ETH0 = LinkFacts("eth0", "02:00:00:00:00:01")


def _dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    etc, run, usr = tmp_path / "etc", tmp_path / "run", tmp_path / "usr-lib"
    for d in (etc, run, usr):
        d.mkdir()
    return etc, run, usr


def test_distribution_file_manages_the_link(tmp_path: Path) -> None:
    etc, run, usr = _dirs(tmp_path)
    (usr / "80-ethernet.network").write_text("[Match]\nType=ether\nName=en* eth*\n[Network]\n")
    (usr / "99-default.network").write_text("[Match]\nName=*\n")
    assert managing_file(ETH0, [etc, run, usr]) == usr / "80-ethernet.network"


def test_earlier_directory_hides_a_file_of_the_same_name(tmp_path: Path) -> None:
    etc, run, usr = _dirs(tmp_path)
    (usr / "80-ethernet.network").write_text("[Match]\nName=eth*\n")
    (etc / "80-ethernet.network").write_text("[Match]\nName=wlan0\n")  # the admin's override
    assert network_files([etc, run, usr]) == [etc / "80-ethernet.network"]
    assert managing_file(ETH0, [etc, run, usr]) is None


def test_lexical_order_across_directories_and_ignored_trial_files(tmp_path: Path) -> None:
    etc, run, usr = _dirs(tmp_path)
    (run / "09-edge-agent-trial-ethernet0.network").write_text("[Match]\nName=eth0\n")
    (usr / "50-dist.network").write_text("[Match]\nName=eth0\n")
    (etc / "70-admin.network").write_text("[Match]\nName=eth0\n")
    dirs = [etc, run, usr]
    ignore = ["09-edge-agent-trial-ethernet0.network"]
    assert managing_file(ETH0, dirs, ignore=ignore) == usr / "50-dist.network"


@pytest.mark.parametrize(
    ("match", "managed"),
    [
        ("Name=!eth0", False),
        ("Name=!eth1 eth2", True),
        ("Name=eth1\nName=", True),  # an empty assignment resets the list
        ("MACAddress=02:00:00:00:00:01", True),
        ("MACAddress=02:00:00:00:00:02", False),
        ("Type=wlan", False),
        ("Driver=virtio_net", True),  # not evaluated: assumed to match, never fought
        ("", True),
    ],
)
def test_match_keys(tmp_path: Path, match: str, managed: bool) -> None:
    etc, run, usr = _dirs(tmp_path)
    (usr / "80-x.network").write_text(f"# comment\n[Match]\n{match}\n\n[Network]\nName=eth9\n")
    assert (managing_file(ETH0, [etc, run, usr]) is not None) is managed


def test_match_section_reads_only_match() -> None:
    text = "[Match]\nName=eth0 eth1\n[Link]\nName=x\n[Match]\nType=ether\n"
    assert match_section(text) == {"Name": ["eth0", "eth1"], "Type": ["ether"]}


def test_resolv_link_is_restored_as_a_link(tmp_path: Path) -> None:
    target = tmp_path / "stub" / "resolv.conf"
    target.parent.mkdir()
    target.write_text("nameserver 198.18.0.53\n")
    path = tmp_path / "resolv.conf"
    path.symlink_to(target)
    snap = resolv.snapshot(path)
    assert snap["kind"] == "link"
    # something replaced the link by a plain file
    path.unlink()
    path.write_text("nameserver 198.18.9.9\n")
    assert resolv.restore(snap, ["eth0"]) == []
    assert path.is_symlink()
    assert path.readlink() == target
    assert target.read_text() == "nameserver 198.18.0.53\n"


def test_resolv_write_goes_through_a_link_and_in_place(tmp_path: Path) -> None:
    target = tmp_path / "resolv.conf.real"
    target.write_text("old\n")
    inode = target.stat().st_ino
    path = tmp_path / "resolv.conf"
    path.symlink_to(target)
    assert resolv.manager(path) is None  # not a resolver's directory
    resolv.write(path, NetworkPlan(), "nameserver 198.18.1.53\n")
    assert path.is_symlink()
    assert target.read_text() == "nameserver 198.18.1.53\n"
    assert target.stat().st_ino == inode  # a DHCP client holding the file still sees it


def test_resolv_missing_and_file_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    snap = resolv.snapshot(path)
    path.write_text("x\n")
    assert resolv.restore(snap, []) == []
    assert not path.exists()
    path.write_text("before\n")
    snap = resolv.snapshot(path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    assert resolv.restore(snap, []) == []
    assert not path.is_symlink()
    assert path.read_text() == "before\n"


def test_dhcp_client_recognition() -> None:
    retitled = osproc.Process(10, "dhcpcd", ("dhcpcd: eth1 [ip4]                 ",))
    proxy = osproc.Process(11, "dhcpcd", ("dhcpcd: [privileged proxy] eth1 [ip4]",))
    dhclient = osproc.Process(12, "dhclient", ("dhclient", "-4", "-pf", "/x/eth1.pid", "eth1"))
    other = osproc.Process(13, "dhclient", ("dhclient", "eth10"))
    assert _names_interface(retitled, "eth1")
    assert not _names_interface(proxy, "eth1")
    assert _names_interface(dhclient, "eth1")
    assert not _names_interface(other, "eth1")
    assert _rebuild(retitled, "eth1") == ("dhcpcd", "-4", "eth1")
    assert _rebuild(dhclient, "eth1") == dhclient.argv
    record = ClientRecord("eth1", 12, dhclient.argv, ours=False)
    assert ClientRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_dhcpcd_runs_with_the_agents_paths(tmp_path: Path) -> None:
    client = Dhcpcd(
        run_dir=tmp_path / "run", lease_dir=tmp_path / "lib", resolv_conf=tmp_path / "r"
    )
    argv = client.argv("eth0", 100)
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert argv[-8:] == ["dhcpcd", "-4", "-b", "-m", "100", "-C", "hostname", "eth0"]
    assert str(tmp_path / "run") in argv
    assert str(tmp_path / "lib") in argv
    assert str(tmp_path / "r") in argv
    # the system's resolv.conf is not bound over itself
    plain = Dhcpcd(run_dir=tmp_path / "run", lease_dir=tmp_path / "lib")
    assert "/etc/resolv.conf" not in plain.argv("eth0", 100)[:-8]
    assert client.pid("eth0") is None


def test_os_adapter_sees_live_zombie_and_gone_processes(tmp_path: Path) -> None:
    assert osproc.boot_id()
    assert osproc.alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # not yet waited for, the child is a zombie once it exits: dead for us
    deadline = 500
    while osproc.alive(child.pid) and deadline:
        deadline -= 1
        subprocess.run(["true"], check=True)
    assert not osproc.alive(child.pid)
    assert Path(f"/proc/{child.pid}").exists()
    child.wait()
    assert not osproc.alive(child.pid)
    sleeper = subprocess.Popen(["sleep", "60"])
    assert any(p.pid == sleeper.pid for p in osproc.processes_in_my_netns())
    assert osproc.terminate(sleeper.pid)
    sleeper.wait()
    (tmp_path / "pid").write_text("12x\n")
    assert osproc.read_pid(tmp_path / "pid") is None
    assert osproc.read_pid(tmp_path / "none") is None


class _FailingBackend:
    """A network backend whose revert reports a failed step (the real ones are in
    tests/integration/netconf); it renders nothing."""

    name = "dry-run"
    live = False

    def changes(self, plan: NetworkPlan) -> list[Change]:
        del plan
        return []

    def snapshot(self, plan: NetworkPlan) -> Snapshot:
        del plan
        return {}

    def apply(self, plan: NetworkPlan) -> None:
        del plan
        raise OSError(5, "Input/output error", "/x")

    def commit(self, plan: NetworkPlan) -> None:
        del plan

    def revert(self, snapshot: Snapshot) -> list[str]:
        del snapshot
        raise RuntimeError("netlink socket closed")

    def reapply(self, plan: NetworkPlan) -> None:
        del plan


def test_a_revert_that_raises_still_ends_the_trial(tmp_path: Path) -> None:
    from agent.netconf.rollback import NetworkRolledBackError
    from agent.netconf.timesync import NoTimeBackend

    with Store(tmp_path / "state.db") as store:
        netconf = NetConf(store, _FailingBackend(), NoTimeBackend())
        with pytest.raises(NetworkRolledBackError) as info:
            netconf.apply(NetworkPlan())
        assert "netlink socket closed" in info.value.message
        assert netconf.marker() is None
        (last,) = netconf.history(1)
        assert last["failures"] == ["network (dry-run): netlink socket closed"]


def test_networkd_snapshot_names_the_managing_file(tmp_path: Path) -> None:
    from agent.netconf.networkd import NetworkdBackend
    from agent.netconf.plan import PortPlan

    etc, run, usr = _dirs(tmp_path)
    backend = NetworkdBackend(
        runtime_dir=run, persist_dir=etc, dist_dirs=[usr], reload_command=(), reconfigure_command=()
    )
    plan = NetworkPlan(ports=(PortPlan("Ethernet0", "lo", "dhcp"),))
    snap = backend.snapshot(plan)
    assert snap["unmanaged"] == ["lo"]
    (usr / "80-loopback.network").write_text("[Match]\nName=lo\n[Network]\n")
    (run / "09-edge-agent-trial-ethernet0.network").write_text("[Match]\nName=lo\n")
    snap = backend.snapshot(plan)
    assert snap["managed"] == {"lo": str(usr / "80-loopback.network")}
    assert snap["unmanaged"] == []
