"""The chrony backend against the real chronyd: config check, query, reload, sync wait.

Every chronyd here runs with ``-x`` or ``-Q`` (never touches the system clock), on loopback,
with its own pid file and command socket, and is stopped at the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.netconf.plan import NtpServer
from agent.netconf.timesync import ChronyBackend, parse_tracking
from tests.helpers.network import static_ip
from tests.integration.netconf.conftest import REPO, Lab, wait_for


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Chrony:
    """A local NTP server on loopback and a 'system' chronyd the agent reconfigures."""

    server_port: int
    sources_dir: Path
    socket: Path

    @property
    def chronyc(self) -> list[str]:
        return ["chronyc", "-h", str(self.socket)]


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def chrony(tmp_path: Path) -> Iterator[Chrony]:
    port = _free_udp_port()
    server_conf = tmp_path / "server.conf"
    server_conf.write_text(
        f"port {port}\nbindaddress 127.0.0.1\nlocal stratum 8\nallow 127.0.0.1\n"
        f"cmdport 0\nbindcmdaddress /\npidfile {tmp_path / 'server.pid'}\nuser root\n"
    )
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    sources = tmp_path / "sources.d"
    sources.mkdir()
    client_conf = tmp_path / "client.conf"
    client_conf.write_text(
        f"port 0\ncmdport 0\nbindcmdaddress {sock_dir / 'chronyd.sock'}\n"
        f"pidfile {sock_dir / 'client.pid'}\nsourcedir {sources}\nuser root\n"
    )
    procs = [
        _start(["chronyd", "-x", "-d", "-f", str(server_conf)], tmp_path / "server.log"),
        _start(["chronyd", "-x", "-d", "-f", str(client_conf)], tmp_path / "client.log"),
    ]
    try:
        wait_for((sock_dir / "chronyd.sock").exists, 10, "chronyd's command socket")
        yield Chrony(server_port=port, sources_dir=sources, socket=sock_dir / "chronyd.sock")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_rendered_sources_pass_chronyd_parse_check(tmp_path: Path) -> None:
    backend = ChronyBackend(sources_dir=tmp_path / "sources.d", chronyc=())
    backend.apply([NtpServer("pool.ntp.org"), NtpServer("198.18.1.123", 11123)])
    conf = tmp_path / "chrony.conf"
    conf.write_text(f"include {backend.path}\ncmdport 0\n")
    result = subprocess.run(
        ["chronyd", "-p", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "server pool.ntp.org iburst" in result.stdout
    assert "server 198.18.1.123 port 11123 iburst" in result.stdout
    # the same check refuses a broken sources file, so it can fail
    backend.path.write_text("server\n")
    result = subprocess.run(
        ["chronyd", "-p", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "Could not parse server directive" in result.stderr + result.stdout


def test_rendered_sources_answer_a_chronyd_query(tmp_path: Path, chrony: Chrony) -> None:
    backend = ChronyBackend(
        sources_dir=tmp_path / "query", chronyc=(), source_options="iburst minpoll 0 maxpoll 0"
    )
    backend.apply([NtpServer("127.0.0.1", chrony.server_port)])
    conf = tmp_path / "query.conf"
    conf.write_text(f"include {backend.path}\ncmdport 0\npidfile {tmp_path / 'q.pid'}\nuser root\n")
    result = subprocess.run(
        ["chronyd", "-Q", "-t", "15", "-f", str(conf)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System clock wrong by" in output


def test_apply_reloads_chronyd_and_waits_for_sync(tmp_path: Path, chrony: Chrony) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[network]\nbackend = "netlink"\nresolv_conf = "{tmp_path / "resolv.conf"}"\n'
        f'[ntp]\nbackend = "chrony"\nsync_timeout_seconds = 30\n'
        f'chrony_sources_dir = "{chrony.sources_dir}"\n'
        f"chronyc_command = {json.dumps(chrony.chronyc)}\n"
        f'chrony_source_options = "iburst minpoll 0 maxpoll 0"\n'
    )
    agent = [sys.executable, "-m", "agent", "--config", str(config)]
    status = subprocess.run(
        [*agent, "net", "status", "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout)["NetworkingStatus"]["NtpStatus"] == {
        "NtpServerName": "",
        "IpAddress": "",
        "ConnectionStatus": "NOT_CONNECTED",
    }
    payload = tmp_path / "ntp.json"
    payload.write_text(json.dumps({"Ntp": {"NtpServers": [f"127.0.0.1:{chrony.server_port}"]}}))
    result = subprocess.run(
        [*agent, "net", "apply", str(payload), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["outcome"] == "committed"
    assert out["timeSync"]["clockTrusted"] is True
    assert out["timeSync"]["server"] == "127.0.0.1"
    sources = subprocess.run(
        [*chrony.chronyc, "-c", "sources"], capture_output=True, text=True, check=True
    )
    assert ",127.0.0.1," in sources.stdout
    status = subprocess.run(
        [*agent, "net", "status", "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout)["NetworkingStatus"]["NtpStatus"] == {
        "NtpServerName": "127.0.0.1",
        "IpAddress": "127.0.0.1",
        "ConnectionStatus": "CONNECTED",
    }
    tracking = subprocess.run(
        [*chrony.chronyc, "-c", "tracking"], capture_output=True, text=True, check=True
    )
    assert parse_tracking(tracking.stdout).synchronized


@pytest.mark.netns
def test_failed_trial_restores_chrony_sources(lab: Lab, chrony: Chrony) -> None:
    previous = "# the integrator's sources\nserver 127.0.0.2 port 9 iburst\n"
    existing = chrony.sources_dir / "edge-agent.sources"
    existing.write_text(previous)
    lab.write_config(
        ntp={
            "backend": "chrony",
            "chrony_sources_dir": str(chrony.sources_dir),
            "chronyc_command": chrony.chronyc,
        }
    )
    payload = {
        "Ethernet0": static_ip("198.18.1.30", "24", "198.18.1.99", []),
        "Ntp": {"NtpServers": [f"127.0.0.1:{chrony.server_port}"]},
    }
    result = lab.agent("net", "apply", str(lab.payload_file(payload)), "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert existing.read_text() == previous
    sources = subprocess.run(
        [*chrony.chronyc, "-c", "sources"], capture_output=True, text=True, check=True
    )
    # chronyd uses the integrator's server again, and no longer the trial's
    assert ",127.0.0.2," in sources.stdout
    assert ",127.0.0.1," not in sources.stdout
