"""The registry routes of the local API, served by LocalApi on a Unix socket in-process.

Each route's success body and status, and every kind of bad input answered in the seed
error shape with its status code and nothing written to the registry's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.api import LocalApi
from agent.config import AgentConfig, parse_config
from agent.registry.api import RegistryApi
from agent.registry.ca import init_ca
from agent.registry.demo import EXAMPLE_TEMPLATE
from agent.registry.storage import SqliteRegistryStorage
from agent.store import Store
from tests.helpers.registry import make_csr, tampered_csr, weak_rsa_csr
from tests.helpers.registry_api import (
    CSR_TEMPLATE,
    ROLE,
    contents,
    start_request,
    template_request,
    write_input,
)

_NO_BODY = object()


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("api-ca") / "ca"
    init_ca(directory)
    return directory


def make_config(root: Path, ca_dir: Path, database: str = "registry.db") -> AgentConfig:
    (root / "bulk-root" / "factory").mkdir(parents=True, exist_ok=True)
    return parse_config(
        f"""
[agent]
state_dir = "{root / "state"}"
runtime_dir = "{root / "run"}"
[api]
socket = "{root / "run" / "api.sock"}"
registry = true
[registry]
database = "{root / "state" / database}"
ca_dir = "{ca_dir}"
bulk_root = "{root / "bulk-root"}"
region = "eu-west-1"
account = "111122223333"
"""
    )


@dataclass
class Host:
    """One registry host's configuration (replaceable, as a reload does)."""

    config: AgentConfig

    @property
    def database(self) -> Path:
        return self.config.registry.database

    @property
    def bulk_root(self) -> Path:
        return self.config.registry.bulk_root


@pytest.fixture
def host(tmp_path: Path, ca_dir: Path) -> Host:
    return Host(make_config(tmp_path, ca_dir))


class Client:
    """Requests to the local API's socket; answers are (status, JSON body)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def call(
        self, method: str, path: str, body: Any = _NO_BODY, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
        async with self._session.request(
            method,
            f"http://localhost{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def serving(host: Host) -> AsyncIterator[tuple[Client, RegistryApi]]:
    socket_path = host.config.api.socket_path(host.config.agent)
    local = LocalApi(socket_path)
    registry = RegistryApi(lambda: host.config)
    local.add_routes(registry.routes())
    await local.start()
    try:
        await registry.start()
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            yield Client(session), registry
    finally:
        await local.stop()
        await registry.close()


def run(host: Host, scenario: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(host) as (client, _registry):
            await scenario(client)

    asyncio.run(main())


def assert_error(answer: tuple[int, Any], status: int, code: str, reason: str) -> dict[str, Any]:
    got_status, body = answer
    assert got_status == status, body
    error: dict[str, Any] = body["error"]
    assert set(error) <= {"code", "statusCode", "reason", "message", "fields"}
    assert (error["code"], error["statusCode"], error["reason"]) == (code, status, reason), error
    assert error["message"]
    return error


async def wait_finished(client: Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        status, body = await client.call("GET", f"/thing-registration-tasks/{task_id}")
        assert status == 200, body
        if body["status"] not in {"InProgress", "Cancelling"}:
            described: dict[str, Any] = body
            return described
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


# --- provisioning templates -------------------------------------------------------------


def test_create_list_and_describe_templates(host: Host) -> None:
    async def scenario(client: Client) -> None:
        status, body = await client.call("POST", "/provisioning-templates", template_request())
        assert status == 200
        assert body == {
            "templateArn": "arn:aws:iot:eu-west-1:111122223333:provisioningtemplate/edge-fleet",
            "templateName": "edge-fleet",
            "defaultVersionId": 1,
        }
        assert (await client.call("POST", "/provisioning-templates", template_request("b-fleet")))[
            0
        ] == 200
        status, described = await client.call("GET", "/provisioning-templates/edge-fleet")
        assert status == 200
        assert described["templateBody"] == json.dumps(EXAMPLE_TEMPLATE)
        assert described["type"] == "FLEET_PROVISIONING"
        assert described["enabled"] is True
        assert described["provisioningRoleArn"] == ROLE
        status, listed = await client.call("GET", "/provisioning-templates")
        assert status == 200
        assert [t["templateName"] for t in listed["templates"]] == ["b-fleet", "edge-fleet"]
        status, page = await client.call("GET", "/provisioning-templates?maxResults=1")
        assert [t["templateName"] for t in page["templates"]] == ["b-fleet"]
        token = page["nextToken"]
        status, rest = await client.call(
            "GET", f"/provisioning-templates?maxResults=1&nextToken={token}"
        )
        assert status == 200
        assert [t["templateName"] for t in rest["templates"]] == ["edge-fleet"]
        assert "nextToken" not in rest

    run(host, scenario)
    assert contents(host.database)["provisioning_templates"] == 2


BAD_TEMPLATE_REQUESTS: list[tuple[str, Any, str]] = [
    ("array", [template_request()], "FIELD_TYPE_INVALID"),
    ("unknown field", template_request(colour="blue"), "FIELD_UNKNOWN"),
    ("enabled not a boolean", template_request(enabled="yes"), "FIELD_TYPE_INVALID"),
    ("name breaks the pattern", template_request("no spaces"), "FIELD_PATTERN_MISMATCH"),
    ("name too long", template_request("n" * 37), "FIELD_TOO_LONG"),
    ("role missing", {**template_request(), "provisioningRoleArn": None}, "FIELD_REQUIRED"),
    ("body not a string", {**template_request(), "templateBody": {}}, "FIELD_TYPE_INVALID"),
    ("type unknown", template_request(type="SOMETIMES"), "FIELD_VALUE_NOT_ALLOWED"),
    ("body not JSON", {**template_request(), "templateBody": "{nope"}, "TEMPLATE_INVALID"),
    (
        "body with an unknown resource type",
        {
            **template_request(),
            "templateBody": json.dumps(
                {"Resources": {"x": {"Type": "AWS::IoT::Nothing", "Properties": {}}}}
            ),
        },
        "TEMPLATE_INVALID",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [(body, reason) for _, body, reason in BAD_TEMPLATE_REQUESTS],
    ids=[name for name, _, _ in BAD_TEMPLATE_REQUESTS],
)
def test_bad_template_requests_are_refused_and_write_nothing(
    host: Host, request_body: Any, reason: str
) -> None:
    async def scenario(client: Client) -> None:
        before = contents(host.database)
        error = assert_error(
            await client.call("POST", "/provisioning-templates", request_body),
            400,
            "InvalidRequestException",
            reason,
        )
        if not isinstance(request_body, dict):
            assert "fields" not in error
        else:
            assert error["fields"]
        assert contents(host.database) == before

    run(host, scenario)
    assert contents(host.database)["provisioning_templates"] == 0


def test_template_request_that_is_not_json(host: Host) -> None:
    async def scenario(client: Client) -> None:
        for raw in (b"{not json", b"\xff\xfe", b'{"templateName": "a", "templateName": "b"}', b""):
            assert_error(
                await client.call("POST", "/provisioning-templates", raw=raw),
                400,
                "InvalidRequestException",
                "REQUEST_NOT_JSON",
            )

    run(host, scenario)
    assert contents(host.database)["provisioning_templates"] == 0


def test_template_conflicts_and_unknown_names(host: Host) -> None:
    async def scenario(client: Client) -> None:
        assert (await client.call("POST", "/provisioning-templates", template_request()))[0] == 200
        before = contents(host.database)
        assert_error(
            await client.call("POST", "/provisioning-templates", template_request()),
            409,
            "ResourceAlreadyExistsException",
            "TEMPLATE_ALREADY_EXISTS",
        )
        assert contents(host.database) == before
        assert_error(
            await client.call("GET", "/provisioning-templates/nobody"),
            404,
            "ResourceNotFoundException",
            "TEMPLATE_NOT_FOUND",
        )
        assert_error(
            await client.call("GET", "/provisioning-templates/" + "n" * 40),
            400,
            "InvalidRequestException",
            "FIELD_TOO_LONG",
        )
        for query, reason in (
            ("maxResults=abc", "FIELD_TYPE_INVALID"),
            ("maxResults=0", "FIELD_VALUE_NOT_ALLOWED"),
            ("maxResults=1&maxResults=2", "FIELD_UNKNOWN"),
            ("colour=blue", "FIELD_UNKNOWN"),
            ("nextToken=a", "INVALID_NEXT_TOKEN"),
        ):
            assert_error(
                await client.call("GET", f"/provisioning-templates?{query}"),
                400,
                "InvalidRequestException",
                reason,
            )
        for path in (
            "/provisioning-templates?x=1",
            "/things?dryRun=1",
            "/thing-registration-tasks?x",
        ):
            assert_error(
                await client.call("POST", path, {}),
                400,
                "InvalidRequestException",
                "FIELD_UNKNOWN",
            )
        assert contents(host.database) == before
        assert_error(
            await client.call("DELETE", "/provisioning-templates/edge-fleet"),
            405,
            "MethodNotAllowedException",
            "METHOD_NOT_ALLOWED",
        )

    run(host, scenario)


# --- RegisterThing --------------------------------------------------------------------------


def register_body(name: str = "bulb-1", csr: str | None = None) -> dict[str, Any]:
    return {
        "templateBody": json.dumps(CSR_TEMPLATE),
        "parameters": {"ThingName": name, "SerialNumber": "42", "CSR": csr or make_csr(name)},
    }


def test_register_thing(host: Host) -> None:
    async def scenario(client: Client) -> None:
        status, body = await client.call("POST", "/things", register_body())
        assert status == 200
        assert set(body) == {"certificatePem", "resourceArns"}
        assert body["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
        arns = body["resourceArns"]
        assert set(arns) == {"thing", "certificate", "policy"}
        assert arns["thing"] == "arn:aws:iot:eu-west-1:111122223333:thing/bulb-1"

    run(host, scenario)
    with SqliteRegistryStorage.open(host.database) as storage:
        thing = storage.get_thing("bulb-1")
        assert thing is not None
        assert thing.attributes == {"serial": "42"}
        (certificate_id,) = storage.thing_principals("bulb-1")
        certificate = storage.get_certificate(certificate_id)
        assert certificate is not None
        assert certificate.status == "ACTIVE"


BAD_REGISTER_REQUESTS: list[tuple[str, Any, str]] = [
    ("array", [register_body()], "FIELD_TYPE_INVALID"),
    ("unknown field", {**register_body(), "templateName": "x"}, "FIELD_UNKNOWN"),
    ("templateBody missing", {"parameters": {}}, "FIELD_REQUIRED"),
    ("templateBody an object", {**register_body(), "templateBody": {}}, "FIELD_TYPE_INVALID"),
    ("templateBody too long", {"templateBody": " " * 10241}, "TEMPLATE_TOO_LARGE"),
    ("parameters a list", {**register_body(), "parameters": ["a"]}, "PARAMETER_INVALID"),
    (
        "a parameter not a string",
        {**register_body(), "parameters": {**register_body()["parameters"], "SerialNumber": 42}},
        "PARAMETER_INVALID",
    ),
    (
        "a parameter missing",
        {**register_body(), "parameters": {"ThingName": "bulb-1", "CSR": make_csr()}},
        "PARAMETER_MISSING",
    ),
    (
        "certificate pseudo-parameter forged",
        {
            **register_body(),
            "parameters": {**register_body()["parameters"], "AWS::IoT::Certificate::Id": "ab"},
        },
        "CERTIFICATE_PARAMETER_NOT_ALLOWED",
    ),
    ("template not JSON", {**register_body(), "templateBody": "{"}, "TEMPLATE_INVALID"),
    ("CSR not PEM", register_body(csr="not a CSR"), "CSR_INVALID"),
    ("CSR signature broken", register_body(csr=tampered_csr()), "CSR_SIGNATURE_INVALID"),
    ("CSR key too weak", register_body(csr=weak_rsa_csr()), "KEY_TOO_WEAK"),
]


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [(body, reason) for _, body, reason in BAD_REGISTER_REQUESTS],
    ids=[name for name, _, _ in BAD_REGISTER_REQUESTS],
)
def test_bad_register_requests_are_refused_and_write_nothing(
    host: Host, request_body: Any, reason: str
) -> None:
    async def scenario(client: Client) -> None:
        before = contents(host.database)
        status, body = await client.call("POST", "/things", request_body)
        assert status == 400, body
        assert body["error"]["code"] == "InvalidRequestException"
        assert body["error"]["statusCode"] == 400
        assert body["error"]["reason"] == reason, body
        assert ("fields" in body["error"]) == isinstance(request_body, dict)
        assert contents(host.database) == before

    run(host, scenario)
    counts = contents(host.database)
    assert counts["registry_things"] == counts["registry_certificates"] == 0


def test_register_thing_not_json_and_conflicts(host: Host) -> None:
    async def scenario(client: Client) -> None:
        assert_error(
            await client.call("POST", "/things", raw=b"[1,"),
            400,
            "InvalidRequestException",
            "REQUEST_NOT_JSON",
        )
        template = json.loads(json.dumps(CSR_TEMPLATE))
        thing = template["Resources"]["thing"]
        thing["OverrideSettings"] = {"AttributePayload": "FAIL"}
        body = {**register_body(), "templateBody": json.dumps(template)}
        assert (await client.call("POST", "/things", body))[0] == 200
        before = contents(host.database)
        changed = {**body, "parameters": {**body["parameters"], "SerialNumber": "43"}}
        changed["parameters"]["CSR"] = make_csr("bulb-1")
        assert_error(
            await client.call("POST", "/things", changed),
            409,
            "ConflictingResourceUpdateException",
            "RESOURCE_CONFLICT",
        )
        assert contents(host.database) == before

    run(host, scenario)


# --- bulk registration ---------------------------------------------------------------------


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


def test_a_reload_that_changes_the_registry_reopens_it(host: Host, tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        assert (await client.call("POST", "/provisioning-templates", template_request()))[0] == 200
        first = host.database
        host.config = dataclasses.replace(
            host.config,
            registry=dataclasses.replace(host.config.registry, database=tmp_path / "other.db"),
        )
        assert_error(
            await client.call("GET", "/provisioning-templates/edge-fleet"),
            404,
            "ResourceNotFoundException",
            "TEMPLATE_NOT_FOUND",
        )
        assert contents(first)["provisioning_templates"] == 1

    run(host, scenario)


def test_no_database_work_runs_on_the_event_loop(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    original_init = Store.__init__
    original_transaction = Store.transaction

    def init(self: Store, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        original_init(self, *args, **kwargs)

    def transaction(self: Store) -> Any:
        threads.append(threading.current_thread().name)
        return original_transaction(self)

    monkeypatch.setattr(Store, "__init__", init)
    monkeypatch.setattr(Store, "transaction", transaction)
    key = write_input(host.bulk_root, 10)

    async def scenario(client: Client) -> None:
        assert (await client.call("POST", "/provisioning-templates", template_request()))[0] == 200
        assert (await client.call("POST", "/things", register_body()))[0] == 200
        _, started = await client.call("POST", "/thing-registration-tasks", start_request(key))
        assert (await wait_finished(client, started["taskId"]))["status"] == "Completed"

    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    run(host, scenario)
    assert threads
    assert loop_thread not in threads
    assert {name.split("_")[0] for name in threads} == {"registry-api", "registry-bulk"}


def test_a_ca_made_after_the_start_is_used_without_a_restart(tmp_path: Path) -> None:
    ca_dir = tmp_path / "later-ca"
    host = Host(make_config(tmp_path, ca_dir))

    async def scenario(client: Client) -> None:
        assert_error(
            await client.call("POST", "/things", register_body()),
            400,
            "ValidationException",
            "CA_MISSING",
        )
        assert contents(host.database)["registry_things"] == 0
        init_ca(ca_dir)
        status, body = await client.call("POST", "/things", register_body())
        assert status == 200, body

    run(host, scenario)


def test_a_body_over_the_limit_is_refused(host: Host) -> None:
    async def scenario(client: Client) -> None:
        huge = {"templateBody": "x" * (300 * 1024)}
        for path in ("/things", "/provisioning-templates", "/thing-registration-tasks"):
            assert_error(
                await client.call("POST", path, huge),
                413,
                "ValidationException",
                "REQUEST_TOO_LARGE",
            )

    run(host, scenario)
    assert set(contents(host.database).values()) == {0}
