"""``edge-agent run`` as systemd runs it: notify socket, watchdog, signals, the local API."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.daemon import api_request
from agent.errors import StateError


@dataclass
class Service:
    """One ``edge-agent run`` child with a fake service manager's notify socket."""

    process: subprocess.Popen[str]
    notify: socket.socket
    config: Path
    api: Path
    messages: list[dict[str, str]] = field(default_factory=list)

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15) -> dict[str, str]:
        """The first notification (seen or arriving) that sets ``key`` (to ``value``)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value} in {self.messages}")
            self.notify.settimeout(remaining)
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def receive_for(self, seconds: float) -> list[dict[str, str]]:
        """Every notification that arrives in the next ``seconds``."""
        got: list[dict[str, str]] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.notify.settimeout(remaining)
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                break
            got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        self.messages.extend(got)
        return got


def _config(tmp: Path, api: Path, log_level: str = "info") -> str:
    return (
        f'[agent]\nstate_dir = "{tmp / "state"}"\nruntime_dir = "{tmp / "run"}"\n'
        f'log_level = "{log_level}"\n[api]\nsocket = "{api}"\n'
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    api = tmp_path / "run" / "api.sock"
    config = tmp_path / "agent.toml"
    config.write_text(_config(tmp_path, api), encoding="utf-8")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "400000",  # 0.4 s: fed every 0.2 s
    }
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Service(process, notify, config, api)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
        notify.close()


def test_ready_status_watchdog_and_clean_stop(service: Service) -> None:
    ready = service.wait_for("READY", "1")
    assert ready["STATUS"] == "running"
    # the socket exists once READY is sent, 0660
    assert stat.S_ISSOCK(service.api.lstat().st_mode)
    assert stat.S_IMODE(service.api.stat().st_mode) == 0o660
    code, body = api_request(service.api, "GET", "/status")
    assert code == 200
    assert body["state"] == "RUNNING"
    assert body["configFile"] == str(service.config)
    # the watchdog is fed from the loop, about every 0.2 s
    fed = [m for m in service.receive_for(1.0) if m.get("WATCHDOG") == "1"]
    assert 2 <= len(fed) <= 10
    service.process.send_signal(signal.SIGTERM)
    service.wait_for("STOPPING", "1")
    assert service.process.wait(timeout=15) == 0
    assert not service.api.exists()
    with pytest.raises(StateError) as caught:
        api_request(service.api, "GET", "/status")
    assert caught.value.reason == "AGENT_NOT_RUNNING"


def test_unknown_paths_and_methods_get_the_error_shape(service: Service) -> None:
    service.wait_for("READY", "1")
    code, body = api_request(service.api, "GET", "/no/such/thing")
    assert code == 404
    assert body["error"]["code"] == "ResourceNotFoundException"
    assert body["error"]["statusCode"] == 404
    assert body["error"]["reason"] == "PATH_NOT_FOUND"
    code, body = api_request(service.api, "DELETE", "/status")
    assert code == 405
    assert body["error"]["reason"] == "METHOD_NOT_ALLOWED"


def test_sighup_reloads_and_refuses_a_broken_file(service: Service, tmp_path: Path) -> None:
    service.wait_for("READY", "1")
    service.config.write_text(_config(tmp_path, service.api, "debug"), encoding="utf-8")
    service.process.send_signal(signal.SIGHUP)
    service.wait_for("RELOADING", "1")
    service.wait_for("READY", "1")
    _, body = api_request(service.api, "GET", "/status")
    assert body["configReloadedAt"] is not None
    assert "configReloadError" not in body
    service.messages.clear()
    service.config.write_text("[agent]\nno_such_key = 1\n", encoding="utf-8")
    service.process.send_signal(signal.SIGHUP)
    service.wait_for("RELOADING", "1")
    service.wait_for("READY", "1")
    _, body = api_request(service.api, "GET", "/status")
    assert body["configReloadError"]["reason"] == "CONFIG_INVALID"
    assert body["configReloadError"]["fields"][0]["path"] == "agent.no_such_key"
    assert body["state"] == "RUNNING"  # still serving with the previous configuration


def test_status_command_reads_the_api(service: Service) -> None:
    service.wait_for("READY", "1")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(service.config), "status", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["agentVersion"]


def test_a_stale_socket_is_replaced_and_a_file_is_not(tmp_path: Path) -> None:
    api = tmp_path / "run" / "api.sock"
    api.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(api))
    stale.close()  # a socket file nobody listens on: a previous crash
    config = tmp_path / "agent.toml"
    config.write_text(_config(tmp_path, api), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                code, _ = api_request(api, "GET", "/status", timeout=1)
                break
            except StateError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert code == 200
    finally:
        process.terminate()
        process.communicate(timeout=15)
    api.write_text("not a socket")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"]["reason"] == "API_SOCKET_FAILED"
    assert api.read_text() == "not a socket"
