"""Crash points: named once, used once each, a no-op unless armed, SIGKILL when armed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from agent import faults

AGENT = Path(faults.__file__).resolve().parent
CALL = re.compile(r"crash_point\(f?\"([a-z.{}-]+)\"\)")


def _calls() -> list[str]:
    found: list[str] = []
    for path in sorted(AGENT.rglob("*.py")):
        if path.name != "faults.py":
            found += CALL.findall(path.read_text())
    return found


def test_every_point_is_passed_through_and_every_call_names_a_point() -> None:
    calls = _calls()
    expanded = {
        c.replace("{step}", s)
        for c in calls
        for s in ("staged", "activated", "recorded", "certificate", "registered", "installed")
    }
    literal = {c for c in calls if "{" not in c}
    assert literal <= set(faults.POINTS), literal - set(faults.POINTS)
    assert set(faults.POINTS) <= literal | expanded, set(faults.POINTS) - (literal | expanded)


def test_unarmed_point_does_nothing() -> None:
    faults._arm(None)
    faults.crash_point("network.applied")  # still here


def test_unknown_name_arms_nothing() -> None:
    faults._arm("network.typo")
    assert faults._armed == {}
    faults._arm(None)


def test_armed_point_kills_the_process_with_sigkill() -> None:
    code = (
        "from agent.faults import crash_point\n"
        "crash_point('validate.done')\n"
        "print('passed validate', flush=True)\n"
        "crash_point('network.applied')\n"
        "print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"EDGE_AGENT_CRASH_AT": "network.applied", "PYTHONPATH": str(AGENT.parent)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "passed validate\n"
