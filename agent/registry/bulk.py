"""Bulk registration (seed: StartThingRegistrationTask).

A task registers one device per line of a newline-delimited JSON file through a template.
The file lives under a configured local root: the seed's ``inputFileBucket`` names a
directory of that root and ``inputFileKey`` a path inside it. The file is streamed, never
loaded whole, and every line gets exactly one report line: RESULTS for a registered device,
ERRORS for a line that could not be registered (not JSON, not an object, a parameter
missing, a template failure ...). A bad line never stops the task.

Crash safety (``kill -9`` at any instant, then :meth:`BulkTasks.run` again):

* lines are processed in batches inside one SQLite transaction; the registrations of the
  batch, the counters and the input byte offset are committed together, so after a crash
  the task resumes at the first line whose registration was not committed;
* report lines are appended to the report files and fsynced *before* that commit, and the
  committed report sizes are part of the same commit; on resume the files are cut back to
  the committed sizes, so a report line is never lost and never duplicated;
* one lock file per task (``flock``) keeps two runners off the same task; the kernel drops
  the lock when its holder dies.

Each line is registered inside a SAVEPOINT: a line that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.errors import (
    AgentError,
    ConflictError,
    FieldProblem,
    InternalError,
    InvalidRequestError,
    ResourceNotFoundError,
)
from agent.fsutil import ensure_dir, fsync_dir
from agent.registry import fieldcheck as fc
from agent.registry.bulk_runner import (
    LineRegistrar,
    Registrar,
    RegistrarFactory,
    Runner,
    Status,
    parse_line,
    utc_now,
)
from agent.registry.bulkfs import (
    BulkInputError,
    ReportFile,
    file_identity,
    input_path,
    open_input,
    runner_lock,
    touch_synced,
)
from agent.seedpattern import seed_pattern
from agent.store import Store

_log = logging.getLogger(__name__)

COMPONENT = "bulk"
BUCKET_RE = seed_pattern(r"[a-zA-Z0-9._-]+")
KEY_RE = seed_pattern(r"[a-zA-Z0-9!_.*'()-\/]+")
MAX_TEMPLATE_BODY = 10240
MAX_MESSAGE = 2048
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
DEFAULT_BATCH_LINES = 1000
DEFAULT_BATCH_SECONDS = 0.5

ReportType = Literal["RESULTS", "ERRORS"]
REPORT_TYPES: tuple[ReportType, ...] = ("RESULTS", "ERRORS")
FINISHED: frozenset[str] = frozenset({"Completed", "Failed", "Cancelled"})


_MIGRATIONS = [
    """
    CREATE TABLE bulk_tasks (
        task_id            TEXT PRIMARY KEY,
        input_file_bucket  TEXT NOT NULL,
        input_file_key     TEXT NOT NULL,
        role_arn           TEXT NOT NULL,
        template_body      TEXT NOT NULL,
        input_path         TEXT NOT NULL,
        input_identity     TEXT NOT NULL,
        input_size         INTEGER NOT NULL,
        status             TEXT NOT NULL,
        message            TEXT NOT NULL DEFAULT '',
        success_count      INTEGER NOT NULL DEFAULT 0,
        failure_count      INTEGER NOT NULL DEFAULT 0,
        lines_done         INTEGER NOT NULL DEFAULT 0,
        input_offset       INTEGER NOT NULL DEFAULT 0,
        results_size       INTEGER NOT NULL DEFAULT 0,
        errors_size        INTEGER NOT NULL DEFAULT 0,
        creation_date      TEXT NOT NULL,
        last_modified_date TEXT NOT NULL
    );
    """,
]


class TaskBusyError(ConflictError):
    """Another process is running this task."""

    default_reason = "TASK_ALREADY_RUNNING"


# --- request validation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A validated StartThingRegistrationTask request."""

    input_file_bucket: str
    input_file_key: str
    role_arn: str
    template_body: str


def parse_start_request(request: Any) -> StartRequest:
    """Validate a StartThingRegistrationTask request with the seed's constraints.

    Raises:
        InvalidRequestError: any field is missing, of the wrong type, too short or long, or
            breaks its pattern (every problem listed with its field path).
    """
    if not isinstance(request, Mapping):
        raise InvalidRequestError(
            "the StartThingRegistrationTask request must be a JSON object", reason=fc.WRONG_TYPE
        )
    problems: list[fc.Problem] = []
    fc.check_unknown(
        request, ("inputFileBucket", "inputFileKey", "roleArn", "templateBody"), problems
    )
    bucket = fc.check_string(
        request,
        "inputFileBucket",
        problems,
        required=True,
        min_len=3,
        max_len=256,
        pattern=BUCKET_RE,
    )
    key = fc.check_string(
        request,
        "inputFileKey",
        problems,
        required=True,
        min_len=1,
        max_len=1024,
        pattern=KEY_RE,
    )
    role = fc.check_string(request, "roleArn", problems, required=True, min_len=20, max_len=2048)
    body = fc.check_string(
        request, "templateBody", problems, required=True, max_len=MAX_TEMPLATE_BODY
    )
    fc.raise_problems(problems, "StartThingRegistrationTask")
    if bucket is None or key is None or role is None or body is None:  # pragma: no cover
        raise InternalError("validated fields missing")
    return StartRequest(bucket, key, role, body)


# --- the input file ---------------------------------------------------------------------------


# --- the task store ----------------------------------------------------------------------------


class BulkTasks:
    """Thing registration tasks: start, run (or resume), describe, cancel, reports.

    Args:
        store: the state store holding the registry's tables (registrations and task
            progress must share the database so they commit together).
        bulk_root: the local root that ``inputFileBucket`` directories live in.
        reports_dir: where each task's report files are kept (``<dir>/<taskId>/``).
        registrar_factory: builds the per-line registrar for a template body.
        batch_lines: most lines per transaction.
        batch_seconds: a batch is also committed once it has run this long.
        max_line_bytes: a longer line is reported as an error (and skipped, streamed).
        line_savepoints: run each line in a SAVEPOINT so a failing registrar leaves
            nothing behind. A registrar that writes nothing when it raises an AgentError
            (RegisterThing checks everything before its first write) may turn this off;
            then any other exception aborts the batch (rolled back, the task resumable).
    """

    def __init__(
        self,
        store: Store,
        *,
        bulk_root: Path,
        reports_dir: Path,
        registrar_factory: RegistrarFactory,
        batch_lines: int = DEFAULT_BATCH_LINES,
        batch_seconds: float = DEFAULT_BATCH_SECONDS,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        line_savepoints: bool = True,
    ) -> None:
        self._store = store
        self._root = bulk_root
        self._reports = reports_dir
        self._factory = registrar_factory
        self._batch_lines = max(1, batch_lines)
        self._batch_seconds = batch_seconds
        self._max_line = max_line_bytes
        self._line_savepoints = line_savepoints
        if store.version(COMPONENT) != len(_MIGRATIONS):  # readers never wait for a writer
            store.migrate(COMPONENT, _MIGRATIONS)

    # --- queries -------------------------------------------------------------------------

    def _row(self, task_id: str) -> sqlite3.Row:
        _check_task_id(task_id)
        row: sqlite3.Row | None = self._store.db.execute(
            "SELECT * FROM bulk_tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None:
            raise ResourceNotFoundError(
                f"there is no thing registration task {task_id!r}", reason="TASK_NOT_FOUND"
            )
        return row

    def describe(self, task_id: str) -> dict[str, Any]:
        """DescribeThingRegistrationTask.

        Raises:
            ResourceNotFoundError: no such task.
        """
        described = _describe(self._row(task_id))
        if described["status"] == "InProgress" and self.cancel_requested(task_id):
            described["status"] = "Cancelling"
        return described

    def list_tasks(self, status: str | None = None) -> dict[str, Any]:
        """ListThingRegistrationTasks: task ids, newest first, optionally by status."""
        rows = self._store.db.execute(
            "SELECT task_id, status FROM bulk_tasks ORDER BY creation_date DESC, rowid DESC"
        )
        ids = []
        for task_id, stored in rows:
            current = stored
            if stored == "InProgress" and self.cancel_requested(task_id):
                current = "Cancelling"
            if status is None or status == current:
                ids.append(task_id)
        return {"taskIds": ids}

    def report_path(self, task_id: str, report_type: ReportType) -> Path:
        """Where the task's RESULTS or ERRORS report is written."""
        name = "results.jsonl" if report_type == "RESULTS" else "errors.jsonl"
        return self._reports / task_id / name

    def list_reports(self, task_id: str, report_type: str) -> dict[str, Any]:
        """ListThingRegistrationTaskReports: ``{resourceLinks, reportType}`` (file URLs).

        The linked file holds exactly the committed report lines once the task has finished;
        while it runs, use :meth:`read_report`.

        Raises:
            InvalidRequestError: unknown report type.
            ResourceNotFoundError: no such task.
        """
        kind = _report_type(report_type)
        self._row(task_id)
        path = self.report_path(task_id, kind)
        links = [path.resolve().as_uri()] if path.exists() else []
        return {"resourceLinks": links, "reportType": kind}

    def read_report(self, task_id: str, report_type: str) -> Iterator[bytes]:
        """Yield the committed lines of a report (never an uncommitted tail).

        Raises:
            InvalidRequestError: unknown report type.
            ResourceNotFoundError: no such task.
        """
        kind = _report_type(report_type)
        row = self._row(task_id)
        remaining = int(row["results_size" if kind == "RESULTS" else "errors_size"])
        path = self.report_path(task_id, kind)
        if remaining == 0 or not path.exists():
            return
        with path.open("rb") as handle:
            while remaining > 0:
                line = handle.readline(remaining)
                if not line:
                    break
                remaining -= len(line)
                yield line

    # --- start ---------------------------------------------------------------------------

    def start(self, request: Any) -> dict[str, str]:
        """StartThingRegistrationTask: validate, check the template and input, record.

        The task is recorded ``InProgress``; :meth:`run` processes it.

        Returns:
            ``{"taskId": ...}``.

        Raises:
            InvalidRequestError: a field, the template or the input file is invalid.
        """
        req = parse_start_request(request)
        self._factory(req.template_body)
        fd, info = open_input(self._root, req.input_file_bucket, req.input_file_key)
        os.close(fd)
        task_id = uuid.uuid4().hex
        task_dir = ensure_dir(self._reports / task_id)
        fsync_dir(task_dir.parent)
        now = utc_now()
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO bulk_tasks(task_id, input_file_bucket, input_file_key, role_arn, "
                "template_body, input_path, input_identity, input_size, status, "
                "creation_date, last_modified_date) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'InProgress', ?, ?)",
                (
                    task_id,
                    req.input_file_bucket,
                    req.input_file_key,
                    req.role_arn,
                    req.template_body,
                    str(input_path(self._root, req.input_file_bucket, req.input_file_key)),
                    file_identity(info),
                    info.st_size,
                    now,
                    now,
                ),
            )
        _log.info(
            "bulk task %s created for %s/%s", task_id, req.input_file_bucket, req.input_file_key
        )
        return {"taskId": task_id}

    # --- cancel --------------------------------------------------------------------------

    def cancel(self, task_id: str) -> dict[str, Any]:
        """StopThingRegistrationTask.

        With no runner alive the task becomes ``Cancelled`` at once. Otherwise a cancel
        request file is left for the runner (no database write, so a busy runner never
        delays the request): the task shows ``Cancelling`` and its runner stops at the end
        of the current batch, whose registrations are kept and reported. A runner that
        dies first finds the request when the task is resumed. Cancelling a cancelled task
        does nothing.

        Raises:
            ResourceNotFoundError: no such task.
            InvalidRequestError: the task already completed or failed.
        """
        row = self._row(task_id)
        if row["status"] in {"Completed", "Failed"}:
            raise InvalidRequestError(
                f"task {task_id} is {row['status']} and cannot be cancelled",
                reason="TASK_ALREADY_FINISHED",
            )
        with self._lock(task_id, wait=False) as free:
            if free:
                with self._store.transaction() as db:
                    db.execute(
                        "UPDATE bulk_tasks SET status = 'Cancelled', "
                        "message = 'cancelled on request', last_modified_date = ? "
                        "WHERE task_id = ? AND status NOT IN ('Completed', 'Failed')",
                        (utc_now(), task_id),
                    )
            else:
                touch_synced(self._cancel_flag(task_id))
        return self.describe(task_id)

    def _cancel_flag(self, task_id: str) -> Path:
        return self._reports / task_id / "cancel-requested"

    def cancel_requested(self, task_id: str) -> bool:
        """Whether a cancel request waits for the task's runner."""
        return self._cancel_flag(task_id).exists()

    @contextlib.contextmanager
    def _lock(self, task_id: str, *, wait: bool) -> Iterator[bool]:
        """Hold the task's runner lock; yields False when another process holds it."""
        with runner_lock(ensure_dir(self._reports / task_id) / "lock", wait=wait) as held:
            yield held

    # --- run -----------------------------------------------------------------------------

    def run(
        self, task_id: str, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Process (or resume) a task to its end; return its description.

        Safe to call after a crash at any point, and on a finished task (it only returns the
        description). ``progress`` is called after each committed batch.

        Raises:
            ResourceNotFoundError: no such task.
            TaskBusyError: another process is running the task.
        """
        self._row(task_id)
        with self._lock(task_id, wait=False) as mine:
            if not mine:
                raise TaskBusyError(f"task {task_id} is already being run by another process")
            row = self._row(task_id)
            if row["status"] in {"InProgress", "Cancelling"} and self.cancel_requested(task_id):
                self._finish(task_id, "Cancelled", "cancelled on request")
            elif row["status"] == "InProgress":
                self._run_locked(row, progress)
        return self.describe(task_id)

    def _finish(self, task_id: str, status: Status, message: str) -> None:
        with self._store.transaction() as db:
            db.execute(
                "UPDATE bulk_tasks SET status = ?, message = ?, last_modified_date = ? "
                "WHERE task_id = ?",
                (status, message[:MAX_MESSAGE], utc_now(), task_id),
            )

    def _run_locked(
        self, row: sqlite3.Row, progress: Callable[[dict[str, Any]], None] | None
    ) -> None:
        task_id = row["task_id"]
        try:
            fd, info = open_input(self._root, row["input_file_bucket"], row["input_file_key"])
        except BulkInputError as exc:
            self._finish(task_id, "Failed", f"the input file cannot be read: {exc.message}")
            return
        with os.fdopen(fd, "rb", buffering=1 << 20) as source:
            if file_identity(info) != row["input_identity"]:
                self._finish(task_id, "Failed", "the input file changed since the task started")
                return
            try:
                registrar = self._factory(row["template_body"])
            except AgentError as exc:
                self._finish(task_id, "Failed", f"the template cannot be used: {exc.message}")
                return
            results = ReportFile.open(self.report_path(task_id, "RESULTS"), row["results_size"])
            try:
                errors = ReportFile.open(self.report_path(task_id, "ERRORS"), row["errors_size"])
                try:
                    source.seek(int(row["input_offset"]))
                    runner = Runner(
                        self,
                        row,
                        source=source,
                        registrar=registrar,
                        results=results,
                        errors=errors,
                    )
                    runner.loop(progress)
                finally:
                    errors.close()
            finally:
                results.close()

    # the batch loop lives in bulk_runner.Runner; these are its knobs
    @property
    def batch_lines(self) -> int:
        """Most lines per transaction."""
        return self._batch_lines

    @property
    def batch_seconds(self) -> float:
        """A batch is committed once it has run this long."""
        return self._batch_seconds

    @property
    def max_line_bytes(self) -> int:
        """Longest accepted input line in bytes."""
        return self._max_line

    @property
    def line_savepoints(self) -> bool:
        """Whether each line runs in its own SAVEPOINT."""
        return self._line_savepoints

    @property
    def store(self) -> Store:
        """The state store."""
        return self._store


def _describe(row: sqlite3.Row) -> dict[str, Any]:
    size = int(row["input_size"])
    if row["status"] == "Completed" or size == 0:
        percentage = 100 if row["status"] == "Completed" else 0
    else:
        percentage = min(100, int(row["input_offset"]) * 100 // size)
    return {
        "taskId": row["task_id"],
        "creationDate": row["creation_date"],
        "lastModifiedDate": row["last_modified_date"],
        "templateBody": row["template_body"],
        "inputFileBucket": row["input_file_bucket"],
        "inputFileKey": row["input_file_key"],
        "roleArn": row["role_arn"],
        "status": row["status"],
        "message": row["message"],
        "successCount": row["success_count"],
        "failureCount": row["failure_count"],
        "percentageProgress": percentage,
    }


_TASK_ID_RE = seed_pattern(r"[A-Za-z0-9_-]{1,40}")


def _check_task_id(task_id: str) -> None:
    if not isinstance(task_id, str) or not _TASK_ID_RE.fullmatch(task_id):
        raise InvalidRequestError(
            "taskId must be 1 to 40 letters, digits, '_' or '-'",
            reason=fc.PATTERN,
            fields=[FieldProblem("taskId", "must be 1 to 40 letters, digits, '_' or '-'")],
        )


def _report_type(value: str) -> ReportType:
    for kind in REPORT_TYPES:
        if value == kind:
            return kind
    raise InvalidRequestError(
        "reportType must be RESULTS or ERRORS",
        reason=fc.ENUM,
        fields=[FieldProblem("reportType", "must be RESULTS or ERRORS")],
    )


__all__ = [
    "BulkInputError",
    "BulkTasks",
    "LineRegistrar",
    "Registrar",
    "RegistrarFactory",
    "StartRequest",
    "TaskBusyError",
    "parse_line",
    "parse_start_request",
]
