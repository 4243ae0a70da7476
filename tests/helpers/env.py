"""What a test needs from the machine: fail on CI, skip with instructions elsewhere.

When the ``CI`` environment variable is set, a missing privilege or binary fails the test, so
CI can never pass by skipping the real components it exists to exercise. Elsewhere the test
is skipped with a message that says how to run it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def on_ci() -> bool:
    """True when running under CI (``CI`` set to anything but an empty string or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def unavailable(what: str, how: str) -> None:
    """Fail under CI, skip otherwise, naming what is missing and how to provide it."""
    message = f"{what}; {how}"
    if on_ci():
        pytest.fail(f"CI requires this test to run: {message}", pytrace=False)
    pytest.skip(message)


def need_root(why: str = "network namespaces need root") -> None:
    """Require an effective uid of 0."""
    if os.geteuid() != 0:
        unavailable(why, "run the tests as root: sudo scripts/test")


def need_binary(name: str) -> str:
    """Require an executable on ``PATH``; return its path."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed", "scripts/setup installs it")
        raise AssertionError("unreachable")  # pragma: no cover - fail/skip raise
    return path
