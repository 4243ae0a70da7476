"""``edge-agent run`` end to end: a FAT image dropped in the watched directory is a stick.

Real processes: the daemon, ``registry serve`` (mosquitto + plugin + worker) as the
provisioning endpoint, a second mosquitto as the operational broker, a watcher on it. The
network goes through the dry-run backend (rendered files under a private root).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.appliance import Appliance, Fleet, read_stick, stick_image
from tests.helpers.endpoint import free_port

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture
def appliance(tmp_path: Path, fleet: Fleet) -> Iterator[Appliance]:
    one = Appliance(tmp_path / "appliance", fleet)
    one.directory.mkdir()
    one.start()
    try:
        yield one
    finally:
        one.stop()


def _things(fleet: Fleet) -> int:
    with sqlite3.connect(fleet.directory / "registry.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM registry_things").fetchone()[0])


def _stick(tmp: Path, device: str, data: bytes, image: str = "") -> Path:
    path = tmp / f"{image or device}.img"
    return stick_image(path, {f"certificates-omni_{device}.zip": data})


def _result(image: Path) -> dict[str, object]:
    """result.json (written back just after the run's record ends)."""
    deadline = time.monotonic() + 15
    while (raw := read_stick(image)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert raw is not None, "no edge-agent/result.json on the stick"
    result: dict[str, object] = json.loads(raw)
    return result


def test_stick_in_succeeded_reported_then_refusals_reported(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    device, data = fleet.archive()
    things = _things(fleet)
    image = appliance.insert(_stick(tmp_path, device, data))
    run = appliance.wait_run(after=set())
    assert run["Status"] == "SUCCEEDED", run
    assert run["DeviceName"] == device
    outcome = fleet.wait_event(run["Id"], "RUN_OUTCOME")
    assert outcome["body"] == {"runId": run["Id"], "status": "SUCCEEDED"}
    steps = [e["body"].get("step") for e in fleet.events(run["Id"]) if e["type"] == "RUN_STATUS"]
    assert steps[-5:] == ["validate", "install", "network", "time-check", "fleet"]
    assert _things(fleet) == things + 1
    result = _result(image)
    assert result["status"] == "SUCCEEDED"
    assert result["thingName"] == run["IotThingName"]
    assert list(result["timings"]) == ["validate", "install", "network", "time-check", "fleet"]  # type: ignore[call-overload]
    log = read_stick(image, "edge-agent/provisioning.log")
    assert log is not None
    assert b"SUCCEEDED" in log
    assert b"BEGIN" not in log
    rendered = appliance.directory / "root" / "etc" / "systemd" / "network"
    assert "Address=198.18.10.20/24" in (rendered / "10-edge-agent-ethernet0.network").read_text()

    # the same archive again: FAILED, on the stick and over MQTT (the appliance has its
    # identity now)
    again = appliance.insert(_stick(tmp_path, device, data, image="again"))
    second = appliance.wait_run(after={run["Id"]})
    assert second["Status"] == "FAILED"
    assert second["Reason"] == "ARCHIVE_ALREADY_USED"
    event = fleet.wait_event(second["Id"], "RUN_OUTCOME")
    assert event["body"]["status"] == "FAILED"
    assert event["body"]["error"]["reason"] == "ARCHIVE_ALREADY_USED"
    assert _result(again)["reason"] == "ARCHIVE_ALREADY_USED"

    # a tampered archive: FAILED with the archive's reason
    other, fresh = fleet.archive()
    broken = bytearray(fresh)
    broken[len(broken) // 3] ^= 0x01
    bad = appliance.insert(_stick(tmp_path, other, bytes(broken)))
    third = appliance.wait_run(after={run["Id"], second["Id"]})
    assert third["Status"] == "FAILED"
    reason = fleet.wait_event(third["Id"], "RUN_OUTCOME")["body"]["error"]["reason"]
    assert reason == third["Reason"] == _result(bad)["reason"]
    assert _things(fleet) == things + 1


def test_stick_without_archive_and_corrupt_zip_fail_on_the_stick(
    appliance: Appliance, tmp_path: Path
) -> None:
    empty = appliance.insert(stick_image(tmp_path / "empty.img", {"README.txt": b"hello"}))
    run = appliance.wait_run(after=set())
    assert (run["Status"], run["Reason"]) == ("FAILED", "NO_ARCHIVE_ON_STICK")
    assert _result(empty)["reason"] == "NO_ARCHIVE_ON_STICK"
    corrupt = appliance.insert(_stick(tmp_path, "broken-1", b"PK\x03\x04 not a zip"))
    second = appliance.wait_run(after={run["Id"]})
    assert second["Status"] == "FAILED"
    assert _result(corrupt)["status"] == "FAILED"
    assert _result(corrupt)["reason"] == second["Reason"]


def test_registry_rejects_unknown_template(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    things = _things(fleet)
    device, data = fleet.archive(template="no-such-template")
    image = appliance.insert(_stick(tmp_path, device, data))
    run = appliance.wait_run(after=set())
    assert (run["Status"], run["Reason"]) == ("FAILED", "FLEET_REJECTED"), run
    result = _result(image)
    assert result["error"]["aws"]["operation"] == "RegisterThing"  # type: ignore[index]
    assert _things(fleet) == things


def test_endpoint_unreachable_ends_error(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    device, data = fleet.archive(port=free_port())
    image = appliance.insert(_stick(tmp_path, device, data))
    run = appliance.wait_run(after=set())
    assert run["Status"] == "ERROR", run
    assert run["Reason"] == "MQTT_CONNECT_FAILED"
    assert _result(image)["status"] == "ERROR"


def test_second_stick_during_a_run_is_refused(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    device, data = fleet.archive(template="edge-slow")  # RegisterThing takes 3 s
    other, data2 = fleet.archive()
    first_image = _stick(tmp_path, device, data)
    second_image = _stick(tmp_path, other, data2)
    first = appliance.insert(first_image)
    running = appliance.wait_run(after=set(), final=False)
    second = appliance.insert(second_image)
    deadline = time.monotonic() + 30
    while (raw := read_stick(second)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert raw is not None
    refused = json.loads(raw)
    assert (refused["status"], refused["reason"]) == ("FAILED", "RUN_IN_PROGRESS")
    done = appliance.wait_run(after=set())
    appliance.wait_idle()
    assert appliance.request("GET", f"/devices/{running['Id']}")[1]["Status"] == "SUCCEEDED"
    assert _result(first)["status"] == "SUCCEEDED"
    assert (done["Status"], done["Reason"]) == ("FAILED", "RUN_IN_PROGRESS")  # the latest run
    assert done["Id"] != running["Id"]


def test_post_devices_provisions_from_a_path(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    device, data = fleet.archive()
    path = tmp_path / f"certificates-omni_{device}.zip"
    path.write_bytes(data)
    code, body = appliance.request("POST", "/devices", {"ArchivePath": str(path), "Name": device})
    assert code == 202, body
    assert body["Status"] in ("AWAITING_PROVISIONING", "PENDING")
    run = appliance.wait_run(after=set())
    assert run["Id"] == body["Id"]
    assert appliance.request("GET", f"/devices/{body['Id']}")[1]["Status"] == "SUCCEEDED"
    assert fleet.wait_event(body["Id"], "RUN_OUTCOME")["body"]["status"] == "SUCCEEDED"
    code, error = appliance.request("POST", "/devices", {"ArchivePath": "relative.zip", "X": 1})
    assert code == 400
    assert {f["path"] for f in error["error"]["fields"]} == {"ArchivePath", "X"}
    code, error = appliance.request("GET", "/devices/run-0000")
    assert (code, error["error"]["reason"]) == (404, "RUN_NOT_FOUND")


def test_ready_and_status_show_the_steps(fleet: Fleet, tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    one = Appliance(tmp_path / "appliance", fleet, notify=notify)
    one.directory.mkdir()
    try:
        one.start()
        messages: list[str] = []
        while "READY=1" not in "".join(messages):
            messages.append(sock.recv(4096).decode())
        device, data = fleet.archive()
        path = tmp_path / f"certificates-omni_{device}.zip"
        path.write_bytes(data)
        code, body = one.request("POST", "/devices", {"ArchivePath": str(path)})
        assert code == 202
        while "STATUS=idle; last run SUCCEEDED" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        statuses = [m.split("STATUS=", 1)[1].splitlines()[0] for m in messages if "STATUS=" in m]
        steps = [s.rsplit(": ", 1)[1] for s in statuses if s.startswith(f"run {body['Id']}")]
        assert steps == ["validate", "install", "network", "time-check", "fleet"]
    finally:
        one.stop()
        sock.close()


def test_kill_9_during_register_thing_then_restart_registers_once(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    things = _things(fleet)
    device, data = fleet.archive(template="edge-slow")
    path = tmp_path / f"certificates-omni_{device}.zip"
    path.write_bytes(data)
    code, body = appliance.request("POST", "/devices", {"ArchivePath": str(path)})
    assert code == 202
    deadline = time.monotonic() + 30
    seen: dict[str, object] = {}
    while time.monotonic() < deadline and seen.get("Step") != "fleet":
        seen = appliance.request("GET", f"/devices/{body['Id']}")[1]
        time.sleep(0.02)
    time.sleep(1)  # CreateCertificateFromCsr answered, RegisterThing waits on the hook
    assert appliance.request("GET", f"/devices/{body['Id']}")[1]["Status"] == "PENDING"
    appliance.kill()
    time.sleep(3)  # the registry finishes the RegisterThing nobody waits for any more
    appliance.start()
    run = appliance.wait_run(after=set())
    assert run["Id"] == body["Id"]
    assert run["Status"] == "SUCCEEDED", run
    assert _things(fleet) == things + 1  # the resumed exchange used the same claim and token
    fleet.wait_event(body["Id"], "RUN_OUTCOME")
    assert appliance.status()["provisioning"]["networkRecovery"]["action"] in (
        "none",
        "reapplied",
    )


def test_operational_broker_down_report_delivered_when_back(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.broker.stop()
    try:
        device, data = fleet.archive()
        appliance.insert(_stick(tmp_path, device, data))
        run = appliance.wait_run(after=set())
        assert run["Status"] == "SUCCEEDED", run
        time.sleep(1)
        assert not [e for e in fleet.events(run["Id"]) if e["type"] == "RUN_OUTCOME"]
    finally:
        fleet.broker.start()
    assert fleet.wait_event(run["Id"], "RUN_OUTCOME")["body"]["status"] == "SUCCEEDED"
