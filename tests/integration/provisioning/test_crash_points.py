"""``kill -9`` at every step of a run, then a restart: the outcome is consistent.

The daemon is started with ``EDGE_AGENT_CRASH_AT`` naming one crash point
(:mod:`agent.faults`); it kills itself with SIGKILL there. The operational broker is then
stopped, the daemon started again without the variable, and once the run has ended the
broker comes back. Checked from the outside only:

- the run's status and reason (SUCCEEDED once the credentials were recorded, else ERROR
  ``RUN_INTERRUPTED`` and the same archive provisions afterwards);
- the network files (dry-run root) exactly as before the run or exactly as a run that was
  never interrupted commits them, and no trial left in ``state.db``;
- one credential set in force, every file of it from the run's archive, keys 0600, no
  staged, unrecorded or pending key material left;
- at most one thing registered by the registry for the archive;
- the run's ``RUN_OUTCOME`` delivered exactly once, after the broker came back.
"""

from __future__ import annotations

import io
import json
import sqlite3
import stat
import time
import zipfile
from pathlib import Path

import pytest

from agent.faults import ENV, POINTS
from tests.helpers.appliance import Appliance, Fleet, read_stick, stick_image

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

#: Points before the ledger records the archive: the run ends ERROR RUN_INTERRUPTED.
INTERRUPTED = ("validate.done", "install.staged", "install.activated")


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the dry-run network root) with its content."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_text(errors="replace")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def committed(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The network files a run that was never interrupted leaves (the reference)."""
    one = Appliance(tmp_path_factory.mktemp("reference"), fleet)
    one.start()
    try:
        run = _provision(one, fleet, one.directory)
        assert run["Status"] == "SUCCEEDED", run
    finally:
        one.stop()
    tree = _tree(one.directory / "root")
    assert tree, "the reference run wrote no network files"
    return tree


def _things(fleet: Fleet) -> int:
    with sqlite3.connect(fleet.directory / "registry.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM registry_things").fetchone()[0])


def _archive_file(fleet: Fleet, directory: Path) -> tuple[Path, bytes]:
    device, data = fleet.archive()
    path = directory / f"certificates-omni_{device}.zip"
    path.write_bytes(data)
    return path, data


def _post(appliance: Appliance, path: Path) -> str:
    code, body = appliance.request("POST", "/devices", {"ArchivePath": str(path)})
    assert code == 202, body
    return str(body["Id"])


def _provision(appliance: Appliance, fleet: Fleet, directory: Path) -> dict[str, object]:
    path, _ = _archive_file(fleet, directory)
    before = appliance.run_ids()
    _post(appliance, path)
    return appliance.wait_run(after=before)


def _trial_left(state: Path) -> bool:
    with sqlite3.connect(state / "state.db") as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM netconf_trial").fetchone()[0]) > 0
        except sqlite3.OperationalError:  # no network step ever ran
            return False


def _check_credentials(state: Path, archive: bytes | None) -> None:
    """One set in force, from ``archive``; nothing else with a key (None: no set at all)."""
    credentials = state / "credentials"
    current = credentials / "current"
    sets = credentials / "sets"
    present = sorted(p.name for p in sets.iterdir()) if sets.exists() else []
    pending = credentials / "pending"
    assert not pending.exists() or not list(pending.rglob("*.key")), "a pending key was left"
    if archive is None:
        assert not current.is_symlink(), "an unrecorded credential set is in force"
        assert present == [], present
        return
    assert current.is_symlink()
    in_force = current.resolve()
    keep = {in_force.name}
    previous = credentials / "previous"
    if previous.is_symlink():
        keep.add(previous.resolve().name)
    assert set(present) == keep, f"sets {present}, in force/previous {keep}"
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        signed = zf.read("manifest.json")
        root_ca = zf.read("root-ca.pem")
    for name in keep:
        directory = sets / name
        assert (directory / "manifest.json").read_bytes() == signed, name
        assert (directory / "root-ca.pem").read_bytes() == root_ca, name
        key = directory / "private.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, name
    assert "-fleet-" in in_force.name, f"the claim set {in_force.name} is still in force"


def _outcomes(fleet: Fleet, run_id: str, timeout: float = 30) -> list[dict[str, object]]:
    """The run's RUN_OUTCOME events once one has arrived (and a moment for a duplicate)."""
    fleet.wait_event(run_id, "RUN_OUTCOME", timeout=timeout)
    time.sleep(1.5)
    return [e for e in fleet.events(run_id) if e["type"] == "RUN_OUTCOME"]


def _recovery(point: str) -> str:
    """What ``net recover`` did at the restart after a crash at ``point``."""
    order = list(POINTS)
    if order.index(point) < order.index("network.applied"):
        return "none"
    return "reverted" if point == "network.applied" else "reapplied"


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_9_at_each_point_then_restart_is_consistent(
    point: str, fleet: Fleet, committed: dict[str, str], tmp_path: Path
) -> None:
    appliance = Appliance(tmp_path / "appliance", fleet, environment={ENV: point})
    appliance.directory.mkdir()
    network_root = appliance.directory / "root"
    things = _things(fleet)
    path, data = _archive_file(fleet, tmp_path)
    appliance.start()
    try:
        assert _tree(network_root) == {}
        run_id = _post(appliance, path)
        code = appliance.wait_exit()
        assert code == -9, f"{point}: exit {code}\n{appliance.log()[-3000:]}"
        assert f"crash point {point} reached" in appliance.log()
        fleet.broker.stop()
        try:
            appliance.environment = {}
            appliance.start()
            run = appliance.wait_run(after=set())
            assert run["Id"] == run_id
            assert not _trial_left(appliance.state)
            if point in INTERRUPTED:
                assert (run["Status"], run["Reason"]) == ("ERROR", "RUN_INTERRUPTED"), run
                assert _tree(network_root) == {}, "the network changed"
                _check_credentials(appliance.state, None)
                assert _things(fleet) == things
                # nothing was applied: the same archive provisions now
                second = _post(appliance, path)
                done = appliance.wait_run(after={run_id})
                assert (done["Id"], done["Status"]) == (second, "SUCCEEDED"), done
            else:
                assert run["Status"] == "SUCCEEDED", f"{point}: {run}\n{appliance.log()[-4000:]}"
                second = None
            assert _tree(network_root) == committed, "the network is not as committed"
            _check_credentials(appliance.state, data)
            assert _things(fleet) == things + 1, "not exactly one thing registered"
            assert not [e for e in fleet.events(run_id) if e["type"] == "RUN_OUTCOME"]
        finally:
            fleet.broker.start()
        outcomes = _outcomes(fleet, run_id)
        assert len(outcomes) == 1, outcomes
        assert outcomes[0]["body"]["status"] == run["Status"]  # type: ignore[index]
        if second is not None:
            assert len(_outcomes(fleet, second)) == 1
        status = appliance.wait_idle()
        assert status["pendingReports"] == 0
        assert status["operationalLink"] is True
        assert status["networkRecovery"]["action"] == _recovery(point)
    finally:
        appliance.stop()


@pytest.mark.parametrize("point", ["install.activated", "fleet.registering"])
def test_stick_still_in_after_the_crash_gets_the_resumed_result(
    point: str, fleet: Fleet, tmp_path: Path
) -> None:
    """The stick stays in across the crash: the restart resumes the run instead of starting
    another from the same stick, and writes the resumed run's result to it."""
    appliance = Appliance(tmp_path / "appliance", fleet, environment={ENV: point})
    appliance.directory.mkdir()
    device, data = fleet.archive()
    image = stick_image(tmp_path / "stick.img", {f"certificates-omni_{device}.zip": data})
    appliance.start()
    try:
        inserted = appliance.insert(image)
        assert appliance.wait_exit() == -9
        appliance.environment = {}
        appliance.start()
        run = appliance.wait_run(after=set())
        status = appliance.wait_idle()
        expected = ("ERROR", "RUN_INTERRUPTED") if point in INTERRUPTED else ("SUCCEEDED", None)
        assert (run["Status"], run["Reason"]) == expected, run
        assert status["lastRun"]["Id"] == run["Id"]  # no other run from the same stick
        deadline = time.monotonic() + 15
        while (raw := read_stick(inserted)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert raw is not None, "the resumed run's result is not on the stick"
        result = json.loads(raw)
        assert (result["status"], result.get("reason")) == expected
        if point in INTERRUPTED:
            # pulled and inserted again, the same stick provisions
            moved = tmp_path / "again.img"
            inserted.rename(moved)
            appliance.wait_idle()
            again = appliance.insert(moved)
            done = appliance.wait_run(after={run["Id"]})
            assert done["Status"] == "SUCCEEDED", done
            assert read_stick(again) is not None
        _check_credentials(appliance.state, data)
    finally:
        appliance.stop()


def test_after_a_restart_the_same_stick_with_another_archive_is_run(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The rule above is for the archive that run installed: the same stick (same id) with a
    new archive on it, in at the restart, is a stick like any other."""
    appliance = Appliance(tmp_path / "appliance", fleet)
    appliance.directory.mkdir()
    device, data = fleet.archive()
    appliance.start()
    try:
        inserted = appliance.insert(
            stick_image(tmp_path / "stick.img", {f"certificates-omni_{device}.zip": data})
        )
        first = appliance.wait_run(after=set())
        assert first["Status"] == "SUCCEEDED", first
        appliance.wait_idle()
        appliance.stop()
        # unchanged, the stick is not run again at the restart
        appliance.start()
        appliance.wait_idle()
        time.sleep(1)
        assert appliance.status()["provisioning"]["lastRun"]["Id"] == first["Id"]
        assert json.loads(read_stick(inserted) or b"{}")["status"] == "SUCCEEDED"
        appliance.stop()
        # the same stick (the same image name) now holds a new archive
        other, fresh = fleet.archive()
        inserted.unlink()
        stick_image(inserted, {f"certificates-omni_{other}.zip": fresh})
        appliance.start()
        second = appliance.wait_run(after={first["Id"]})
        assert (second["Status"], second["DeviceName"]) == ("SUCCEEDED", other), second
    finally:
        appliance.stop()
