"""The bulk-task routes of the local API: start, background runs, describe, list, cancel.

A started task runs on the registry API's bulk thread; refused starts write nothing; a
stopped service pauses a task after its batch and the next start finishes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers.registry_api import (
    Client,
    Host,
    assert_error,
    contents,
    run,
    serving,
    start_request,
    wait_finished,
    write_input,
)


def test_bulk_task_runs_in_the_background(host: Host) -> None:
    key = write_input(host.bulk_root, 20000)

    async def scenario(client: Client) -> None:
        status, started = await client.call("POST", "/thing-registration-tasks", start_request(key))
        assert status == 200
        assert set(started) == {"taskId"}
        task_id = started["taskId"]
        assert 1 <= len(task_id) <= 40
        # the answer came before the task ended, and the loop answers while it runs
        status, first = await client.call("GET", f"/thing-registration-tasks/{task_id}")
        assert status == 200
        assert first["status"] == "InProgress"
        assert first["successCount"] < 20000
        finished = await wait_finished(client, task_id)
        assert finished["status"] == "Completed"
        assert (finished["successCount"], finished["failureCount"]) == (20000, 0)
        assert finished["percentageProgress"] == 100
        assert finished["inputFileKey"] == key
        status, listed = await client.call("GET", "/thing-registration-tasks?status=Completed")
        assert (status, listed) == (200, {"taskIds": [task_id]})
        status, reports = await client.call(
            "GET", f"/thing-registration-tasks/{task_id}/reports?reportType=RESULTS"
        )
        assert status == 200
        assert reports["reportType"] == "RESULTS"
        (link,) = reports["resourceLinks"]
        assert link.startswith("file:///")
        assert_error(
            await client.call("PUT", f"/thing-registration-tasks/{task_id}/cancel"),
            400,
            "InvalidRequestException",
            "TASK_ALREADY_FINISHED",
        )

    run(host, scenario)
    assert contents(host.database)["registry_things"] == 20000


def test_bulk_lines_that_fail_are_reported(host: Host) -> None:
    directory = host.bulk_root / "factory"
    (directory / "mixed.jsonl").write_text(
        '{"SerialNumber": "1"}\nnot json\n{"Serial": "2"}\n{"SerialNumber": "3"}\n',
        encoding="utf-8",
    )

    async def scenario(client: Client) -> None:
        status, started = await client.call(
            "POST", "/thing-registration-tasks", start_request("mixed.jsonl")
        )
        assert status == 200
        finished = await wait_finished(client, started["taskId"])
        assert (finished["status"], finished["successCount"], finished["failureCount"]) == (
            "Completed",
            2,
            2,
        )

    run(host, scenario)


BAD_START_REQUESTS: list[tuple[str, Any, str]] = [
    ("array", [start_request("devices-3.jsonl")], "FIELD_TYPE_INVALID"),
    ("unknown field", {**start_request("devices-3.jsonl"), "x": 1}, "FIELD_UNKNOWN"),
    (
        "bucket too short",
        {**start_request("devices-3.jsonl"), "inputFileBucket": "f"},
        "FIELD_TOO_SHORT",
    ),
    (
        "key not a string",
        {**start_request("devices-3.jsonl"), "inputFileKey": 3},
        "FIELD_TYPE_INVALID",
    ),
    ("role missing", {**start_request("devices-3.jsonl"), "roleArn": None}, "FIELD_REQUIRED"),
    ("input file missing", start_request("absent.jsonl"), "INPUT_FILE_NOT_FOUND"),
    ("input outside the root", start_request("../../etc/passwd"), "INPUT_PATH_ESCAPES_ROOT"),
    (
        "template invalid",
        {**start_request("devices-3.jsonl"), "templateBody": '{"Resources": 1}'},
        "TEMPLATE_INVALID",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [(body, reason) for _, body, reason in BAD_START_REQUESTS],
    ids=[name for name, _, _ in BAD_START_REQUESTS],
)
def test_bad_start_requests_are_refused_and_write_nothing(
    host: Host, request_body: Any, reason: str
) -> None:
    write_input(host.bulk_root, 3)

    async def scenario(client: Client) -> None:
        before = contents(host.database)
        assert_error(
            await client.call("POST", "/thing-registration-tasks", request_body),
            400,
            "InvalidRequestException",
            reason,
        )
        assert contents(host.database) == before

    run(host, scenario)
    counts = contents(host.database)
    assert counts["bulk_tasks"] == counts["report_dirs"] == counts["registry_things"] == 0


def test_unknown_and_malformed_task_ids(host: Host) -> None:
    async def scenario(client: Client) -> None:
        assert_error(
            await client.call("POST", "/thing-registration-tasks", raw=b"nope"),
            400,
            "InvalidRequestException",
            "REQUEST_NOT_JSON",
        )
        for method, suffix in (
            ("GET", ""),
            ("PUT", "/cancel"),
            ("GET", "/reports?reportType=ERRORS"),
        ):
            assert_error(
                await client.call(method, f"/thing-registration-tasks/{'0' * 32}{suffix}"),
                404,
                "ResourceNotFoundException",
                "TASK_NOT_FOUND",
            )
        assert_error(
            await client.call("GET", "/thing-registration-tasks/" + "a" * 41),
            400,
            "InvalidRequestException",
            "FIELD_PATTERN_MISMATCH",
        )
        assert_error(
            await client.call("GET", "/thing-registration-tasks?status=Sleeping"),
            400,
            "InvalidRequestException",
            "FIELD_VALUE_NOT_ALLOWED",
        )
        assert_error(
            await client.call("GET", f"/thing-registration-tasks/{'0' * 32}/reports"),
            400,
            "InvalidRequestException",
            "FIELD_VALUE_NOT_ALLOWED",
        )

    run(host, scenario)
    assert contents(host.database)["bulk_tasks"] == 0


def test_a_stopped_service_pauses_the_task_and_the_next_start_resumes_it(host: Host) -> None:
    key = write_input(host.bulk_root, 5000)

    async def first() -> str:
        async with serving(host) as (client, registry):
            status, started = await client.call(
                "POST", "/thing-registration-tasks", start_request(key)
            )
            assert status == 200
            await registry.close()  # the service stops: the task ends its current batch
        return str(started["taskId"])

    task_id = asyncio.run(first())
    counts = contents(host.database)
    assert counts["bulk_tasks"] == 1
    assert counts["registry_things"] < 5000

    async def second() -> None:
        async with serving(host) as (client, _registry):
            finished = await wait_finished(client, task_id)
            assert (finished["status"], finished["successCount"]) == ("Completed", 5000)

    asyncio.run(second())
    assert contents(host.database)["registry_things"] == 5000


def test_cancel_a_running_task(host: Host) -> None:
    key = write_input(host.bulk_root, 20000)

    async def scenario(client: Client) -> None:
        _, started = await client.call("POST", "/thing-registration-tasks", start_request(key))
        task_id = started["taskId"]
        status, cancelling = await client.call("PUT", f"/thing-registration-tasks/{task_id}/cancel")
        assert status == 200
        assert cancelling["status"] in {"Cancelling", "Cancelled"}
        finished = await wait_finished(client, task_id)
        assert finished["status"] == "Cancelled"
        assert finished["successCount"] < 20000

    run(host, scenario)
