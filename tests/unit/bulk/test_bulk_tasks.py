"""Bulk registration tasks: requests, counts, reports, path confinement, cancel, resume."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError, InvalidRequestError
from agent.registry.bulk import BulkTasks, parse_start_request
from agent.store import Store

ROLE = "arn:aws:iam::123456789012:role/Provisioning"


def start(tasks: BulkTasks, key: str = "devices.jsonl", **changes: Any) -> str:
    req: dict[str, Any] = {
        "inputFileBucket": "factory",
        "inputFileKey": key,
        "roleArn": ROLE,
        "templateBody": "{}",
    }
    req.update(changes)
    return tasks.start(req)["taskId"]


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def reports(tasks: BulkTasks, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in tasks.read_report(task_id, kind)]


def test_ten_thousand_lines_with_one_percent_bad(
    tasks: BulkTasks, store: Store, bulk_root: Path
) -> None:
    lines: list[str] = []
    bad: dict[int, str] = {}
    kinds = ["not json", '["a list"]', '{"Serial": "no thing name"}', '{"ThingName": 7}', ""]
    for n in range(1, 10_001):
        if n % 100 == 37:
            kind = kinds[(n // 100) % len(kinds)]
            bad[n] = kind
            lines.append(kind)
        else:
            lines.append(json.dumps({"ThingName": f"edge-{n:05d}", "Site": "lab"}))
    write_lines(bulk_root / "factory" / "devices.jsonl", lines)
    task_id = start(tasks)
    seen: list[int] = []
    out = tasks.run(task_id, progress=lambda d: seen.append(d["percentageProgress"]))
    assert out["status"] == "Completed"
    assert (out["successCount"], out["failureCount"], out["percentageProgress"]) == (9900, 100, 100)
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert len(seen) >= 10_000 // 250
    results = reports(tasks, task_id, "RESULTS")
    errors = reports(tasks, task_id, "ERRORS")
    assert [r["lineNumber"] for r in results] == [n for n in range(1, 10_001) if n not in bad]
    assert [e["lineNumber"] for e in errors] == sorted(bad)
    assert results[0]["response"] == {
        "CertificatePem": "",
        "ResourceArns": {"thing": "arn:aws:iot:r:1:thing/edge-00001"},
    }
    reasons = {e["lineNumber"]: e["error"]["reason"] for e in errors}
    expected = {
        "not json": "LINE_NOT_JSON",
        '["a list"]': "LINE_NOT_OBJECT",
        '{"Serial": "no thing name"}': "PARAMETER_MISSING",
        '{"ThingName": 7}': "PARAMETER_INVALID",
        "": "LINE_EMPTY",
    }
    assert reasons == {n: expected[kind] for n, kind in bad.items()}
    assert all(e["error"]["code"] == "InvalidRequestException" for e in errors)
    (count,) = store.db.execute("SELECT COUNT(*) FROM test_things").fetchone()
    assert count == 9900
    # the failing registrations left nothing behind (their savepoint was rolled back)
    (attempts,) = store.db.execute("SELECT COUNT(*) FROM test_attempts").fetchone()
    assert attempts == 9900
    links = tasks.list_reports(task_id, "ERRORS")
    assert links["reportType"] == "ERRORS"
    assert Path(links["resourceLinks"][0].removeprefix("file://")).read_bytes().count(b"\n") == 100


def test_crlf_last_line_without_newline_and_unicode(tasks: BulkTasks, bulk_root: Path) -> None:
    path = bulk_root / "factory" / "devices.jsonl"
    path.write_bytes(
        b'{"ThingName": "a"}\r\n{"ThingName": "\xc3\xbc"}\n\xff\xfe\n{"ThingName": "c"}'
    )
    task_id = start(tasks)
    out = tasks.run(task_id)
    assert (out["successCount"], out["failureCount"]) == (3, 1)
    assert reports(tasks, task_id, "ERRORS")[0]["error"]["reason"] == "LINE_NOT_JSON"
    arns = [r["response"]["ResourceArns"]["thing"] for r in reports(tasks, task_id, "RESULTS")]
    assert arns == ["arn:aws:iot:r:1:thing/a", "arn:aws:iot:r:1:thing/ü", "arn:aws:iot:r:1:thing/c"]


def test_long_line_is_reported_and_skipped(
    make_tasks: Callable[..., BulkTasks], bulk_root: Path
) -> None:
    tasks = make_tasks(max_line_bytes=100)
    long_line = json.dumps({"ThingName": "x" * 300_000})
    write_lines(
        bulk_root / "factory" / "devices.jsonl",
        ['{"ThingName": "a"}', long_line, '{"ThingName": "b"}'],
    )
    task_id = start(tasks)
    out = tasks.run(task_id)
    assert (out["successCount"], out["failureCount"]) == (2, 1)
    assert reports(tasks, task_id, "ERRORS")[0]["lineNumber"] == 2
    assert reports(tasks, task_id, "ERRORS")[0]["error"]["reason"] == "LINE_TOO_LONG"
    assert [r["lineNumber"] for r in reports(tasks, task_id, "RESULTS")] == [1, 3]


def test_deeply_nested_line_is_an_error(tasks: BulkTasks, bulk_root: Path) -> None:
    write_lines(bulk_root / "factory" / "devices.jsonl", ["[" * 100_000, '{"ThingName": "a"}'])
    task_id = start(tasks)
    out = tasks.run(task_id)
    assert (out["successCount"], out["failureCount"]) == (1, 1)


REQUEST_ERRORS = [
    ("bucket short", {"inputFileBucket": "ab"}, "FIELD_TOO_SHORT", "inputFileBucket"),
    ("bucket long", {"inputFileBucket": "b" * 257}, "FIELD_TOO_LONG", "inputFileBucket"),
    ("bucket slash", {"inputFileBucket": "fac/tory"}, "FIELD_PATTERN_MISMATCH", "inputFileBucket"),
    ("bucket missing", {"inputFileBucket": None}, "FIELD_REQUIRED", "inputFileBucket"),
    ("key empty", {"inputFileKey": ""}, "FIELD_TOO_SHORT", "inputFileKey"),
    ("key long", {"inputFileKey": "k" * 1025}, "FIELD_TOO_LONG", "inputFileKey"),
    ("key space", {"inputFileKey": "my devices.jsonl"}, "FIELD_PATTERN_MISMATCH", "inputFileKey"),
    ("key backslash", {"inputFileKey": "a\\b"}, "FIELD_PATTERN_MISMATCH", "inputFileKey"),
    ("role short", {"roleArn": "arn:aws:iam::1:role"}, "FIELD_TOO_SHORT", "roleArn"),
    ("role long", {"roleArn": "r" * 2049}, "FIELD_TOO_LONG", "roleArn"),
    ("body long", {"templateBody": "x" * 10241}, "FIELD_TOO_LONG", "templateBody"),
    ("body not string", {"templateBody": {}}, "FIELD_TYPE_INVALID", "templateBody"),
    ("unknown field", {"bucket": "x"}, "FIELD_UNKNOWN", "bucket"),
]


@pytest.mark.parametrize(
    ("changes", "reason", "path"), [pytest.param(*c[1:], id=c[0]) for c in REQUEST_ERRORS]
)
def test_request_validation(changes: dict[str, Any], reason: str, path: str) -> None:
    req: dict[str, Any] = {
        "inputFileBucket": "factory",
        "inputFileKey": "d.jsonl",
        "roleArn": ROLE,
        "templateBody": "",
    }
    req.update(changes)
    req = {k: v for k, v in req.items() if v is not None}
    with pytest.raises(AgentError) as info:
        parse_start_request(req)
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (
        "InvalidRequestException",
        400,
        reason,
    )
    assert [f["path"] for f in wire["fields"]] == [path]


def test_key_pattern_is_the_seeds(tmp_path: Path) -> None:
    # the seed's class has the range )-/ which also admits * + , - . and /
    out = parse_start_request(
        {
            "inputFileBucket": "a.b_c-d",
            "inputFileKey": "x/(1)+,*!'.jsonl",
            "roleArn": ROLE,
            "templateBody": "",
        }
    )
    assert out.input_file_key == "x/(1)+,*!'.jsonl"


@pytest.mark.parametrize(
    ("bucket", "key", "reason"),
    [
        ("factory", "../outside.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "a/../../outside.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "/etc/passwd", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "a//b.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "./devices.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "link-out.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "dirlink/outside.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("linkbucket", "outside.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("factory", "missing.jsonl", "INPUT_FILE_NOT_FOUND"),
        ("factory", "subdir", "INPUT_FILE_NOT_REGULAR"),
        ("factory", "fifo", "INPUT_FILE_NOT_REGULAR"),
    ],
)
def test_input_never_escapes_the_root(
    tasks: BulkTasks, bulk_root: Path, tmp_path: Path, *, bucket: str, key: str, reason: str
) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"ThingName": "stolen"}\n')
    (bulk_root / "outside.jsonl").write_text('{"ThingName": "stolen"}\n')
    factory = bulk_root / "factory"
    (factory / "link-out.jsonl").symlink_to(outside)
    (factory / "dirlink").symlink_to(tmp_path)
    (bulk_root / "linkbucket").symlink_to(tmp_path)
    (factory / "subdir").mkdir()
    os.mkfifo(factory / "fifo")
    with pytest.raises(AgentError) as info:
        start(tasks, key, inputFileBucket=bucket)
    assert (info.value.code, info.value.reason) == ("InvalidRequestException", reason)
    assert tasks.list_tasks() == {"taskIds": []}


def test_symlink_inside_the_root_is_followed(tasks: BulkTasks, bulk_root: Path) -> None:
    write_lines(bulk_root / "factory" / "real.jsonl", ['{"ThingName": "a"}'])
    (bulk_root / "factory" / "alias").mkdir()
    (bulk_root / "factory" / "alias" / "d.jsonl").symlink_to(bulk_root / "factory" / "real.jsonl")
    with pytest.raises(AgentError) as info:  # the last component is never a link
        start(tasks, "alias/d.jsonl")
    assert info.value.reason == "INPUT_PATH_ESCAPES_ROOT"
    (bulk_root / "site").symlink_to(bulk_root / "factory")
    task_id = start(tasks, "real.jsonl", inputFileBucket="site")
    assert tasks.run(task_id)["successCount"] == 1


def test_invalid_template_is_rejected_at_start(tasks: BulkTasks, bulk_root: Path) -> None:
    write_lines(bulk_root / "factory" / "devices.jsonl", ['{"ThingName": "a"}'])
    with pytest.raises(AgentError) as info:
        start(tasks, templateBody="invalid")
    assert info.value.reason == "TEMPLATE_INVALID"


def test_changed_input_fails_the_task(tasks: BulkTasks, bulk_root: Path) -> None:
    path = bulk_root / "factory" / "devices.jsonl"
    write_lines(path, ['{"ThingName": "a"}'])
    task_id = start(tasks)
    write_lines(path, ['{"ThingName": "a"}', '{"ThingName": "b"}'])
    out = tasks.run(task_id)
    assert out["status"] == "Failed"
    assert "changed" in out["message"]
    assert out["successCount"] == 0


def test_cancel_without_runner_and_after(tasks: BulkTasks, bulk_root: Path) -> None:
    write_lines(bulk_root / "factory" / "devices.jsonl", ['{"ThingName": "a"}'])
    task_id = start(tasks)
    assert tasks.cancel(task_id)["status"] == "Cancelled"
    assert tasks.cancel(task_id)["status"] == "Cancelled"
    out = tasks.run(task_id)
    assert (out["status"], out["successCount"]) == ("Cancelled", 0)
    done = start(tasks)
    tasks.run(done)
    with pytest.raises(AgentError) as info:
        tasks.cancel(done)
    assert info.value.reason == "TASK_ALREADY_FINISHED"


def test_cancel_while_running_stops_at_a_batch_boundary(
    tasks: BulkTasks, bulk_root: Path, store: Store
) -> None:
    write_lines(
        bulk_root / "factory" / "devices.jsonl",
        [json.dumps({"ThingName": f"t{n}"}) for n in range(2000)],
    )
    task_id = start(tasks)
    states: list[str] = []

    def progress(described: dict[str, Any]) -> None:
        states.append(described["status"])
        if len(states) == 2:
            # a second process asks for the cancel while this one holds the runner lock
            import subprocess
            import sys

            code = (
                "import sys; from pathlib import Path; from agent.store import Store;"
                "from agent.registry.bulk import BulkTasks;"
                "thing_registrar = lambda body: None;"
                f"t = BulkTasks(Store(Path({str(store.path)!r})),"
                f" bulk_root=Path({str(bulk_root)!r}),"
                f" reports_dir=Path({str(tasks.report_path(task_id, 'RESULTS').parent.parent)!r}),"
                " registrar_factory=thing_registrar);"
                f"print(t.cancel({task_id!r})['status'])"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            states.append(out.stdout.strip())

    out = tasks.run(task_id, progress=progress)
    assert states[:3] == ["InProgress", "InProgress", "Cancelling"]
    assert out["status"] == "Cancelled"
    assert out["successCount"] == 500
    assert [r["lineNumber"] for r in reports(tasks, task_id, "RESULTS")] == list(range(1, 501))
    (count,) = store.db.execute("SELECT COUNT(*) FROM test_things").fetchone()
    assert count == 500


def test_resume_cuts_uncommitted_report_tails(
    tasks: BulkTasks, bulk_root: Path, store: Store
) -> None:
    write_lines(
        bulk_root / "factory" / "devices.jsonl",
        [json.dumps({"ThingName": f"t{n}"}) for n in range(600)],
    )
    task_id = start(tasks)

    class CrashError(Exception):
        pass

    def crash(described: dict[str, Any]) -> None:
        raise CrashError

    with pytest.raises(CrashError):
        tasks.run(task_id, progress=crash)
    # a crash between the report write and the commit leaves a tail the DB does not know
    with tasks.report_path(task_id, "RESULTS").open("ab") as handle:
        handle.write(b'{"lineNumber": 251, "partial')
    assert tasks.describe(task_id)["successCount"] == 250
    assert len(list(tasks.read_report(task_id, "RESULTS"))) == 250
    out = tasks.run(task_id)
    assert (out["status"], out["successCount"]) == ("Completed", 600)
    assert [r["lineNumber"] for r in reports(tasks, task_id, "RESULTS")] == list(range(1, 601))
    assert tasks.report_path(task_id, "RESULTS").read_bytes().count(b"\n") == 600


def test_unknown_task_and_report_type(tasks: BulkTasks) -> None:
    with pytest.raises(AgentError) as info:
        tasks.describe("0" * 32)
    assert (info.value.code, info.value.reason) == ("ResourceNotFoundException", "TASK_NOT_FOUND")
    with pytest.raises(AgentError) as info:
        tasks.describe("../../etc")
    assert info.value.code == "InvalidRequestException"
    with pytest.raises(AgentError) as info:
        tasks.list_reports("0" * 32, "WARNINGS")
    assert info.value.to_dict()["error"]["fields"][0]["path"] == "reportType"


def test_empty_file_completes(tasks: BulkTasks, bulk_root: Path) -> None:
    (bulk_root / "factory" / "devices.jsonl").write_bytes(b"")
    task_id = start(tasks)
    out = tasks.run(task_id)
    assert (out["status"], out["successCount"], out["failureCount"], out["percentageProgress"]) == (
        "Completed",
        0,
        0,
        100,
    )


def test_unexpected_registrar_failure(store: Store, bulk_root: Path, tmp_path: Path) -> None:
    calls: list[str] = []

    def factory(body: str) -> Any:
        def register(db: Any, parameters: dict[str, Any]) -> dict[str, Any]:
            calls.append(parameters["ThingName"])
            db.execute("INSERT INTO test_things(name) VALUES (?)", (parameters["ThingName"],))
            if parameters["ThingName"] == "b" and body == "buggy":
                raise KeyError("bug")
            return {"resourceArns": {}}

        return register

    write_lines(
        bulk_root / "factory" / "devices.jsonl", [json.dumps({"ThingName": n}) for n in "abc"]
    )
    # with savepoints, the bug is one line's InternalError and its write is undone
    careful = BulkTasks(
        store, bulk_root=bulk_root, reports_dir=tmp_path / "r1", registrar_factory=factory
    )
    task_id = start(careful, templateBody="buggy")
    out = careful.run(task_id)
    assert (out["status"], out["successCount"], out["failureCount"]) == ("Completed", 2, 1)
    assert reports(careful, task_id, "ERRORS")[0]["error"]["code"] == "InternalServerException"
    assert {r[0] for r in store.db.execute("SELECT name FROM test_things")} == {"a", "c"}
    store.db.execute("DELETE FROM test_things")
    # without savepoints the batch is abandoned (rolled back) and the task stays resumable
    fast = BulkTasks(
        store,
        bulk_root=bulk_root,
        reports_dir=tmp_path / "r2",
        registrar_factory=factory,
        line_savepoints=False,
    )
    task_id = start(fast, templateBody="buggy")
    with pytest.raises(KeyError):
        fast.run(task_id)
    assert fast.describe(task_id)["status"] == "InProgress"
    assert store.db.execute("SELECT count(*) FROM test_things").fetchone()[0] == 0
    assert list(fast.read_report(task_id, "RESULTS")) == []
    with store.transaction() as db:  # the fixed template
        db.execute("UPDATE bulk_tasks SET template_body = 'fixed' WHERE task_id = ?", (task_id,))
    out = fast.run(task_id)
    assert (out["status"], out["successCount"]) == ("Completed", 3)
    assert [r["lineNumber"] for r in reports(fast, task_id, "RESULTS")] == [1, 2, 3]


def test_damaged_report_is_refused_not_padded(tasks: BulkTasks, bulk_root: Path) -> None:
    write_lines(
        bulk_root / "factory" / "devices.jsonl",
        [json.dumps({"ThingName": f"t{n}"}) for n in range(600)],
    )
    task_id = start(tasks)

    class StopError(Exception):
        pass

    def stop(described: dict[str, Any]) -> None:
        raise StopError

    with pytest.raises(StopError):
        tasks.run(task_id, progress=stop)
    tasks.report_path(task_id, "RESULTS").write_bytes(b"")
    with pytest.raises(AgentError) as info:
        tasks.run(task_id)
    assert info.value.reason == "REPORT_DAMAGED"
    assert tasks.describe(task_id)["successCount"] == 250


def test_two_step_registrar_prepares_without_the_write_lock(
    store: Store, bulk_root: Path, tmp_path: Path
) -> None:
    import sqlite3

    other = sqlite3.connect(store.path, timeout=0, isolation_level=None)
    seen: list[str] = []

    class TwoStep:
        def prepare(self, parameters: dict[str, Any]) -> str:
            other.execute("BEGIN IMMEDIATE")  # fails at once if the runner held the lock
            other.execute("ROLLBACK")
            if parameters.get("ThingName") == "bad":
                raise InvalidRequestError("refused in prepare", reason="PREPARE_REFUSED")
            return str(parameters["ThingName"])

        def commit(self, db: sqlite3.Connection, prepared: str) -> dict[str, Any]:
            assert db.in_transaction
            seen.append(prepared)
            db.execute("INSERT INTO test_things(name) VALUES (?)", (prepared,))
            return {"resourceArns": {"thing": prepared}}

    tasks = BulkTasks(
        store,
        bulk_root=bulk_root,
        reports_dir=tmp_path / "r",
        registrar_factory=lambda _body: TwoStep(),
        batch_lines=3,
    )
    names = ["a", "bad", "c", "d", "bad", "f", "g"]
    write_lines(
        bulk_root / "factory" / "devices.jsonl", [json.dumps({"ThingName": n}) for n in names]
    )
    task_id = start(tasks)
    out = tasks.run(task_id)
    other.close()
    assert (out["status"], out["successCount"], out["failureCount"]) == ("Completed", 5, 2)
    assert seen == ["a", "c", "d", "f", "g"]
    assert [e["lineNumber"] for e in reports(tasks, task_id, "ERRORS")] == [2, 5]
    assert [r["lineNumber"] for r in reports(tasks, task_id, "RESULTS")] == [1, 3, 4, 6, 7]
