"""One rule set for stored templates' types, enforced on create and on every new version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.registry.template import check_template_type, parse_template, validate_template_body
from agent.registry.templates_store import TemplateStore
from agent.registry.wiring import template_body_validator
from agent.store import Store

ROLE = "arn:aws:iam::123456789012:role/Provisioning"
THING = {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "edge-1"}}
BY_ID = {
    "Type": "AWS::IoT::Certificate",
    "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}},
}
BY_CSR = {
    "Type": "AWS::IoT::Certificate",
    "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
}


def _body(certificate: dict[str, Any] | None = None, **sections: Any) -> str:
    resources: dict[str, Any] = {"thing": THING}
    params: dict[str, Any] = {}
    if certificate is not None:
        resources["certificate"] = certificate
        if certificate is BY_CSR:
            params["CSR"] = {"Type": "String"}
    return json.dumps({"Parameters": params, "Resources": resources, **sections})


@pytest.fixture
def templates(tmp_path: Path) -> Iterator[TemplateStore]:
    with Store(tmp_path / "state.db") as store:
        yield TemplateStore(store, region="eu-west-1", account="111122223333")


def _create(templates: TemplateStore, body: str, kind: str, name: str = "t1") -> dict[str, Any]:
    return templates.create(
        {"templateName": name, "templateBody": body, "provisioningRoleArn": ROLE, "type": kind}
    )


@pytest.mark.parametrize(
    ("kind", "body", "path"),
    [
        (
            "FLEET_PROVISIONING",
            _body(BY_CSR),
            "Resources.certificate.Properties.CertificateSigningRequest",
        ),
        ("JITP", _body(BY_CSR), "Resources.certificate.Properties.CertificateSigningRequest"),
        ("JITP", _body(BY_ID, DeviceConfiguration={"a": "b"}), "DeviceConfiguration"),
        ("JITP", _body(BY_ID, Mappings={"M": {"k": {"v": "x"}}}), "Mappings"),
    ],
)
def test_a_body_that_breaks_its_type_is_refused_on_create(
    templates: TemplateStore, kind: str, body: str, path: str
) -> None:
    with pytest.raises(AgentError) as caught:
        _create(templates, body, kind)
    assert caught.value.code == "InvalidRequestException"
    assert [f.path for f in caught.value.fields] == [f"templateBody.{path}"]
    assert templates.list()["templates"] == []


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("FLEET_PROVISIONING", _body(BY_ID, DeviceConfiguration={"ntp": "pool.ntp.org"})),
        ("FLEET_PROVISIONING", _body()),
        ("JITP", _body(BY_ID)),
        ("JITP", _body()),
    ],
)
def test_a_body_that_suits_its_type_is_stored(
    templates: TemplateStore, kind: str, body: str
) -> None:
    assert _create(templates, body, kind)["defaultVersionId"] == 1


def test_the_rules_hold_for_new_versions_too(templates: TemplateStore) -> None:
    _create(templates, _body(BY_ID), "JITP")
    for bad in (_body(BY_CSR), _body(BY_ID, DeviceConfiguration={"a": "b"})):
        with pytest.raises(AgentError) as caught:
            templates.create_version("t1", bad)
        assert caught.value.code == "InvalidRequestException"
    assert [v["versionId"] for v in templates.list_versions("t1")["versions"]] == [1]
    assert templates.create_version("t1", _body())["versionId"] == 2


def test_store_wiring_and_engine_share_one_rule_set() -> None:
    # The store's default validator, the registry wiring's and the engine's agree.
    validator = template_body_validator(AgentConfig())
    assert validator is validate_template_body
    template = parse_template(_body(BY_CSR))
    with pytest.raises(AgentError) as engine:
        check_template_type(template, "FLEET_PROVISIONING")
    with pytest.raises(AgentError) as stored:
        validate_template_body(_body(BY_CSR), "FLEET_PROVISIONING")
    assert [f"templateBody.{f.path}" for f in engine.value.fields] == [
        f.path for f in stored.value.fields
    ]
