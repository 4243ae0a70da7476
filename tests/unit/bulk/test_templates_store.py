"""The provisioning-template store: field validation per the seed, versions, limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError
from agent.registry.templates_store import TemplateStore
from agent.store import Store

BODY = json.dumps(
    {
        "Parameters": {"SerialNumber": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "SerialNumber"}},
            }
        },
    }
)


def body(thing: str = "edge") -> str:
    return json.dumps(
        {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": thing}}}}
    )


ROLE = "arn:aws:iam::123456789012:role/Provisioning"
HOOK = {
    "targetArn": "arn:aws:lambda:us-east-1:123456789012:function:hook",
    "payloadVersion": "2020-04-01",
}


@pytest.fixture
def templates(tmp_path: Path) -> Iterator[TemplateStore]:
    with Store(tmp_path / "state.db") as store:
        yield TemplateStore(store, region="eu-west-1", account="111122223333", max_templates=3)


def request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "templateName": "edge-fleet",
        "templateBody": BODY,
        "provisioningRoleArn": ROLE,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()

# (case id, request changes, error code, status, reason, field path)
INVALID = [
    (
        "name missing",
        {"templateName": _DROP},
        "InvalidRequestException",
        400,
        "FIELD_REQUIRED",
        "templateName",
    ),
    (
        "name empty",
        {"templateName": ""},
        "InvalidRequestException",
        400,
        "FIELD_TOO_SHORT",
        "templateName",
    ),
    (
        "name 37 chars",
        {"templateName": "a" * 37},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "templateName",
    ),
    (
        "name with dot",
        {"templateName": "edge.fleet"},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "templateName",
    ),
    (
        "name with space",
        {"templateName": "edge fleet"},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "templateName",
    ),
    (
        "name not string",
        {"templateName": 7},
        "InvalidRequestException",
        400,
        "FIELD_TYPE_INVALID",
        "templateName",
    ),
    (
        "description 501",
        {"description": "d" * 501},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "description",
    ),
    (
        "description control char",
        {"description": "line\nbreak"},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "description",
    ),
    (
        "description format char",
        {"description": "zero\u200bwidth"},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "description",
    ),
    (
        "description private use",
        {"description": "\ue000"},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "description",
    ),
    (
        "description unassigned",
        {"description": "\u0378"},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "description",
    ),
    (
        "body missing",
        {"templateBody": _DROP},
        "InvalidRequestException",
        400,
        "FIELD_REQUIRED",
        "templateBody",
    ),
    (
        "body 10241",
        {"templateBody": " " * 10241},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "templateBody",
    ),
    (
        "body not json",
        {"templateBody": "{nope"},
        "InvalidRequestException",
        400,
        "TEMPLATE_INVALID",
        "templateBody",
    ),
    (
        "body a list",
        {"templateBody": "[]"},
        "InvalidRequestException",
        400,
        "TEMPLATE_INVALID",
        "templateBody",
    ),
    (
        "enabled string",
        {"enabled": "true"},
        "InvalidRequestException",
        400,
        "FIELD_TYPE_INVALID",
        "enabled",
    ),
    (
        "role missing",
        {"provisioningRoleArn": _DROP},
        "InvalidRequestException",
        400,
        "FIELD_REQUIRED",
        "provisioningRoleArn",
    ),
    (
        "role 19",
        {"provisioningRoleArn": "r" * 19},
        "InvalidRequestException",
        400,
        "FIELD_TOO_SHORT",
        "provisioningRoleArn",
    ),
    (
        "role 2049",
        {"provisioningRoleArn": "r" * 2049},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "provisioningRoleArn",
    ),
    (
        "type unknown",
        {"type": "BULK"},
        "InvalidRequestException",
        400,
        "FIELD_VALUE_NOT_ALLOWED",
        "type",
    ),
    (
        "type lower case",
        {"type": "jitp"},
        "InvalidRequestException",
        400,
        "FIELD_VALUE_NOT_ALLOWED",
        "type",
    ),
    (
        "hook on JITP",
        {"type": "JITP", "preProvisioningHook": HOOK},
        "InvalidRequestException",
        400,
        "HOOK_NOT_SUPPORTED",
        "preProvisioningHook",
    ),
    (
        "hook not object",
        {"preProvisioningHook": "arn"},
        "InvalidRequestException",
        400,
        "FIELD_TYPE_INVALID",
        "preProvisioningHook",
    ),
    (
        "hook target missing",
        {"preProvisioningHook": {"payloadVersion": "2020-04-01"}},
        "InvalidRequestException",
        400,
        "FIELD_REQUIRED",
        "preProvisioningHook.targetArn",
    ),
    (
        "hook target 2049",
        {"preProvisioningHook": {"targetArn": "a" * 2049}},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "preProvisioningHook.targetArn",
    ),
    (
        "hook version short",
        {"preProvisioningHook": {**HOOK, "payloadVersion": "2020-04"}},
        "InvalidRequestException",
        400,
        "FIELD_TOO_SHORT",
        "preProvisioningHook.payloadVersion",
    ),
    (
        "hook version letters",
        {"preProvisioningHook": {**HOOK, "payloadVersion": "2020-04-0a"}},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "preProvisioningHook.payloadVersion",
    ),
    (
        "hook unknown key",
        {"preProvisioningHook": {**HOOK, "url": "x"}},
        "InvalidRequestException",
        400,
        "FIELD_UNKNOWN",
        "preProvisioningHook.url",
    ),
    (
        "tags not list",
        {"tags": {"Key": "a"}},
        "InvalidRequestException",
        400,
        "FIELD_TYPE_INVALID",
        "tags",
    ),
    (
        "tag key missing",
        {"tags": [{"Value": "v"}]},
        "InvalidRequestException",
        400,
        "FIELD_REQUIRED",
        "tags[0].Key",
    ),
    (
        "tag key empty",
        {"tags": [{"Key": ""}]},
        "InvalidRequestException",
        400,
        "FIELD_TOO_SHORT",
        "tags[0].Key",
    ),
    (
        "tag key 129",
        {"tags": [{"Key": "k" * 129}]},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "tags[0].Key",
    ),
    (
        "tag key symbol",
        {"tags": [{"Key": "a", "Value": "1"}, {"Key": "bad#key"}]},
        "InvalidRequestException",
        400,
        "FIELD_PATTERN_MISMATCH",
        "tags[1].Key",
    ),
    (
        "tag value 257",
        {"tags": [{"Key": "k", "Value": "v" * 257}]},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "tags[0].Value",
    ),
    (
        "tag key repeated",
        {"tags": [{"Key": "k"}, {"Key": "k"}]},
        "InvalidRequestException",
        400,
        "FIELD_VALUE_NOT_ALLOWED",
        "tags[1].Key",
    ),
    (
        "51 tags",
        {"tags": [{"Key": f"k{i}"} for i in range(51)]},
        "InvalidRequestException",
        400,
        "FIELD_TOO_LONG",
        "tags",
    ),
    (
        "unknown field",
        {"templateVersion": 2},
        "InvalidRequestException",
        400,
        "FIELD_UNKNOWN",
        "templateVersion",
    ),
]


CSR_TEMPLATE = {
    "Parameters": {"CSR": {"Type": "String"}},
    "Resources": {
        "cert": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
        }
    },
}
# template bodies the engine refuses, with the engine's JSON path under templateBody.
INVALID += [
    (
        "body without resources",
        {"templateBody": "{}"},
        "InvalidRequestException",
        400,
        "TEMPLATE_INVALID",
        "templateBody.Resources",
    ),
    (
        "body bad resource type",
        {"templateBody": '{"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}'},
        "InvalidRequestException",
        400,
        "TEMPLATE_INVALID",
        "templateBody.Resources.x.Type",
    ),
    (
        "JITP with a CSR",
        {"type": "JITP", "templateBody": json.dumps(CSR_TEMPLATE)},
        "InvalidRequestException",
        400,
        "TEMPLATE_INVALID",
        "templateBody.Resources.cert.Properties.CertificateSigningRequest",
    ),
]


@pytest.mark.parametrize(
    ("changes", "code", "status", "reason", "path"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_create_rejects_each_bad_field(
    templates: TemplateStore,
    *,
    changes: dict[str, Any],
    code: str,
    status: int,
    reason: str,
    path: str,
) -> None:
    with pytest.raises(AgentError) as info:
        templates.create(request(**changes))
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (code, status, reason)
    assert path in [f["path"] for f in wire["fields"]]
    assert templates.list()["templates"] == []  # nothing half-written


VALID = [
    ("minimal", {}),
    ("name 36 chars", {"templateName": "A_-9" * 9}),
    ("description 500 with unicode letters", {"description": "Gerät für Büro " + "x" * 485}),
    ("body exactly 10240", {"templateBody": body() + " " * (10240 - len(body()))}),
    ("role 20", {"provisioningRoleArn": "r" * 20}),
    ("JITP", {"type": "JITP"}),
    ("hook without version", {"preProvisioningHook": {"targetArn": "arn:aws:lambda:x"}}),
    ("hook", {"preProvisioningHook": HOOK, "enabled": True}),
    ("tags unicode", {"tags": [{"Key": "Ort Zürich_1:/=+-@", "Value": ""}, {"Key": "n"}]}),
]


@pytest.mark.parametrize("changes", [pytest.param(c[1], id=c[0]) for c in VALID])
def test_create_accepts_boundaries(templates: TemplateStore, changes: dict[str, Any]) -> None:
    req = request(**changes)
    out = templates.create(req)
    name = req["templateName"]
    assert out == {
        "templateArn": f"arn:aws:iot:eu-west-1:111122223333:provisioningtemplate/{name}",
        "templateName": name,
        "defaultVersionId": 1,
    }
    described = templates.describe(name)
    assert described["templateBody"] == req["templateBody"]
    assert described["type"] == changes.get("type", "FLEET_PROVISIONING")
    assert described["enabled"] is changes.get("enabled", False)
    assert described.get("preProvisioningHook") == changes.get("preProvisioningHook")


def test_duplicate_name_is_already_exists(templates: TemplateStore) -> None:
    templates.create(request())
    with pytest.raises(AgentError) as info:
        templates.create(request(description="second"))
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (
        "ResourceAlreadyExistsException",
        409,
        "TEMPLATE_ALREADY_EXISTS",
    )
    assert templates.describe("edge-fleet")["description"] == ""


def test_template_limit_is_limit_exceeded(templates: TemplateStore) -> None:
    for i in range(3):
        templates.create(request(templateName=f"t{i}"))
    with pytest.raises(AgentError) as info:
        templates.create(request(templateName="t3"))
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (
        "LimitExceededException",
        410,
        "TEMPLATES_LIMIT_EXCEEDED",
    )
    assert [t["templateName"] for t in templates.list()["templates"]] == ["t0", "t1", "t2"]


def test_versions_lifecycle(templates: TemplateStore) -> None:
    templates.create(request())
    v2 = templates.create_version("edge-fleet", body("v2"))
    assert v2["versionId"] == 2
    assert v2["isDefaultVersion"] is False
    assert templates.describe("edge-fleet")["defaultVersionId"] == 1
    v3 = templates.create_version("edge-fleet", body("v3"), set_as_default=True)
    assert v3 == {
        "templateArn": "arn:aws:iot:eu-west-1:111122223333:provisioningtemplate/edge-fleet",
        "templateName": "edge-fleet",
        "versionId": 3,
        "isDefaultVersion": True,
    }
    assert templates.describe("edge-fleet")["templateBody"] == body("v3")
    listed = templates.list_versions("edge-fleet")["versions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in listed] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    templates.set_default_version("edge-fleet", 2)
    assert templates.describe_version("edge-fleet", 2)["isDefaultVersion"] is True
    assert templates.describe("edge-fleet")["templateBody"] == body("v2")
    templates.delete_version("edge-fleet", 3)
    # ids are never reused after a delete
    assert templates.create_version("edge-fleet", body())["versionId"] == 4
    assert [v["versionId"] for v in templates.list_versions("edge-fleet")["versions"]] == [1, 2, 4]


def test_default_version_cannot_be_deleted(templates: TemplateStore) -> None:
    templates.create(request())
    with pytest.raises(AgentError) as info:
        templates.delete_version("edge-fleet", 1)
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (
        "DeleteConflictException",
        409,
        "DEFAULT_VERSION_UNDELETABLE",
    )
    assert templates.describe_version("edge-fleet", 1)["versionId"] == 1


def test_version_limit(templates: TemplateStore) -> None:
    templates.create(request())
    for _ in range(4):
        templates.create_version("edge-fleet", body())
    with pytest.raises(AgentError) as info:
        templates.create_version("edge-fleet", body(), set_as_default=True)
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (
        "VersionsLimitExceededException",
        409,
        "VERSIONS_LIMIT_EXCEEDED",
    )
    assert templates.describe("edge-fleet")["defaultVersionId"] == 1
    assert len(templates.list_versions("edge-fleet")["versions"]) == 5


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda t: t.describe("nope"), "TEMPLATE_NOT_FOUND"),
        (lambda t: t.delete("nope"), "TEMPLATE_NOT_FOUND"),
        (lambda t: t.create_version("nope", "{}"), "TEMPLATE_NOT_FOUND"),
        (lambda t: t.describe_version("edge-fleet", 9), "TEMPLATE_VERSION_NOT_FOUND"),
        (lambda t: t.delete_version("edge-fleet", 9), "TEMPLATE_VERSION_NOT_FOUND"),
        (lambda t: t.set_default_version("edge-fleet", 9), "TEMPLATE_VERSION_NOT_FOUND"),
    ],
)
def test_not_found(templates: TemplateStore, call: Any, reason: str) -> None:
    templates.create(request())
    with pytest.raises(AgentError) as info:
        call(templates)
    wire = info.value.to_dict()["error"]
    assert (wire["code"], wire["statusCode"], wire["reason"]) == (
        "ResourceNotFoundException",
        404,
        reason,
    )


def test_invalid_version_body_keeps_versions(templates: TemplateStore) -> None:
    templates.create(request())
    with pytest.raises(AgentError) as info:
        templates.create_version("edge-fleet", "not json", set_as_default=True)
    assert info.value.reason == "TEMPLATE_INVALID"
    assert [v["versionId"] for v in templates.list_versions("edge-fleet")["versions"]] == [1]


def test_update_never_changes_type_and_rejects_hook_on_jitp(templates: TemplateStore) -> None:
    templates.create(request(type="JITP"))
    with pytest.raises(AgentError) as info:
        templates.update("edge-fleet", {"type": "FLEET_PROVISIONING"})
    assert info.value.reason == "FIELD_UNKNOWN"
    with pytest.raises(AgentError) as info:
        templates.update("edge-fleet", {"preProvisioningHook": HOOK})
    assert info.value.reason == "HOOK_NOT_SUPPORTED"
    templates.update("edge-fleet", {"enabled": True, "description": "jitp"})
    described = templates.describe("edge-fleet")
    assert (described["type"], described["enabled"], described["description"]) == (
        "JITP",
        True,
        "jitp",
    )


def test_hook_can_be_removed(templates: TemplateStore) -> None:
    templates.create(request(preProvisioningHook=HOOK))
    templates.update("edge-fleet", {"removePreProvisioningHook": True})
    assert "preProvisioningHook" not in templates.describe("edge-fleet")


def test_delete_removes_all_versions(templates: TemplateStore) -> None:
    templates.create(request())
    templates.create_version("edge-fleet", body())
    templates.delete("edge-fleet")
    templates.create(request())
    assert [v["versionId"] for v in templates.list_versions("edge-fleet")["versions"]] == [1]


def test_list_pages(templates: TemplateStore) -> None:
    for name in ("c", "a", "b"):
        templates.create(request(templateName=name))
    first = templates.list(max_results=2)
    assert [t["templateName"] for t in first["templates"]] == ["a", "b"]
    second = templates.list(max_results=2, next_token=first["nextToken"])
    assert [t["templateName"] for t in second["templates"]] == ["c"]
    assert "nextToken" not in second
    with pytest.raises(AgentError) as info:
        templates.list(max_results=251)
    assert info.value.to_dict()["error"]["fields"][0]["path"] == "maxResults"


def test_state_survives_reopen(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        TemplateStore(store).create(request(tags=[{"Key": "site", "Value": "lab"}]))
    with Store(tmp_path / "s.db") as store:
        described = TemplateStore(store).describe("edge-fleet")
    assert described["tags"] == [{"Key": "site", "Value": "lab"}]
