"""Failure paths of ``edge-agent run`` the stick flow meets, through the real daemon.

Each appliance is provisioned once first (so it has an operational MQTT identity), then
meets one failure: a claim whose window is over, or nearly over, when the stick goes in; a
clock that never synchronises (the appliance's clock is before the agent's build-time
floor, as on a box fresh from the shelf, and the time backend never reports a sync); a
stick pulled in the middle of a run. Each run ends FAILED or ERROR with its reason in the
run record, in its ``RUN_OUTCOME`` over MQTT and (when the stick is still there) in
``edge-agent/result.json`` on the stick; nothing is half-applied.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.appliance import Appliance, Fleet, read_stick, stick_image

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture
def appliance(tmp_path: Path, fleet: Fleet) -> Iterator[Appliance]:
    """An appliance provisioned once (its reports now go over MQTT)."""
    one = Appliance(tmp_path / "appliance", fleet)
    one.directory.mkdir()
    one.start()
    try:
        device, data = fleet.archive()
        one.insert(_stick(tmp_path, device, data))
        first = one.wait_run(after=set())
        assert first["Status"] == "SUCCEEDED", first
        one.wait_idle()
        yield one
    finally:
        one.stop()


def _stick(tmp: Path, device: str, data: bytes) -> Path:
    return stick_image(tmp / f"{device}.img", {f"certificates-omni_{device}.zip": data})


def _result(image: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while (raw := read_stick(image)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert raw is not None, "no edge-agent/result.json on the stick"
    result: dict[str, Any] = json.loads(raw)
    return result


def _things(fleet: Fleet) -> int:
    with sqlite3.connect(fleet.directory / "registry.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM registry_things").fetchone()[0])


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _reported(fleet: Fleet, run: dict[str, Any]) -> dict[str, Any]:
    """The run's RUN_OUTCOME over MQTT: its status and reason match the run record."""
    event = fleet.wait_event(run["Id"], "RUN_OUTCOME")
    body: dict[str, Any] = event["body"]
    assert body["status"] == run["Status"]
    assert body["error"]["reason"] == run["Reason"]
    return body


def _restart(appliance: Appliance, *, archive: str = "", extra: str = "") -> None:
    appliance.stop()
    appliance.archive_extra = archive
    appliance.extra = extra
    appliance.start()


def _future_floor() -> str:
    """A build-time floor a day ahead: the clock is not trusted until it synchronises."""
    floor = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return f'build_time_floor = "{floor.isoformat(timespec="seconds")}"'


@pytest.mark.parametrize(
    ("window_left", "reason", "step"),
    [
        (-600.0, "CERTIFICATE_EXPIRED", "validate"),
        (-30.0, "CLAIM_EXPIRED", "validate"),  # inside the clock skew the verifier allows
        (3.0, "CLAIM_EXPIRED", "validate"),
    ],
    ids=["window-over", "window-over-within-skew", "window-nearly-over"],
)
def test_expired_claim_fails_reported_and_on_the_stick(
    appliance: Appliance,
    fleet: Fleet,
    tmp_path: Path,
    window_left: float,
    reason: str,
    step: str,
) -> None:
    network = _tree(appliance.directory / "root")
    things = _things(fleet)
    before = appliance.run_ids()
    device, data = fleet.archive(window_left=window_left)
    image = appliance.insert(_stick(tmp_path, device, data))
    run = appliance.wait_run(after=before)
    assert (run["Status"], run["Reason"], run["Step"]) == ("FAILED", reason, step), run
    _reported(fleet, run)
    result = _result(image)
    assert (result["status"], result["reason"]) == ("FAILED", reason)
    assert "window" in result["message"] or "expired" in result["message"]
    assert _tree(appliance.directory / "root") == network  # the network is untouched
    assert _things(fleet) == things
    # nothing installed: the permanent identity stays in force
    assert "-fleet-" in (appliance.state / "credentials" / "current").resolve().name


def test_clock_never_synchronised_ends_error_within_its_budget(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    _restart(appliance, archive=_future_floor(), extra="[ntp]\nsync_timeout_seconds = 2\n")
    before = appliance.run_ids()
    things = _things(fleet)
    device, data = fleet.archive()
    image = appliance.insert(_stick(tmp_path, device, data))
    run = appliance.wait_run(after=before)
    assert (run["Status"], run["Reason"], run["Step"]) == (
        "ERROR",
        "CLOCK_NOT_SYNCHRONIZED",
        "time-check",
    ), run
    waited = run["Result"]["timings"]["time-check"]
    assert 1.9 <= waited < 10, waited  # bounded by [ntp] sync_timeout_seconds
    body = _reported(fleet, run)
    assert "not synchronised within 2 s" in body["error"]["message"]
    result = _result(image)
    assert (result["status"], result["reason"]) == ("ERROR", "CLOCK_NOT_SYNCHRONIZED")
    assert _things(fleet) == things  # the claim was never used
    # the claim set it installed is not left in force: the permanent identity is back, and
    # after a restart the operational link (and with it the reports) still works
    current = (appliance.state / "credentials" / "current").resolve()
    assert "-fleet-" in current.name, current
    _restart(appliance)
    assert appliance.wait_idle()["operationalLink"] is True
    device, data = fleet.archive(template="no-such-template")
    before = appliance.run_ids()
    appliance.insert(_stick(tmp_path, device, data))
    rejected = appliance.wait_run(after=before)
    assert _reported(fleet, rejected)["error"]["reason"] == "FLEET_REJECTED"


def test_stick_pulled_mid_run_stops_the_run_reported_not_written(
    appliance: Appliance, fleet: Fleet, tmp_path: Path
) -> None:
    # the run waits for the clock in its time-check step: the stick is pulled there
    _restart(appliance, archive=_future_floor(), extra="[ntp]\nsync_timeout_seconds = 60\n")
    before = appliance.run_ids()
    things = _things(fleet)
    device, data = fleet.archive()
    image = appliance.insert(_stick(tmp_path, device, data))
    deadline = time.monotonic() + 30
    running: dict[str, Any] = {}
    while running.get("Step") != "time-check" and time.monotonic() < deadline:
        running = appliance.status()["provisioning"]["currentRun"] or {}
        time.sleep(0.02)
    assert running.get("Step") == "time-check", running
    pulled = time.monotonic()
    image.unlink()
    run = appliance.wait_run(after=before)
    assert time.monotonic() - pulled < 10  # not the 60 s the clock wait would take
    assert (run["Id"], run["Status"], run["Reason"]) == (running["Id"], "ERROR", "STICK_REMOVED")
    assert run["Step"] == "time-check"
    body = _reported(fleet, run)
    assert "pulled" in body["error"]["message"]
    # nothing half-applied: no network trial left, the network step's commit stands
    with sqlite3.connect(appliance.state / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM netconf_trial").fetchone()[0] == 0
        outcomes = [r[0] for r in db.execute("SELECT outcome FROM netconf_history")]
    assert outcomes[-1] == "committed"
    assert _things(fleet) == things
    # no result written to a stick that is gone (no image made again, no run from it)
    appliance.wait_idle()
    assert not image.exists()
    assert image.name not in {p.name for p in appliance.sticks.iterdir()}
    assert appliance.status()["provisioning"]["lastRun"]["Id"] == run["Id"]
