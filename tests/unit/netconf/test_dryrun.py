"""The dry-run backend, the demo step and the trial bookkeeping on real files and SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.archive.network import parse_network_payload
from agent.errors import ConflictError
from agent.netconf.dryrun import DryRunBackend
from agent.netconf.factory import dry_run_time_backend
from agent.netconf.plan import build_plan
from agent.netconf.rollback import NetConf, NetworkRolledBackError
from agent.store import Store

GENERIC = {"Ethernet0": "eth0", "Ethernet1": "eth1"}


def _payload(ip: str = "198.18.1.10") -> dict[str, object]:
    return {
        "Ethernet0": {
            "ConnectionType": "STATIC_IP",
            "StaticIpConnectionInfo": {
                "IpAddress": ip,
                "Mask": "255.255.255.0",
                "DefaultGateway": "198.18.1.1",
                "Dns": ["198.18.1.53"],
            },
        },
        "Ethernet1": {"ConnectionType": "DHCP"},
        "Ntp": {"NtpServers": ["pool.ntp.org", "198.18.1.123:11123"]},
    }


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _netconf(tmp_path: Path) -> NetConf:
    root = tmp_path / "root"
    return NetConf(Store(tmp_path / "state.db"), DryRunBackend(root), dry_run_time_backend(root))


def test_demo_step_renders_under_root_only(tmp_path: Path) -> None:
    from agent.netconf.demo import run_demo_step

    lines: list[str] = []
    root = tmp_path / "demo"
    run_demo_step(parse_network_payload(_payload()), root, lines.append)
    files = {f"etc/{k}": v for k, v in _files(root / "etc").items()}
    assert sorted(files) == [
        "etc/chrony/sources.d/edge-agent.sources",
        "etc/resolv.conf",
        "etc/systemd/network/10-edge-agent-ethernet0.network",
        "etc/systemd/network/10-edge-agent-ethernet1.network",
    ]
    assert "Address=198.18.1.10/24" in files["etc/systemd/network/10-edge-agent-ethernet0.network"]
    assert "DHCP=ipv4" in files["etc/systemd/network/10-edge-agent-ethernet1.network"]
    assert (
        "server 198.18.1.123 port 11123 iburst" in files["etc/chrony/sources.d/edge-agent.sources"]
    )
    assert lines[:3] == [
        "network: Ethernet0 -> eth0: 198.18.1.10/24 via 198.18.1.1 (metric 100), DNS 198.18.1.53",
        "network: Ethernet1 -> eth1: DHCP (route metric 200)",
        "network: NTP servers: pool.ntp.org, 198.18.1.123:11123",
    ]
    assert lines[-1] == f"network: committed with the dry-run backend under {root}"
    assert {p.name for p in root.iterdir()} <= {"etc", "state.db", "state.db-wal", "state.db-shm"}


def test_failed_apply_restores_every_file(tmp_path: Path) -> None:
    netconf = _netconf(tmp_path)
    root = tmp_path / "root"
    first = build_plan(parse_network_payload(_payload()), GENERIC)
    assert netconf.apply(first).outcome == "committed"
    # a file where chrony's sources directory must go: the NTP step fails after the
    # .network files and resolv.conf have changed
    (root / "etc/chrony/sources.d/edge-agent.sources").unlink()
    (root / "etc/chrony/sources.d").rmdir()
    (root / "etc/chrony/sources.d").write_text("in the way\n")
    before = _files(root)
    second = build_plan(parse_network_payload(_payload("198.18.1.20")), GENERIC)
    with pytest.raises(NetworkRolledBackError) as caught:
        netconf.apply(second)
    assert caught.value.reason == "APPLY_FAILED"
    assert _files(root) == before
    assert netconf.marker() is None
    assert [h["outcome"] for h in netconf.history()] == ["reverted", "committed"]
    assert netconf.applied() == ("dry-run", first)


def test_recover_restores_an_interrupted_trial(tmp_path: Path) -> None:
    netconf = _netconf(tmp_path)
    root = tmp_path / "root"
    netconf.apply(build_plan(parse_network_payload(_payload()), GENERIC))
    before = _files(root)
    trial = build_plan(parse_network_payload(_payload("198.18.1.99")), GENERIC)
    snapshot = {"network": netconf.backend.snapshot(trial), "time": netconf.time_backend.snapshot()}
    netconf._begin(trial, snapshot)
    netconf.backend.apply(trial)
    assert _files(root) != before
    netconf.store.close()

    again = _netconf(tmp_path)  # the next start
    marker = again.recover()
    assert marker is not None
    assert marker.plan == trial
    assert _files(root) == before
    assert again.marker() is None
    assert again.history(1)[0]["reason"] == "TRIAL_INTERRUPTED"
    assert again.startup() == {"action": "reapplied", "backend": "dry-run"}


def test_a_live_trial_of_another_process_is_not_touched(tmp_path: Path) -> None:
    netconf = _netconf(tmp_path)
    plan = build_plan(parse_network_payload(_payload()), GENERIC)
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        netconf._begin(plan, {"network": {"files": {}}, "time": None})
        netconf.store.db.execute("UPDATE netconf_trial SET pid = ?", (other.pid,))
        with pytest.raises(ConflictError) as caught:
            netconf.apply(plan)
        assert caught.value.reason == "NETWORK_TRIAL_IN_PROGRESS"
        assert netconf.marker() is not None
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=10)
    # once that process is gone, its trial is stale and is reverted
    assert netconf.recover() is not None


def test_networkd_plan_lists_trial_commit_and_reload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from agent.cli import main

    config = tmp_path / "agent.toml"
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[network]\nbackend = "networkd"\nnetworkd_runtime_dir = "{run_dir}"\n'
        f'networkd_persist_dir = "{etc_dir}"\n'
        f'[ntp]\nbackend = "chrony"\nchrony_sources_dir = "{tmp_path / "sources.d"}"\n'
    )
    payload = tmp_path / "net.json"
    payload.write_text(json.dumps(_payload()))
    assert main(["--config", str(config), "net", "plan", str(payload), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["backend"], out["timeBackend"]) == ("networkd", "chrony")
    assert [(c["target"], c["action"]) for c in out["changes"]] == [
        (str(run_dir / "09-edge-agent-trial-ethernet0.network"), "write"),
        (str(etc_dir / "10-edge-agent-ethernet0.network"), "write"),
        (str(run_dir / "09-edge-agent-trial-ethernet1.network"), "write"),
        (str(etc_dir / "10-edge-agent-ethernet1.network"), "write"),
        ("systemd-networkd", "run"),
        (str(tmp_path / "sources.d" / "edge-agent.sources"), "write"),
        ("chronyd", "run"),
    ]
    assert not run_dir.exists()
    assert not etc_dir.exists()
    assert not (tmp_path / "sources.d").exists()
    assert not (tmp_path / "state").exists()


def test_recover_uses_the_backend_the_trial_used(tmp_path: Path) -> None:
    from agent.netconf.base import NetworkApplyError
    from agent.netconf.netlink import NetlinkBackend

    first = _netconf(tmp_path)
    root = tmp_path / "root"
    trial = build_plan(parse_network_payload(_payload()), GENERIC)
    snapshot = {"network": first.backend.snapshot(trial), "time": first.time_backend.snapshot()}
    first._begin(trial, snapshot)
    first.backend.apply(trial)
    first.time_backend.apply(trial.ntp or ())
    first.store.close()

    # the configuration now says netlink, but the interrupted trial was a dry run
    store = Store(tmp_path / "state.db")
    without_factory = NetConf(store, NetlinkBackend(), dry_run_time_backend(root))
    with pytest.raises(NetworkApplyError) as caught:
        without_factory.recover()
    assert caught.value.reason == "BACKEND_UNAVAILABLE"
    assert without_factory.marker() is not None

    with_factory = NetConf(
        store,
        NetlinkBackend(),
        dry_run_time_backend(root),
        backend_for=lambda name: DryRunBackend(root) if name == "dry-run" else NetlinkBackend(),
    )
    assert with_factory.recover() is not None
    assert _files(root) == {}
    store.close()
