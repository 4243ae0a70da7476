from __future__ import annotations

from pathlib import Path

import pytest

from agent.netconf.plan import NetworkConfigurationError, NtpServer
from agent.netconf.timesync import (
    NoTimeBackend,
    TimesyncdBackend,
    parse_tracking,
    render_chrony_sources,
    wait_for_sync,
)

SYNCED = (
    "7F000001,127.0.0.1,9,1795399417.565505657,-0.000002869,0.000001387,0.000001387,"
    "0.277,0.002,15.892,0.000008846,0.000009305,1.0,Normal\n"
)
UNSYNCED = (
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,"
    "1.0,1.0,0.0,Not synchronised\n"
)


def test_tracking_parse() -> None:
    synced = parse_tracking(SYNCED)
    assert (synced.synchronized, synced.server_name, synced.server_address) == (
        True,
        "127.0.0.1",
        "127.0.0.1",
    )
    assert not parse_tracking(UNSYNCED).synchronized
    assert not parse_tracking("506 Cannot talk to daemon").synchronized


def test_chrony_sources_keep_preference_order_and_ports() -> None:
    text = render_chrony_sources([NtpServer("b.example.org"), NtpServer("198.18.1.9", 11123)])
    assert text.splitlines()[1:] == [
        "server b.example.org iburst",
        "server 198.18.1.9 port 11123 iburst",
    ]


def _timesyncd(tmp_path: Path) -> TimesyncdBackend:
    return TimesyncdBackend(
        dropin_dir=tmp_path / "timesyncd.conf.d",
        restart_command=("sh", "-c", f"echo restarted >> {tmp_path / 'restarts'}"),
        synced_flag=tmp_path / "synchronized",
    )


def test_timesyncd_dropin_restart_and_revert(tmp_path: Path) -> None:
    backend = _timesyncd(tmp_path)
    snapshot = backend.snapshot()
    backend.apply([NtpServer("pool.ntp.org"), NtpServer("198.18.1.123")])
    assert backend.path.read_text().splitlines()[1:] == ["[Time]", "NTP=pool.ntp.org 198.18.1.123"]
    assert (tmp_path / "restarts").read_text() == "restarted\n"
    assert not backend.status().synchronized
    (tmp_path / "synchronized").touch()
    assert backend.status().synchronized
    assert backend.status().server_name == "pool.ntp.org"
    backend.revert(snapshot)
    assert not backend.path.exists()
    assert (tmp_path / "restarts").read_text() == "restarted\nrestarted\n"


def test_timesyncd_refuses_ports(tmp_path: Path) -> None:
    with pytest.raises(NetworkConfigurationError) as caught:
        _timesyncd(tmp_path).apply([NtpServer("198.18.1.123", 11123)])
    assert caught.value.fields[0].path == "NetworkingConfiguration.Ntp.NtpServers[0]"
    assert not (tmp_path / "timesyncd.conf.d").exists()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wait_for_sync_reports_trust_once_synchronised(tmp_path: Path) -> None:
    backend = _timesyncd(tmp_path)
    clock = _Clock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds
        if len(sleeps) == 3:
            (tmp_path / "synchronized").touch()  # timesyncd got its first answer

    result = wait_for_sync(backend, 30, interval=0.5, clock=clock, sleep=sleep)
    assert result.trusted
    assert result.waited_seconds == pytest.approx(1.5)


def test_wait_for_sync_gives_up_at_the_bound(tmp_path: Path) -> None:
    clock = _Clock()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    result = wait_for_sync(_timesyncd(tmp_path), 2, interval=0.5, clock=clock, sleep=sleep)
    assert not result.trusted
    assert result.waited_seconds == pytest.approx(2)
    assert "absent" in result.status.detail
    assert not wait_for_sync(NoTimeBackend(), 0).trusted
