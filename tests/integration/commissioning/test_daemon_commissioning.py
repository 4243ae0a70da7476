"""``edge-agent run`` with ``[commissioning]``: a real wpa_supplicant, a pty scanner (socat).

The daemon starts the Wi-Fi backends and the serial scanner; a scanned DPP code becomes a
managed thing and is commissioned (``DPP_AUTH_INIT`` cannot succeed without a radio, so it
ends ``FAILED`` with its reason); a ``WIFI:`` code posted to ``/managed-things`` is tried as
the uplink and rolled back; ``GET /status`` shows what is up; SIGTERM stops it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import api_request
from agent.errors import StateError
from tests.integration.commissioning.test_scanner_pty import pty_pair
from tests.integration.commissioning.test_wifi_wpa import ENROLLEE, wpa

__all__ = ["pty_pair", "wpa"]

UPLINK = "WIFI:T:WPA;S:edge-uplink;P:uplink-passphrase;;"


def _config(tmp: Path, api: Path, ctrl: str, scanner: str) -> str:
    return f"""
[agent]
state_dir = "{tmp / "state"}"
runtime_dir = "{tmp / "run"}"
[api]
socket = "{api}"
[commissioning]
database = "{tmp / "things.db"}"
wifi_ctrl_socket = "{ctrl}"
dpp_ssid = "edge-net"
uplink_timeout_seconds = 1
join_timeout_seconds = 5
scanner = "{scanner}"
scanner_baudrate = 115200
scanner_terminator = "cr"
"""


@pytest.fixture
def daemon(
    tmp_path: Path, wpa: tuple[str, Path], pty_pair: tuple[str, str]
) -> Iterator[tuple[subprocess.Popen[str], Path, str, Path]]:
    ctrl, log = wpa
    scanner_end, host_end = pty_pair
    api = tmp_path / "run" / "api.sock"
    config = tmp_path / "agent.toml"
    config.write_text(_config(tmp_path, api, ctrl, host_end), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, api, scanner_end, log
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def _get(api: Path, target: str) -> Any:
    code, body = api_request(api, "GET", target)
    assert code == 200, body
    return body


def _wait_status(api: Path, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status: dict[str, Any] = _get(api, "/status")
        except StateError:
            status = {}
        if status.get("commissioning", {}).get("scanner"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the daemon did not come up: {status}")
        time.sleep(0.05)


def _wait_thing(api: Path, thing_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        thing: dict[str, Any] = _get(api, f"/managed-things/{thing_id}")
        if thing["ProvisioningStatus"] == status or time.monotonic() > deadline:
            return thing
        time.sleep(0.05)


def test_run_commissions_scanned_and_posted_codes(
    daemon: tuple[subprocess.Popen[str], Path, str, Path],
) -> None:
    process, api, scanner_end, wpa_log = daemon
    status = _wait_status(api)["commissioning"]
    assert status["enabled"] is True
    assert status["backends"] == {"wifi-uplink": "UP", "wifi-dpp": "UP"}
    assert status["scanner"]["state"] == "UP"
    time.sleep(0.3)  # the reader thread has opened the port

    fd = os.open(scanner_end, os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(fd, f"not a code\r{ENROLLEE}\r".encode())
    finally:
        os.close(fd)
    deadline = time.monotonic() + 10
    items: list[dict[str, Any]] = []
    while not items and time.monotonic() < deadline:
        items = _get(api, "/managed-things")["Items"]
        time.sleep(0.05)
    assert len(items) == 1, items  # the bad scan made nothing
    dpp = _wait_thing(api, items[0]["Id"], "FAILED")
    assert dpp["Format"] == "dpp"
    assert dpp["FailureReason"] == "DPP_AUTH_INIT_FAILED"
    assert "DPP_AUTH_INIT peer=" in wpa_log.read_text(errors="replace")

    code, created = api_request(
        api,
        "POST",
        "/managed-things",
        body={
            "AuthenticationMaterial": UPLINK,
            "AuthenticationMaterialType": "WIFI_SETUP_QR_BAR_CODE",
            "Role": "CONTROLLER",
        },
    )
    assert code == 201, created
    uplink = _wait_thing(api, created["Id"], "FAILED")
    assert uplink["FailureReason"] == "UPLINK_NOT_CONNECTED"
    assert _get(api, "/status")["commissioning"]["things"] == {"FAILED": 2}

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    _out, err = process.communicate(timeout=10)
    assert "uplink-passphrase" not in err
    assert "scan from" in err  # the answers are in the journal
