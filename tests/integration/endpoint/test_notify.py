"""`registry serve` as a Type=notify service: READY=1 when it serves, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.endpoint.conftest import start_endpoint


def _next(manager: socket.socket) -> bytes:
    manager.settimeout(10)
    return manager.recv(4096)


def _nothing_more(manager: socket.socket) -> bool:
    manager.settimeout(0.3)
    try:
        manager.recv(4096)
    except TimeoutError:
        return True
    return False


def test_serve_alone_tells_systemd_ready_and_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        endpoint = start_endpoint(tmp_path)
        try:
            # One READY=1, from serve itself: mosquitto (which would send its own as soon as
            # it listens, before the worker is attached) does not see NOTIFY_SOCKET.
            assert _next(manager) == (
                b"READY=1\nSTATUS=serving fleet provisioning on 127.0.0.1:%d" % endpoint.port
            )
            assert _nothing_more(manager)
        finally:
            code = endpoint.serve.stop()
        assert code == 0
        assert _next(manager) == b"STOPPING=1\nSTATUS=stopping"
        assert _nothing_more(manager)
