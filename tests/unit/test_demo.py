"""``edge-agent demo`` runs the whole job on embedded defaults.

It runs as a child process: the demo starts mosquitto and ``registry serve``, which see the
real clock, so the demo's own certificates must be made on that clock too (the in-process
clock of these tests may be shifted).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from agent.archive.install import current_credentials
from tests.helpers.env import need_binary

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    for name in ("mosquitto", "mkfs.vfat", "mcopy"):
        need_binary(name)
    work = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--out", str(work), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:] + out[-3000:]
    assert "status: SUCCEEDED" in out
    for step in ("validate", "install", "network", "time-check", "fleet"):
        assert f": {step}  (+" in out
    assert "edge-agent registry serve on 127.0.0.1:" in out
    assert "mosquitto (operational broker, mutual TLS)" in out
    assert "network: applied with the dry-run backend" in out
    assert "no network namespace: --dry-run" in out
    assert "refused: FAILED ConflictException ARCHIVE_ALREADY_USED" in out
    assert "everything stopped" in out
    assert "BEGIN" not in out  # no key or certificate material on the console
    event = json.loads(next(line for line in out.splitlines() if '"RUN_OUTCOME"' in line))
    assert event["body"]["status"] == "SUCCEEDED"
    assert "status SUCCEEDED, thing edge-" in out
    current = current_credentials(work / "state")
    assert current is not None
    assert "-fleet-" in current.name  # the permanent identity is in force
    assert stat.S_IMODE((current / "private.key").stat().st_mode) == 0o600
    rendered = work / "root" / "etc" / "systemd" / "network"
    assert "Address=198.18.10.20/24" in (rendered / "10-edge-agent-ethernet0.network").read_text()
    result = subprocess.run(
        [
            need_binary("mcopy"),
            "-n",
            "-i",
            str(work / "sticks" / "stick.img"),
            "::/edge-agent/result.json",
            "-",
        ],
        capture_output=True,
        check=True,
    )
    assert json.loads(result.stdout)["status"] == "SUCCEEDED"
    leftovers = subprocess.run(
        ["pgrep", "-f", str(work)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""  # everything the demo started is stopped
