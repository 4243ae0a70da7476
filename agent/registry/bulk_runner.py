"""The batch loop of a bulk registration task, and the lines it reads and writes.

:class:`Runner` reads a task's input from its committed offset, prepares each line outside
the database transaction (parse, check, sign) and commits a batch of lines, their report
lines' sizes, the counters and the new offset in one transaction
(:mod:`agent.registry.bulk` explains why that makes a run resumable after ``kill -9``).
It serves the task store through the small :class:`TaskHost` interface.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Literal, Protocol, runtime_checkable

from agent.errors import AgentError, InternalError, InvalidRequestError, StateError
from agent.registry.bulkfs import ReportFile
from agent.store import Store

_log = logging.getLogger(__name__)

_ENCODER = json.JSONEncoder(separators=(",", ":"))

Status = Literal["InProgress", "Completed", "Failed", "Cancelled", "Cancelling"]


def utc_now() -> str:
    """The current time as an RFC 3339 UTC string with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@runtime_checkable
class LineRegistrar(Protocol):
    """Registers one device in two steps, so the slow part holds no database lock."""

    def prepare(self, parameters: dict[str, Any]) -> Any:
        """Check and evaluate one line's parameters (sign its CSR ...); writes nothing.

        Raises:
            AgentError: the line cannot be registered.
        """

    def commit(self, db: sqlite3.Connection, prepared: Any) -> Mapping[str, Any]:
        """Write a prepared registration inside the caller's open transaction.

        Returns:
            The RegisterThing response ``{certificatePem, resourceArns}``.

        Raises:
            AgentError: the registration conflicts with the registry's contents.
        """


#: A one-step registrar: registers one device inside the caller's open transaction and
#: returns the RegisterThing response; raises an AgentError for a line that cannot be
#: registered. Or a two-step :class:`LineRegistrar`.
Registrar = Callable[[sqlite3.Connection, dict[str, Any]], Mapping[str, Any]] | LineRegistrar
#: Builds the registrar for a template body once per run; raises InvalidRequestError when
#: the template itself is invalid.
RegistrarFactory = Callable[[str], Registrar]

# --- lines ---------------------------------------------------------------------------------


def parse_line(raw: bytes) -> dict[str, Any]:
    """Parse one input line into the device's RegisterThing parameters.

    Only the line's shape is checked here; the parameter map itself (string values, key
    and value lengths) is checked by RegisterThing, the one place that owns those rules.

    Raises:
        InvalidRequestError: empty, not UTF-8 JSON, or not a JSON object.
    """
    if not raw.strip():
        raise InvalidRequestError("the line is empty", reason="LINE_EMPTY")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise InvalidRequestError(
            f"the line is not valid UTF-8 JSON ({detail})", reason="LINE_NOT_JSON"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError(
            "the line must be a JSON object of parameter values", reason="LINE_NOT_OBJECT"
        )
    return data


def result_line(line_number: int, response: Mapping[str, Any]) -> bytes:
    """A RESULTS report line (the AWS bulk report layout: PascalCase ``response`` keys)."""
    body = {
        "lineNumber": line_number,
        "response": {
            "CertificatePem": response.get("certificatePem", ""),
            "ResourceArns": response.get("resourceArns", {}),
        },
    }
    return _ENCODER.encode(body).encode() + b"\n"


def error_line(line_number: int, error: AgentError) -> bytes:
    """An ERRORS report line: the line number and the error in the agent's shape."""
    body: dict[str, Any] = {"lineNumber": line_number, **error.to_dict()}
    return _ENCODER.encode(body).encode() + b"\n"


class TaskHost(Protocol):
    """What the batch loop needs from the task store."""

    @property
    def batch_lines(self) -> int:
        """Most lines per transaction."""

    @property
    def batch_seconds(self) -> float:
        """A batch is committed once it has run this long."""

    @property
    def max_line_bytes(self) -> int:
        """Longest accepted input line in bytes."""

    @property
    def line_savepoints(self) -> bool:
        """Whether each line runs in its own SAVEPOINT."""

    @property
    def store(self) -> Store:
        """The state store."""

    def describe(self, task_id: str) -> dict[str, Any]:
        """The task's DescribeThingRegistrationTask answer."""

    def cancel_requested(self, task_id: str) -> bool:
        """Whether a cancel of the task was asked for."""


class _OneStep:
    """A one-step registrar seen as a :class:`LineRegistrar` (nothing to prepare)."""

    def __init__(
        self, register: Callable[[sqlite3.Connection, dict[str, Any]], Mapping[str, Any]]
    ) -> None:
        self._register = register

    def prepare(self, parameters: dict[str, Any]) -> Any:
        return parameters

    def commit(self, db: sqlite3.Connection, prepared: Any) -> Mapping[str, Any]:
        return self._register(db, prepared)


class Runner:
    """The batch loop of one run of one task."""

    def __init__(
        self,
        tasks: TaskHost,
        row: sqlite3.Row,
        *,
        source: IO[bytes],
        registrar: Registrar,
        results: ReportFile,
        errors: ReportFile,
    ) -> None:
        self.tasks = tasks
        self.task_id: str = row["task_id"]
        self.source = source
        self.registrar: LineRegistrar = (
            registrar if isinstance(registrar, LineRegistrar) else _OneStep(registrar)
        )
        self.results = results
        self.errors = errors
        self.offset = int(row["input_offset"])
        self.lines = int(row["lines_done"])
        self.successes = int(row["success_count"])
        self.failures = int(row["failure_count"])

    def loop(self, progress: Callable[[dict[str, Any]], None] | None) -> None:
        """Run batches to the task's end, calling ``progress`` after each commit."""
        done = False
        while not done:
            done = self._batch()
            if progress is not None:
                progress(self.tasks.describe(self.task_id))

    def _read_line(self) -> bytes | None:
        """The next line without its newline, or None at the end; too-long lines raise."""
        limit = self.tasks.max_line_bytes
        raw = self.source.readline(limit + 1)
        if not raw:
            return None
        self.offset += len(raw)
        if len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest, streamed
                raw = self.source.readline(1 << 16)
                self.offset += len(raw)
            raise InvalidRequestError(
                f"the line is longer than {limit} bytes", reason="LINE_TOO_LONG"
            )
        return raw

    def _prepare(self, number: int, raw: bytes) -> tuple[int, Any, AgentError | None]:
        """Phase one, outside the transaction: parse and prepare one line."""
        try:
            prepared = self.registrar.prepare(parse_line(raw))
        except StateError:
            raise
        except AgentError as exc:
            return number, None, exc
        except Exception as exc:  # noqa: BLE001 - prepare writes nothing: one line's failure
            _log.exception("bulk task %s: line %d failed unexpectedly", self.task_id, number)
            return number, None, InternalError(f"unexpected failure: {type(exc).__name__}")
        return number, prepared, None

    def _commit(self, db: sqlite3.Connection, number: int, prepared: Any) -> None:
        """Phase two, inside the transaction: write one prepared line and report it."""
        savepoint = self.tasks.line_savepoints
        try:
            if savepoint:
                db.execute("SAVEPOINT bulk_line")
            try:
                response = self.registrar.commit(db, prepared)
            except BaseException:
                if savepoint:
                    db.execute("ROLLBACK TO bulk_line")
                    db.execute("RELEASE bulk_line")
                raise
            if savepoint:
                db.execute("RELEASE bulk_line")
        except StateError:
            raise
        except sqlite3.Error as exc:
            raise StateError(f"the registry database failed: {exc}") from exc
        except AgentError as exc:
            self._failed(number, exc)
            return
        except Exception as exc:
            if not savepoint:  # what it wrote is unknown: give up the batch, stay resumable
                raise
            _log.exception("bulk task %s: line %d failed unexpectedly", self.task_id, number)
            self._failed(number, InternalError(f"unexpected failure: {type(exc).__name__}"))
            return
        self.results.append(result_line(number, response))
        self.successes += 1

    def _failed(self, number: int, error: AgentError) -> None:
        self.errors.append(error_line(number, error))
        self.failures += 1

    def _read_batch(self) -> tuple[list[tuple[int, Any, AgentError | None]], bool]:
        """Phase one: read and prepare up to a batch of lines; True at the end of input."""
        deadline = time.monotonic() + self.tasks.batch_seconds
        items: list[tuple[int, Any, AgentError | None]] = []
        while len(items) < self.tasks.batch_lines:
            number = self.lines + len(items) + 1
            try:
                raw = self._read_line()
            except InvalidRequestError as exc:
                items.append((number, None, exc))
                continue
            if raw is None:
                return items, True
            items.append(self._prepare(number, raw))
            if len(items) % 16 == 0 and time.monotonic() > deadline:
                break
        return items, False

    def _batch(self) -> bool:
        """Prepare one batch, then commit it in one transaction; True when the task ended."""
        end: tuple[Status, str] | None = None
        items: list[tuple[int, Any, AgentError | None]] = []
        if self.tasks.cancel_requested(self.task_id):
            end = ("Cancelled", "cancelled on request")
        else:
            items, at_end = self._read_batch()
            if at_end:
                end = ("Completed", "")
        with self.tasks.store.transaction() as db:
            for number, prepared, error in items:
                if error is not None:
                    self._failed(number, error)
                else:
                    self._commit(db, number, prepared)
            self.lines += len(items)
            self.results.sync()
            self.errors.sync()
            status: Status = end[0] if end else "InProgress"
            message = end[1] if end else ""
            db.execute(
                "UPDATE bulk_tasks SET input_offset = ?, lines_done = ?, success_count = ?, "
                "failure_count = ?, results_size = ?, errors_size = ?, status = ?, "
                "message = CASE WHEN ? = '' THEN message ELSE ? END, last_modified_date = ? "
                "WHERE task_id = ?",
                (
                    self.offset,
                    self.lines,
                    self.successes,
                    self.failures,
                    self.results.size,
                    self.errors.size,
                    status,
                    message,
                    message,
                    utc_now(),
                    self.task_id,
                ),
            )
        return end is not None
