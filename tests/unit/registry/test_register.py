"""RegisterThing against a real SQLite registry: resources, ARNs, errors, OverrideSettings."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from agent.errors import AgentError
from agent.registry.ca import CertificateAuthority
from agent.registry.errors import (
    ConflictingResourceUpdateError,
    CsrError,
    ParameterError,
    ResourceRegistrationFailureError,
    TemplateError,
)
from agent.registry.register import RegisterThingResult, Registry, policy_name_for
from agent.registry.signing import CsrSigner
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import parse_template
from agent.store import Store
from tests.helpers.registry import example_template, make_csr, tampered_csr
from tests.unit.registry.conftest import ACCOUNT, REGION

ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:"

POLICY_TEXT = (
    '{ "Version": "2012-10-17", "Statement": [{ "Effect": "Allow", "Action":["iot:Publish"], '
    '"Resource": ["arn:aws:iot:us-east-1:123456789012:topic/foo/bar"] }] }'
)


def csr_template(**thing_extra: Any) -> dict[str, Any]:
    """The AWS bulk-registration example (CSR, policy document), with a ThingName."""
    return {
        "Parameters": {
            "ThingName": {"Type": "String"},
            "SerialNumber": {"Type": "String"},
            "Location": {"Type": "String", "Default": "WA"},
            "CSR": {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Ref": "ThingName"},
                    "AttributePayload": {"version": "v1", "serialNumber": {"Ref": "SerialNumber"}},
                    "ThingTypeName": "lightBulb-versionA",
                    "ThingGroups": ["v1-lightbulbs", {"Ref": "Location"}],
                    **thing_extra,
                },
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": POLICY_TEXT}},
        },
    }


def register_csr(registry: Registry, name: str = "bulb-1", **params: str) -> RegisterThingResult:
    return registry.register_thing(
        json.dumps(csr_template()),
        {"ThingName": name, "SerialNumber": "123", "CSR": make_csr(name), **params},
    )


# --- success paths ------------------------------------------------------------------------


def test_csr_template_registers_thing_certificate_and_policy(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    result = register_csr(registry)
    body = result.to_dict()
    assert set(body) == {"certificatePem", "resourceArns"}
    assert body["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    cert_id = result.certificate_id
    assert cert_id is not None
    policy_name = policy_name_for(
        json.dumps(json.loads(POLICY_TEXT), sort_keys=True, separators=(",", ":"))
    )
    assert body["resourceArns"] == {
        "thing": f"{ARN}thing/bulb-1",
        "certificate": f"{ARN}cert/{cert_id}",
        "policy": f"{ARN}policy/{policy_name}",
    }
    thing = storage.get_thing("bulb-1")
    assert thing is not None
    assert thing.attributes == {"version": "v1", "serialNumber": "123"}
    assert thing.thing_type_name == "lightBulb-versionA"
    assert thing.thing_groups == ("v1-lightbulbs", "WA")
    certificate = storage.get_certificate(cert_id)
    assert certificate is not None
    assert certificate.status == "ACTIVE"
    assert storage.thing_principals("bulb-1") == (cert_id,)
    assert storage.certificate_policies(cert_id) == (policy_name,)
    CsrSigner(ca.registry()).verify_issued(body["certificatePem"], path="x")


def test_reference_example_with_certificate_id(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    issued = CsrSigner(ca.registry()).sign(make_csr("edge-123"))
    cert_id = registry.register_certificate(issued.certificate_pem)
    assert cert_id == issued.certificate_id
    registry.create_policy("EdgeAppliancePolicy", {"Version": "2012-10-17", "Statement": []})
    result = registry.register_thing(
        json.dumps(example_template()),
        {"SerialNumber": "123"},
        certificate_id=cert_id,
    )
    # A template naming an existing policy returns only the certificate and thing ARNs.
    assert result.to_dict() == {
        "certificatePem": issued.certificate_pem,
        "resourceArns": {
            "certificate": f"{ARN}cert/{cert_id}",
            "thing": f"{ARN}thing/edge-123",
        },
    }
    assert result.device_configuration == {"ntpServer": "pool.ntp.org"}
    assert storage.certificate_policies(cert_id) == ("EdgeAppliancePolicy",)
    assert storage.thing_principals("edge-123") == (cert_id,)
    thing = storage.get_thing("edge-123")
    assert thing is not None
    assert thing.attributes == {"site": "lab", "serial": "123"}


def test_certificate_pseudo_parameters_fill_the_template(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    template = {
        "Parameters": {"CSR": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Fn::Sub": "dev-${AWS::IoT::Certificate::CommonName}"},
                    "AttributePayload": {
                        "certificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                        "country": {"Ref": "AWS::IoT::Certificate::Country"},
                    },
                },
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
            },
        },
    }
    result = registry.register_thing(template, {"CSR": make_csr("abc-9")})
    thing = storage.get_thing("dev-abc-9")
    assert thing is not None
    assert thing.attributes == {"certificateId": result.certificate_id, "country": "DE"}


def test_declared_certificate_fields_must_be_in_the_certificate(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    template = {
        "Parameters": {
            "AWS::IoT::Certificate::Id": {"Type": "String"},
            "AWS::IoT::Certificate::CommonName": {"Type": "String"},
            "AWS::IoT::Certificate::Organization": {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}},
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}},
            },
        },
    }
    cert_id = registry.register_certificate(
        CsrSigner(ca.registry()).sign(make_csr("jitp-1")).certificate_pem
    )
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(template, certificate_id=cert_id)
    assert caught.value.reason == "CERTIFICATE_FIELD_MISSING"
    assert caught.value.fields[0].path == "Parameters.AWS::IoT::Certificate::Organization"
    assert storage.count_things() == 0


def test_certificate_pem_from_the_ca_is_registered(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    pem = CsrSigner(ca.registry()).sign(make_csr("pem-1")).certificate_pem
    template = {
        "Parameters": {"Pem": {"Type": "String"}},
        "Resources": {
            "cert": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificatePem": {"Ref": "Pem"}, "Status": "INACTIVE"},
            }
        },
    }
    result = registry.register_thing(template, {"Pem": pem})
    assert result.certificate_pem == pem
    assert result.certificate_id is not None
    record = storage.get_certificate(result.certificate_id)
    assert record is not None
    assert record.status == "INACTIVE"


def test_certificate_pem_from_another_ca_is_refused(
    registry: Registry, storage: SqliteRegistryStorage, other_ca: CertificateAuthority
) -> None:
    pem = CsrSigner(other_ca.registry()).sign(make_csr("pem-2")).certificate_pem
    template = {
        "Resources": {
            "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": pem}}
        }
    }
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(template, {})
    assert caught.value.reason == "CERTIFICATE_NOT_TRUSTED"
    assert caught.value.fields[0].path == "Resources.cert.Properties.CertificatePem"
    assert caught.value.status_code == 400
    assert caught.value.code == "ResourceRegistrationFailureException"


# --- failures leave nothing behind ----------------------------------------------------------


def test_unknown_certificate_id(registry: Registry, storage: SqliteRegistryStorage) -> None:
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(example_template(), {"SerialNumber": "1"}, certificate_id="c" * 64)
    assert caught.value.reason == "CERTIFICATE_NOT_FOUND"
    assert caught.value.fields[0].path == "certificateId"
    assert storage.count_things() == 0


def test_unknown_policy_name_rolls_back_the_thing(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    cert_id = registry.register_certificate(
        CsrSigner(ca.registry()).sign(make_csr()).certificate_pem
    )
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(example_template(), {"SerialNumber": "1"}, certificate_id=cert_id)
    assert caught.value.reason == "POLICY_NOT_FOUND"
    assert caught.value.fields[0].path == "Resources.policy.Properties.PolicyName"
    assert storage.get_thing("edge-1") is None
    assert storage.thing_principals("edge-1") == ()


def test_bad_csr_writes_nothing(registry: Registry, storage: SqliteRegistryStorage) -> None:
    with pytest.raises(CsrError) as caught:
        registry.register_thing(
            csr_template(), {"ThingName": "t", "SerialNumber": "1", "CSR": tampered_csr()}
        )
    assert caught.value.reason == "CSR_SIGNATURE_INVALID"
    assert caught.value.fields[0].path == (
        "Resources.certificate.Properties.CertificateSigningRequest"
    )
    assert storage.count_things() == 0


def test_missing_parameter(registry: Registry, storage: SqliteRegistryStorage) -> None:
    with pytest.raises(ParameterError) as caught:
        registry.register_thing(csr_template(), {"ThingName": "t", "CSR": make_csr()})
    assert caught.value.reason == "PARAMETER_MISSING"
    assert caught.value.fields[0].path == (
        "Resources.thing.Properties.AttributePayload.serialNumber.Ref"
    )
    assert storage.count_things() == 0


def test_invalid_template_body(registry: Registry) -> None:
    with pytest.raises(TemplateError) as caught:
        registry.register_thing('{"Resources": {"x": {"Type": "AWS::IoT::Widget"}}}', {})
    assert caught.value.fields[0].path == "Resources.x.Type"


@pytest.mark.parametrize(
    ("parameters", "path"),
    [
        ({"k" * 2049: "v"}, "parameters." + "k" * 64),
        ({"Serial": "v" * 4097}, "parameters.Serial"),
        ({"Serial": 5}, "parameters.Serial"),
        ({"Serial": None}, "parameters.Serial"),
    ],
)
def test_parameter_map_limits(registry: Registry, parameters: dict[str, Any], path: str) -> None:
    with pytest.raises(ParameterError) as caught:
        registry.register_thing(csr_template(), parameters)
    assert caught.value.reason == "PARAMETER_INVALID"
    assert caught.value.fields[0].path == path


def test_parameter_limits_are_inclusive(registry: Registry, storage: SqliteRegistryStorage) -> None:
    template = {
        "Parameters": {"Name": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Name"}}}
        },
    }
    registry.register_thing(template, {"Name": "t1", "k" * 2048: "v" * 4096})
    assert storage.get_thing("t1") is not None


def test_parameters_must_be_a_map(registry: Registry) -> None:
    with pytest.raises(ParameterError) as caught:
        registry.register_thing(csr_template(), cast("Any", ["a"]))
    assert caught.value.fields[0].path == "parameters"


# --- OverrideSettings on existing resources -------------------------------------------------


def thing_only(
    attributes: dict[str, str], groups: list[str], type_name: str, **overrides: str
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "Type": "AWS::IoT::Thing",
        "Properties": {
            "ThingName": "lamp",
            "AttributePayload": attributes,
            "ThingGroups": groups,
            "ThingTypeName": type_name,
        },
    }
    if overrides:
        resource["OverrideSettings"] = overrides
    return {"Resources": {"thing": resource}}


@pytest.fixture
def lamp(registry: Registry, storage: SqliteRegistryStorage) -> Registry:
    registry.register_thing(thing_only({"a": "1", "b": "2"}, ["g1", "g2"], "typeA"), {})
    thing = storage.get_thing("lamp")
    assert thing is not None
    assert thing.version == 1
    return registry


ATTRIBUTES_AFTER = {
    "DO_NOTHING": {"a": "1", "b": "2"},
    "REPLACE": {"b": "20", "c": "3"},
    "MERGE": {"a": "1", "b": "20", "c": "3"},
}
GROUPS_AFTER = {
    "DO_NOTHING": ("g1", "g2"),
    "REPLACE": ("g2", "g3"),
    "MERGE": ("g1", "g2", "g3"),
}


@pytest.mark.parametrize("action", ["DO_NOTHING", "REPLACE", "MERGE"])
def test_attribute_payload_override(
    lamp: Registry, storage: SqliteRegistryStorage, action: str
) -> None:
    lamp.register_thing(
        thing_only({"b": "20", "c": "3"}, ["g1", "g2"], "typeA", AttributePayload=action), {}
    )
    thing = storage.get_thing("lamp")
    assert thing is not None
    assert thing.attributes == ATTRIBUTES_AFTER[action]
    assert thing.version == (1 if action == "DO_NOTHING" else 2)


@pytest.mark.parametrize("action", ["DO_NOTHING", "REPLACE", "MERGE"])
def test_thing_groups_override(lamp: Registry, storage: SqliteRegistryStorage, action: str) -> None:
    lamp.register_thing(
        thing_only({"a": "1", "b": "2"}, ["g2", "g3"], "typeA", ThingGroups=action), {}
    )
    thing = storage.get_thing("lamp")
    assert thing is not None
    assert thing.thing_groups == GROUPS_AFTER[action]


@pytest.mark.parametrize(("action", "after"), [("DO_NOTHING", "typeA"), ("REPLACE", "typeB")])
def test_thing_type_override(
    lamp: Registry, storage: SqliteRegistryStorage, action: str, after: str
) -> None:
    lamp.register_thing(
        thing_only({"a": "1", "b": "2"}, ["g1", "g2"], "typeB", ThingTypeName=action), {}
    )
    thing = storage.get_thing("lamp")
    assert thing is not None
    assert thing.thing_type_name == after


@pytest.mark.parametrize(
    ("prop", "template"),
    [
        (
            "AttributePayload",
            thing_only({"a": "9"}, ["g1", "g2"], "typeA", AttributePayload="FAIL"),
        ),
        ("ThingGroups", thing_only({"a": "1", "b": "2"}, ["g9"], "typeA", ThingGroups="FAIL")),
        (
            "ThingTypeName",
            thing_only({"a": "1", "b": "2"}, ["g1", "g2"], "typeZ", ThingTypeName="FAIL"),
        ),
    ],
)
def test_fail_override_conflicts_and_changes_nothing(
    lamp: Registry, storage: SqliteRegistryStorage, prop: str, template: dict[str, Any]
) -> None:
    before = storage.get_thing("lamp")
    with pytest.raises(ConflictingResourceUpdateError) as caught:
        lamp.register_thing(template, {})
    error = caught.value
    assert error.status_code == 409
    assert error.code == "ConflictingResourceUpdateException"
    assert error.fields[0].path == f"Resources.thing.OverrideSettings.{prop}"
    assert storage.get_thing("lamp") == before


def test_fail_override_allows_an_identical_registration(
    lamp: Registry, storage: SqliteRegistryStorage
) -> None:
    lamp.register_thing(
        thing_only(
            {"a": "1", "b": "2"},
            ["g1", "g2"],
            "typeA",
            AttributePayload="FAIL",
            ThingGroups="FAIL",
            ThingTypeName="FAIL",
        ),
        {},
    )
    thing = storage.get_thing("lamp")
    assert thing is not None
    assert thing.version == 1


def test_default_override_is_replace(lamp: Registry, storage: SqliteRegistryStorage) -> None:
    lamp.register_thing(thing_only({"z": "1"}, ["g5"], "typeC"), {})
    thing = storage.get_thing("lamp")
    assert thing is not None
    assert (thing.attributes, thing.thing_groups, thing.thing_type_name) == (
        {"z": "1"},
        ("g5",),
        "typeC",
    )


def cert_template(status: str, action: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "Type": "AWS::IoT::Certificate",
        "Properties": {"CertificateId": {"Ref": "Id"}, "Status": status},
    }
    if action:
        resource["OverrideSettings"] = {"Status": action}
    return {"Parameters": {"Id": {"Type": "String"}}, "Resources": {"certificate": resource}}


@pytest.mark.parametrize(
    ("action", "after"), [("DO_NOTHING", "ACTIVE"), ("REPLACE", "INACTIVE"), (None, "INACTIVE")]
)
def test_certificate_status_override(
    registry: Registry,
    storage: SqliteRegistryStorage,
    ca: CertificateAuthority,
    action: str | None,
    after: str,
) -> None:
    cert_id = registry.register_certificate(
        CsrSigner(ca.registry()).sign(make_csr()).certificate_pem
    )
    registry.register_thing(cert_template("INACTIVE", action), {"Id": cert_id})
    record = storage.get_certificate(cert_id)
    assert record is not None
    assert record.status == after


def test_certificate_status_fail_override(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    cert_id = registry.register_certificate(
        CsrSigner(ca.registry()).sign(make_csr()).certificate_pem
    )
    with pytest.raises(ConflictingResourceUpdateError) as caught:
        registry.register_thing(cert_template("INACTIVE", "FAIL"), {"Id": cert_id})
    assert caught.value.fields[0].path == "Resources.certificate.OverrideSettings.Status"
    record = storage.get_certificate(cert_id)
    assert record is not None
    assert record.status == "ACTIVE"


# --- batches, transactions, persistence, threads --------------------------------------------


def test_batch_isolates_each_registration(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    template = parse_template(csr_template())
    sets: list[dict[str, Any]] = [
        {"ThingName": f"b{i}", "SerialNumber": str(i), "CSR": make_csr(f"b{i}")} for i in range(5)
    ]
    sets[2] = {"ThingName": "b2", "SerialNumber": "2", "CSR": tampered_csr()}
    sets[3] = {"ThingName": "b3", "CSR": make_csr("b3")}
    outcomes = registry.register_batch(template, sets)
    assert [type(o).__name__ for o in outcomes] == [
        "RegisterThingResult",
        "RegisterThingResult",
        "CsrError",
        "ParameterError",
        "RegisterThingResult",
    ]
    assert storage.count_things() == 3
    assert storage.get_thing("b2") is None
    assert storage.get_thing("b3") is None


def test_a_failed_registration_inside_a_caller_transaction_rolls_back_only_itself(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority
) -> None:
    cert_id = registry.register_certificate(
        CsrSigner(ca.registry()).sign(make_csr()).certificate_pem
    )
    template = parse_template(example_template())
    with storage.transaction() as tx:
        registry.register_thing(
            csr_template(),
            {"ThingName": "ok", "SerialNumber": "1", "CSR": make_csr()},
            transaction=tx,
        )
        with pytest.raises(ResourceRegistrationFailureError):
            # The thing is written before the missing policy is found: the savepoint undoes it.
            registry.register_thing(
                template,
                {"SerialNumber": "9"},
                certificate_id=cert_id,
                transaction=tx,
            )
        tx.db.execute("CREATE TABLE caller_rows (n INTEGER)")
        tx.db.execute("INSERT INTO caller_rows VALUES (1)")
    assert storage.get_thing("ok") is not None
    assert storage.get_thing("edge-9") is None
    assert storage.store.db.execute("SELECT n FROM caller_rows").fetchall()[0][0] == 1


def test_an_aborted_caller_transaction_leaves_nothing(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    class AbortError(Exception):
        pass

    def aborted() -> None:
        with storage.transaction() as tx:
            registry.register_thing(
                csr_template(),
                {"ThingName": "gone", "SerialNumber": "1", "CSR": make_csr()},
                transaction=tx,
            )
            raise AbortError

    with pytest.raises(AbortError):
        aborted()
    assert storage.get_thing("gone") is None
    assert storage.count_things() == 0


def test_registry_persists_across_reopen(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority, db_path: Path
) -> None:
    result = register_csr(registry, "persist-1")
    storage.close()
    with SqliteRegistryStorage.open(db_path) as reopened:
        thing = reopened.get_thing("persist-1")
        assert thing is not None
        assert thing.thing_groups == ("v1-lightbulbs", "WA")
        assert result.certificate_id is not None
        assert reopened.thing_principals("persist-1") == (result.certificate_id,)
        assert reopened.count_things() == 1
        assert reopened.store.version("registry") == 1
        again = Registry(reopened, ca.registry(), region=REGION, account=ACCOUNT)
        register_csr(again, "persist-2")
    with Store(db_path) as store:
        rows = store.db.execute("SELECT name FROM registry_things ORDER BY name").fetchall()
        assert [r[0] for r in rows] == ["persist-1", "persist-2"]


def test_threads_share_one_registry(registry: Registry, storage: SqliteRegistryStorage) -> None:
    template = parse_template(
        {
            "Parameters": {"Name": {"Type": "String"}},
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {"ThingName": {"Ref": "Name"}, "ThingGroups": ["all"]},
                }
            },
        }
    )
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(50):
                registry.register_thing(template, {"Name": f"w{worker}-{i}"})
        except AgentError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storage.count_things() == 400


def test_thing_ids_are_version_4_uuids(registry: Registry, storage: SqliteRegistryStorage) -> None:
    import uuid

    template = parse_template(
        {
            "Parameters": {"Name": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Name"}}}
            },
        }
    )
    registry.register_batch(template, [{"Name": f"id-{i}"} for i in range(200)])
    ids = set()
    for i in range(200):
        thing = storage.get_thing(f"id-{i}")
        assert thing is not None
        parsed = uuid.UUID(thing.thing_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        ids.add(thing.thing_id)
    assert len(ids) == 200


def test_create_policy_checks_the_name(registry: Registry) -> None:
    with pytest.raises(ParameterError) as caught:
        registry.create_policy("bad name!", {"Version": "2012-10-17"})
    assert caught.value.fields[0].path == "policyName"
    assert registry.create_policy("Good.Name-1", "{}") == f"{ARN}policy/Good.Name-1"


def test_prepare_writes_nothing_and_commit_writes_everything(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    prepared = registry.prepare(
        csr_template(), {"ThingName": "split-1", "SerialNumber": "1", "CSR": make_csr("split-1")}
    )
    assert prepared.certificate is not None
    assert storage.count_things() == 0
    assert storage.get_certificate(prepared.certificate.certificate_id) is None
    with storage.transaction() as tx:
        result = registry.commit(prepared, transaction=tx)
    assert result.certificate_id == prepared.certificate.certificate_id
    assert storage.thing_principals("split-1") == (result.certificate_id,)


def test_ca_certificate_pem_must_be_the_registry_ca(
    registry: Registry,
    storage: SqliteRegistryStorage,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
) -> None:
    from agent.registry.ca import cert_to_pem

    pem = CsrSigner(ca.registry()).sign(make_csr("pem-ca")).certificate_pem
    template = {
        "Parameters": {"Pem": {"Type": "String"}, "Ca": {"Type": "String"}},
        "Resources": {
            "cert": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificatePem": {"Ref": "Pem"}, "CACertificatePem": {"Ref": "Ca"}},
            }
        },
    }
    wrongs = (
        cert_to_pem(other_ca.root_cert).decode(),
        cert_to_pem(other_ca.device_issuer.cert).decode(),
        cert_to_pem(ca.root_cert).decode(),  # the root issues no device certificates
        "garbage",
    )
    for wrong in wrongs:
        with pytest.raises(ResourceRegistrationFailureError) as caught:
            registry.register_thing(template, {"Pem": pem, "Ca": wrong})
        assert caught.value.reason == "CA_CERTIFICATE_NOT_REGISTERED"
        assert caught.value.fields[0].path == "Resources.cert.Properties.CACertificatePem"
    result = registry.register_thing(
        template, {"Pem": pem, "Ca": cert_to_pem(ca.device_issuer.cert).decode()}
    )
    assert result.certificate_id is not None
    assert storage.get_certificate(result.certificate_id) is not None


def test_create_certificate_from_csr(registry: Registry, storage: SqliteRegistryStorage) -> None:
    issued = registry.create_certificate_from_csr(make_csr("fp-1"), status="INACTIVE")
    record = storage.get_certificate(issued.certificate_id)
    assert record is not None
    assert (record.status, record.certificate_pem) == ("INACTIVE", issued.certificate_pem)
    with pytest.raises(CsrError) as caught:
        registry.create_certificate_from_csr(tampered_csr())
    assert caught.value.fields[0].path == "certificateSigningRequest"


def test_thing_group_queries(registry: Registry, storage: SqliteRegistryStorage) -> None:
    template = parse_template(
        {
            "Parameters": {"Name": {"Type": "String"}, "Groups": {"Type": "String"}},
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {
                        "ThingName": {"Ref": "Name"},
                        "ThingGroups": {"Fn::Split": [",", {"Ref": "Groups"}]},
                    },
                }
            },
        }
    )
    registry.register_batch(
        template,
        [
            {"Name": "b", "Groups": "west,all"},
            {"Name": "a", "Groups": "east,all"},
            {"Name": "c", "Groups": "west"},
        ],
    )
    assert storage.things_in_group("all") == ("a", "b")
    assert storage.things_in_group("west") == ("b", "c")
    assert storage.things_in_group("none") == ()
    assert storage.thing_groups() == ("all", "east", "west")
