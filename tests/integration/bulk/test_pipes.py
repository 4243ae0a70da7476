"""Every command ends quietly when its reader closes the pipe (``| head -1``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.bulk.conftest import START, Env
from tests.integration.bulk.test_bulk_cli import THING_ONLY, write_devices

BROKEN_PIPE = 141


def run_into_closed_pipe(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command with stdout a pipe whose reading end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails
    try:
        return subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(env.config), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    finally:
        os.close(write_end)


def head_1(env: Env, *args: str) -> tuple[bytes, subprocess.CompletedProcess[bytes]]:
    """Like ``edge-agent ARGS | head -1``: read one line, then close the pipe."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(env.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    return first, subprocess.CompletedProcess(process.args, process.returncode, b"", stderr)


@pytest.fixture
def task(env: Env) -> str:
    body = env.root / "thing.json"
    body.write_text(json.dumps(THING_ONLY), encoding="utf-8")
    write_devices(env, 3000)
    started = env.run(*START, "--template-body", str(body))
    return str(json.loads(started.stdout)["taskId"])


def test_reports_into_head_ends_quietly(env: Env, task: str) -> None:
    first, done = head_1(env, "bulk", "reports", task, "--type", "RESULTS")
    assert isinstance(json.loads(first), dict)  # one whole report line came through
    assert done.stderr == b""
    assert done.returncode in {0, BROKEN_PIPE}


@pytest.mark.parametrize(
    "args",
    [
        ("bulk", "reports", "TASK", "--type", "RESULTS"),
        ("bulk", "describe", "TASK"),
        ("bulk", "list"),
        ("template", "list"),
    ],
    ids=" ".join,
)
def test_closed_pipe_gives_status_141_and_no_traceback(
    env: Env, task: str, args: tuple[str, ...]
) -> None:
    done = run_into_closed_pipe(env, *(task if a == "TASK" else a for a in args))
    assert done.stderr == b""
    assert done.returncode == BROKEN_PIPE


@pytest.mark.parametrize("args", [("--help",), ("bulk", "--help")], ids=" ".join)
def test_help_into_a_closed_pipe_is_quiet(env: Env, args: tuple[str, ...]) -> None:
    # argparse drops a failed help write itself, so there is nothing left to report
    done = run_into_closed_pipe(env, *args)
    assert done.stderr == b""
    assert done.returncode in {0, BROKEN_PIPE}
