"""Wi-Fi DPP and uplink against a real wpa_supplicant (``-Dnone -ilo``, no radio)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.commissioning.backend import Commissioner
from agent.commissioning.errors import UnsupportedDeviceError
from agent.commissioning.notify import RecordingNotifier
from agent.commissioning.qr import parse
from agent.commissioning.things import FAILED, ManagedThings
from agent.commissioning.wifi import DppBackend, DppNetwork, WifiUplink, list_networks
from agent.commissioning.wpactrl import WpaCtrl
from agent.errors import ApplyError
from agent.store import Store
from tests.helpers.env import need_binary, unavailable

ENROLLEE = (
    "DPP:C:81/1;K:MDkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDIgADM2206avxHJaHXgLMkq/24e0rsrfMP9K1Tm8gx+ovP0I="
    ";;"
)


@pytest.fixture
def wpa(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = need_binary("wpa_supplicant")
    ctrl_dir = tmp_path / "ctrl"
    conf = tmp_path / "wpa.conf"
    conf.write_text(
        f"ctrl_interface={ctrl_dir}\nupdate_config=1\n\n"
        'network={\n\tssid="existing"\n\tkey_mgmt=NONE\n}\n'
    )
    log = tmp_path / "wpa.log"
    errors = tmp_path / "wpa.err"
    with errors.open("wb") as err_file:
        proc = subprocess.Popen(
            [binary, "-Dnone", "-ilo", "-c", str(conf), "-dd", "-f", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    socket_path = ctrl_dir / "lo"
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            err = errors.read_text(errors="replace")
            unavailable(f"wpa_supplicant did not start: {err}", "run the tests as root")
        time.sleep(0.02)
    try:
        yield str(socket_path), log
    finally:
        proc.terminate()
        proc.wait(5)


def test_dpp_configurator_and_qr_code(wpa: tuple[str, Path]) -> None:
    ctrl_path, _ = wpa

    async def scenario() -> None:
        async with WpaCtrl(ctrl_path) as ctrl:
            backend = DppBackend(ctrl, DppNetwork(ssid="edge-net"))
            configurator = await backend.configurator()
            assert configurator >= 1
            assert await backend.configurator() == configurator  # added once
            peer = await backend.add_peer(parse(ENROLLEE).source)
            assert peer >= 1
            info = await ctrl.request(f"DPP_BOOTSTRAP_INFO {peer}")
            assert "pkhash=bc4cbe2a7f4735f6db5ea817ee468d46110e47fa58833f4ecaacce775b657302" in info
            with pytest.raises(UnsupportedDeviceError) as refused:
                await backend.add_peer("DPP:K:aGVsbG8=;;")
            assert refused.value.reason == "DPP_URI_REFUSED"

    asyncio.run(scenario())


def test_dpp_auth_init_sent_and_failure_reported(wpa: tuple[str, Path], tmp_path: Path) -> None:
    ctrl_path, log = wpa
    things = ManagedThings(
        Store(tmp_path / "s.db"), region="us-east-1", account="1", notifier=RecordingNotifier()
    )
    thing_id = things.create(
        {
            "AuthenticationMaterial": ENROLLEE,
            "AuthenticationMaterialType": "WIFI_SETUP_QR_BAR_CODE",
            "Role": "DEVICE",
        }
    ).body["Id"]

    async def scenario() -> str:
        async with WpaCtrl(ctrl_path) as ctrl:
            backend = DppBackend(ctrl, DppNetwork(ssid="edge-net"))
            return await Commissioner(things, [backend], join_timeout=5).commission(thing_id)

    assert asyncio.run(scenario()) == FAILED
    described = things.describe(thing_id)
    assert described["FailureReason"] == "DPP_AUTH_INIT_FAILED"
    text = log.read_text(errors="replace")
    assert "DPP_AUTH_INIT peer=" in text
    assert f"ssid={b'edge-net'.hex()}" in text


def test_uplink_rolls_back_when_not_connected(wpa: tuple[str, Path]) -> None:
    ctrl_path, _ = wpa
    payload = parse("WIFI:S:uplink;T:WPA;P:correct-horse;;")

    async def scenario() -> tuple[Any, Any, ApplyError]:
        async with WpaCtrl(ctrl_path) as ctrl:
            before = await list_networks(ctrl)
            with pytest.raises(ApplyError) as info:
                await WifiUplink(ctrl).apply(payload, within=0.5)
            return before, await list_networks(ctrl), info.value

    before, after, error = asyncio.run(scenario())
    assert [n[1] for n in before] == ["existing"]
    assert after == before
    assert error.reason == "UPLINK_NOT_CONNECTED"
    assert "correct-horse" not in error.message


def test_uplink_refuses_enterprise(wpa: tuple[str, Path]) -> None:
    ctrl_path, _ = wpa
    payload = parse("WIFI:S:corp;T:WPA2-EAP;E:PEAP;I:me;P:pw;;")

    async def scenario() -> None:
        async with WpaCtrl(ctrl_path) as ctrl:
            with pytest.raises(UnsupportedDeviceError):
                await WifiUplink(ctrl).apply(payload, within=0.5)
            assert [n[1] for n in await list_networks(ctrl)] == ["existing"]

    asyncio.run(scenario())


def test_scan_command_applies_an_uplink_and_rolls_back(
    wpa: tuple[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctrl_path, _ = wpa
    config = tmp_path / "agent.toml"
    config.write_text(
        "[commissioning]\n"
        f'wifi_ctrl_socket = "{ctrl_path}"\n'
        "join_timeout_seconds = 30\n"
        "uplink_timeout_seconds = 1\n"
        f'database = "{tmp_path / "c.db"}"\n'
    )
    scans = "WIFI:S:uplink;T:WPA;P:correct-horse;;\nMT:U9VJ0OMV172PX813210\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(scans))
    assert main(["--config", str(config), "scan", "--source", "stdin"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answers = [line["Scan"] for line in lines if "Scan" in line]
    assert [(a["accepted"], a["format"] or a["reason"]) for a in answers] == [
        (True, "wifi"),
        (False, "FORMAT_NOT_SUPPORTED"),
    ]
    changes = [line["ThingChanged"] for line in lines if "ThingChanged" in line]
    assert [c["ProvisioningStatus"] for c in changes] == [
        "UNASSOCIATED",
        "PRE_ASSOCIATED",
        "FAILED",
    ]
    assert changes[-1]["Reason"] == "UPLINK_NOT_CONNECTED"
    assert "correct-horse" not in json.dumps(lines)
