"""result.json against docs/schemas/result.schema.json, validated with jsonschema."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import agent
from agent.errors import CertificateError, FieldProblem
from agent.status.result import DeviceStatus, RunResult, Timings, status_for_error
from agent.usb.errors import MtoolsError, NoArchiveError, StickRemovedError

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "docs" / "schemas" / "result.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def _valid(doc: dict[str, Any]) -> None:
    VALIDATOR.validate(doc)


def _errors(doc: dict[str, Any]) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(doc)]


def _start() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=12)


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_a_success() -> None:
    timings = Timings()
    with timings.step("read-stick"):
        pass
    with timings.step("validate"):
        pass
    result = RunResult.succeeded(
        started_at=_start(),
        device_name="demo-appliance-1",
        thing_name="demo-appliance-1-thing",
        timings=timings,
        stick_id="image:stick.img",
    )
    doc = json.loads(result.to_json())
    _valid(doc)
    assert doc["status"] == "SUCCEEDED"
    assert doc["reason"] is None
    assert doc["agentVersion"] == agent.__version__
    assert list(doc["timings"]) == ["read-stick", "validate"]
    assert doc["durationSeconds"] >= 12
    assert doc["startedAt"].endswith("Z")
    assert "error" not in doc
    assert result.journal_line() == (
        "provisioning demo-appliance-1: SUCCEEDED as demo-appliance-1-thing"
    )


def test_a_refused_stick_is_failed_with_its_reason() -> None:
    result = RunResult.failed(NoArchiveError("the stick holds no archive"), started_at=_start())
    doc = json.loads(result.to_json())
    _valid(doc)
    assert (doc["status"], doc["reason"]) == ("FAILED", "NO_ARCHIVE_ON_STICK")
    assert doc["deviceName"] is None
    assert doc["error"]["code"] == "ValidationException"
    assert "NO_ARCHIVE_ON_STICK" in result.journal_line()


def test_an_appliance_failure_is_error_and_fields_are_carried() -> None:
    _valid(json.loads(RunResult.failed(MtoolsError("timed out"), started_at=_start()).to_json()))
    exc = CertificateError("bad", fields=[FieldProblem("certificate.pem", "expired")])
    doc = RunResult.failed(exc, started_at=_start(), device_name="dev-1").to_dict()
    _valid(doc)
    assert doc["error"]["fields"] == [{"path": "certificate.pem", "message": "expired"}]


def test_status_for_error() -> None:
    assert status_for_error(NoArchiveError("x")) is DeviceStatus.FAILED
    assert status_for_error(CertificateError("x")) is DeviceStatus.FAILED
    assert status_for_error(StickRemovedError("x")) is DeviceStatus.ERROR
    assert status_for_error(MtoolsError("x")) is DeviceStatus.ERROR


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"status": "DELETING"}, "is not one of"),
        ({"reason": "not upper"}, "does not match"),
        ({"deviceName": "has space"}, "does not match"),
        ({"startedAt": "yesterday"}, "does not match"),
        ({"timings": {"validate": -1}}, "less than the minimum"),
        ({"extra": 1}, "Additional properties"),
    ],
)
def test_the_schema_refuses_bad_documents(change: dict[str, Any], expected: str) -> None:
    doc = RunResult.succeeded(started_at=_start(), device_name="d", thing_name="t").to_dict()
    doc.update(change)
    assert any(expected in message for message in _errors(doc)), _errors(doc)


def test_the_schema_ties_the_error_to_the_status() -> None:
    failed = RunResult.failed(NoArchiveError("x"), started_at=_start()).to_dict()
    del failed["error"]
    assert _errors(failed)
    ok = RunResult.succeeded(started_at=_start(), device_name="d", thing_name="t").to_dict()
    ok["reason"] = "NO_ARCHIVE_ON_STICK"
    assert _errors(ok)


def test_timings_add_up_a_repeated_step() -> None:
    timings = Timings()
    for _ in range(2):
        with timings.step("probe"):
            pass
    assert list(timings.seconds) == ["probe"]
    assert timings.total() == timings.seconds["probe"] >= 0
