"""The registry routes of the local API (templates, RegisterThing), served in-process.

LocalApi serves the routes on a Unix socket; each route's success body and status, and every
kind of bad input answered in the seed error shape with its status code and nothing written
to the registry's database. Bulk tasks: test_api_bulk.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.registry.ca import init_ca
from agent.registry.demo import EXAMPLE_TEMPLATE
from agent.registry.storage import SqliteRegistryStorage
from agent.store import Store
from tests.helpers.registry import make_csr, tampered_csr, weak_rsa_csr
from tests.helpers.registry_api import (
    CSR_TEMPLATE,
    ROLE,
    Client,
    Host,
    assert_error,
    contents,
    make_config,
    run,
    start_request,
    template_request,
    wait_finished,
    write_input,
)

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
