"""Fixtures and options for every test.

``--clock-shift DAYS`` moves the in-process clock (``time.time``, ``datetime.now``) that many
days ahead for the whole session, as CI does for the unit tests: a test that mixes a fixed
date with the real clock fails under it. Monotonic clocks are left alone, so waits and sleeps
behave. Subprocesses do not see the shift (the tests that compare their times with the
test's own live under tests/integration, which CI runs on the real clock).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import pytest
import time_machine

_TRAVELLER = pytest.StashKey[time_machine.travel]()
_SHIFT = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-shift",
        metavar="DAYS",
        type=float,
        default=0.0,
        help="run with the in-process clock moved DAYS days ahead (CI uses 730)",
    )


def pytest_configure(config: pytest.Config) -> None:
    days: float = config.getoption("--clock-shift")
    config.stash[_SHIFT] = days
    if days:
        target = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        traveller = time_machine.travel(target, tick=True)
        traveller.start()
        config.stash[_TRAVELLER] = traveller


def pytest_unconfigure(config: pytest.Config) -> None:
    traveller = config.stash.get(_TRAVELLER, None)
    if traveller is not None:
        traveller.stop()


def pytest_report_header(config: pytest.Config) -> str | None:
    days = config.stash.get(_SHIFT, 0.0)
    if not days:
        return None
    return f"clock shifted {days:g} days ahead: now is {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M}Z"


class _FormatCheckingHandler(logging.Handler):
    """Formats every record, so a log call whose ``%`` arguments do not match fails."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.getMessage()
        except (TypeError, ValueError) as exc:
            self.errors.append(f"{record.pathname}:{record.lineno}: {exc}")


@pytest.fixture(autouse=True)
def _raise_on_bad_log_formatting() -> Iterator[None]:
    handler = _FormatCheckingHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert not handler.errors, f"bad log formatting: {handler.errors}"
