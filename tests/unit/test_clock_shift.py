"""The ``--clock-shift`` option really moves the clock the code under test reads."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

import pytest


def test_in_process_clock_is_shifted_by_the_option(pytestconfig: pytest.Config) -> None:
    days: float = pytestconfig.getoption("--clock-shift")
    # A subprocess reads the real clock: the difference is the shift, nothing else.
    real = float(subprocess.run(["date", "+%s"], capture_output=True, text=True, check=True).stdout)
    shifted = dt.datetime.now(dt.UTC).timestamp()
    assert abs(shifted - time.time()) < 5
    assert abs((shifted - real) - days * 86400) < 120


def test_monotonic_waits_are_not_shifted() -> None:
    start = time.monotonic()
    time.sleep(0.01)
    assert 0.005 < time.monotonic() - start < 5
