"""A bulk task killed with SIGKILL mid-run and resumed registers every line exactly once.

The template signs a CSR per line, so a line registered twice would leave two certificates:
counting certificate rows proves "exactly once", not just "at least once".
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.bulk.conftest import START, TEMPLATE, Env, make_csr

LINES = 6000


def progress(database: Path) -> tuple[str, str, int] | None:
    """(taskId, status, lines committed) of the only task, read as another process would."""
    if not database.exists():
        return None
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        try:
            row = db.execute("SELECT task_id, status, lines_done FROM bulk_tasks").fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return None
    return None if row is None else (row[0], row[1], int(row[2]))


def wait_for_lines(database: Path, proc: subprocess.Popen[bytes], at_least: int) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the bulk run ended before it could be killed"
        state = progress(database)
        if state is not None and state[2] >= at_least:
            return state[0]
        time.sleep(0.02)
    raise AssertionError(f"no progress to {at_least} lines within the deadline")


def count(database: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute(sql).fetchone()[0])


@pytest.mark.slow
def test_sigkill_twice_then_resume_registers_every_line_once(env: Env) -> None:
    csr = make_csr("edge-bulk")
    bad = {n for n in range(1, LINES + 1) if n % 97 == 0}
    with (env.bulk_root / "factory" / "devices.jsonl").open("w", encoding="utf-8") as out:
        for n in range(1, LINES + 1):
            if n in bad:
                out.write("{broken\n" if n % 2 else json.dumps({"Site": "lab", "CSR": csr}) + "\n")
            else:
                site = "plant" if n % 3 == 0 else "lab"
                out.write(json.dumps({"SerialNumber": f"{n:06d}", "Site": site, "CSR": csr}) + "\n")
    template = env.root / "template.json"
    template.write_text(json.dumps(TEMPLATE), encoding="utf-8")
    good = LINES - len(bad)

    first = env.popen(
        *START,
        "--template-body",
        str(template),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    task_id = wait_for_lines(env.database, first, 1000)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL

    second = env.popen(
        "bulk", "resume", task_id, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_lines(env.database, second, 3000)
    second.send_signal(signal.SIGKILL)
    assert second.wait(timeout=30) == -signal.SIGKILL

    killed = env.json("bulk", "describe", task_id)
    assert killed["status"] == "InProgress"
    assert 0 < killed["percentageProgress"] < 100
    # what is committed is consistent: one certificate per committed success, no more
    certs = count(env.database, "SELECT count(*) FROM registry_certificates")
    assert certs == killed["successCount"]

    final = env.run("bulk", "resume", task_id)
    described = json.loads(final.stdout)
    assert described["status"] == "Completed"
    assert (described["successCount"], described["failureCount"]) == (good, len(bad))
    assert described["percentageProgress"] == 100

    assert count(env.database, "SELECT count(*) FROM registry_things") == good
    assert count(env.database, "SELECT count(*) FROM registry_certificates") == good
    assert count(env.database, "SELECT count(*) FROM registry_thing_principals") == good
    assert count(env.database, "SELECT count(*) FROM registry_policy_principals") == good

    results = [
        json.loads(line)
        for line in env.run("bulk", "reports", task_id, "--type", "RESULTS").stdout.splitlines()
    ]
    errors = [
        json.loads(line)
        for line in env.run("bulk", "reports", task_id, "--type", "ERRORS").stdout.splitlines()
    ]
    assert [r["lineNumber"] for r in results] == sorted(set(range(1, LINES + 1)) - bad)
    assert [e["lineNumber"] for e in errors] == sorted(bad)
    cert_arns = {r["response"]["ResourceArns"]["certificate"] for r in results}
    assert len(cert_arns) == good
    assert all(
        r["response"]["CertificatePem"].startswith("-----BEGIN CERTIFICATE") for r in results
    )
    assert {e["error"]["code"] for e in errors} == {"InvalidRequestException"}
    reasons = {e["lineNumber"]: e["error"]["reason"] for e in errors}
    assert reasons == {n: "LINE_NOT_JSON" if n % 2 else "PARAMETER_MISSING" for n in bad}
    # the report files hold exactly the committed lines (no torn tail left by the kills)
    links = env.json("bulk", "reports", task_id, "--type", "RESULTS", "--links")
    path = Path(links["resourceLinks"][0].removeprefix("file://"))
    assert path.read_bytes().count(b"\n") == good
