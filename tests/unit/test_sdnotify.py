"""The sd_notify protocol against real datagram sockets."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from agent.sdnotify import Notifier


def test_path_socket_receives_newline_separated_fields(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        notifier.ready("waiting")
        notifier.stopping()
        assert manager.recv(100) == b"READY=1\nSTATUS=waiting"
        assert manager.recv(100) == b"STOPPING=1\nSTATUS=stopping"
        notifier.close()


def test_abstract_socket() -> None:
    name = f"edge-agent-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(b"\0" + name.encode())
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        notifier.watchdog()
        assert manager.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_without_a_manager_nothing_happens_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    Notifier({}).ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    gone.ready("x")  # the manager went away: logged, never raised
    gone.close()


def test_watchdog_interval_only_for_this_process() -> None:
    assert Notifier({"WATCHDOG_USEC": "3000000"}).watchdog_seconds == 3.0
    mine = {"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_seconds == 0.5
    other = {"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_seconds is None
