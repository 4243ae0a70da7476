"""Managed things: the seed's field rules, idempotency, lifecycle, storage, CLI."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.commissioning.notify import RecordingNotifier
from agent.commissioning.things import (
    ACTIVATED,
    ARN_PATTERN,
    DISCOVERED,
    FAILED,
    PRE_ASSOCIATED,
    UNASSOCIATED,
    ManagedThings,
)
from agent.errors import ConflictError, ResourceNotFoundError, ValidationError
from agent.store import Store
from tests.helpers.zigbee import create_body

ZIGBEE = "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD%G$M:S1-R%M:10F2"
ZWAVE = "900132782003515253545541424344453132333435212223242500100435301537022065520001000000300578"
WIFI = "WIFI:S:home;T:WPA;P:secret-pass;;"


def body(**changes: Any) -> dict[str, Any]:
    return create_body(ZIGBEE, **changes)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def things(store: Store, notifier: RecordingNotifier) -> ManagedThings:
    return ManagedThings(store, region="us-east-1", account="123456789012", notifier=notifier)


def test_create_answers_201_with_seed_shape(
    things: ManagedThings, notifier: RecordingNotifier
) -> None:
    before = dt.datetime.now(dt.UTC).timestamp()
    result = things.create(body(Name="Küche Licht 1", Tags={"room": "kitchen"}))
    assert result.status_code == 201
    assert set(result.body) == {"Arn", "CreatedAt", "Id"}
    assert ARN_PATTERN.fullmatch(result.body["Arn"])
    assert 32 <= len(result.body["Arn"]) <= 1011
    assert result.body["Arn"].endswith("/" + result.body["Id"])
    assert before - 1 <= result.body["CreatedAt"] <= dt.datetime.now(dt.UTC).timestamp() + 1
    assert [e.status for e in notifier.things] == [UNASSOCIATED]
    described = things.describe(result.body["Id"])
    assert described["ProvisioningStatus"] == UNASSOCIATED
    assert described["AuthenticationMaterial"] == "<redacted>"
    assert described["Name"] == "Küche Licht 1"
    assert described["Device"]["ieee"] == "01:02:03:04:05:06:07:08"
    assert described["Device"]["linkKey"] == "<redacted>"
    assert things.describe(result.body["Id"], show_secrets=True)["AuthenticationMaterial"] == ZIGBEE


def _problems(call: Any) -> set[str]:
    with pytest.raises(ValidationError) as info:
        call()
    return {f.path for f in info.value.fields}


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"Role": None}, "Role"),
        ({"Role": "HUB"}, "Role"),
        ({"AuthenticationMaterial": None}, "AuthenticationMaterial"),
        ({"AuthenticationMaterial": ""}, "AuthenticationMaterial"),
        ({"AuthenticationMaterial": "x" * 513}, "AuthenticationMaterial"),
        ({"AuthenticationMaterial": ZIGBEE + "\n"}, "AuthenticationMaterial"),
        ({"AuthenticationMaterial": "WIFI:S:a,b;T:nopass;;"}, "AuthenticationMaterial"),
        ({"AuthenticationMaterialType": "BLE_QR"}, "AuthenticationMaterialType"),
        ({"Brand": "Acme!"}, "Brand"),
        ({"Brand": "a" * 129}, "Brand"),
        ({"Brand": ""}, "Brand"),
        ({"Model": "M1\n"}, "Model"),
        ({"SerialNumber": "SN.1"}, "SerialNumber"),
        ({"Name": "Lamp\u00a0"}, "Name"),
        ({"Name": "Lamp\n"}, "Name"),
        ({"Name": "a/b"}, "Name"),
        ({"Owner": "me me"}, "Owner"),
        ({"ClientToken": "tok en"}, "ClientToken"),
        ({"ClientToken": "t" * 65}, "ClientToken"),
        ({"CredentialLockerId": "abc-1"}, "CredentialLockerId"),
        ({"Classification": "c" * 65}, "Classification"),
        ({"Capabilities": "light\u2003bulb"}, "Capabilities"),
        ({"Capabilities": "light<bulb>"}, "Capabilities"),
        ({"Brand": 5}, "Brand"),
        ({"Extra": "x"}, "Extra"),
        ({"Tags": {f"k{i}": "v" for i in range(51)}}, "Tags"),
        ({"Tags": {"": "v"}}, "Tags key"),
        ({"Tags": {"k": "v" * 257}}, "Tags.k"),
        ({"Tags": ["k"]}, "Tags"),
        ({"MetaData": {f"k{i}": "v" for i in range(51)}}, "MetaData"),
        ({"MetaData": {"!!!": "v"}}, "MetaData key"),
        ({"MetaData": {"": "v"}}, "MetaData key"),
        ({"MetaData": {"k": "line\nbreak"}}, "MetaData.k"),
        ({"MetaData": {"k": 1}}, "MetaData.k"),
        ({"CapabilityReport": {"version": "1"}}, "CapabilityReport.endpoints"),
        ({"CapabilityReport": {"endpoints": [], "version": "1", "x": 1}}, "CapabilityReport.x"),
        (
            {"CapabilityReport": {"endpoints": [{"id": "1", "deviceTypes": []}], "version": "1"}},
            "CapabilityReport.endpoints[0].capabilities",
        ),
        (
            {
                "CapabilityReport": {
                    "endpoints": [
                        {
                            "id": "1",
                            "deviceTypes": ["light"],
                            "capabilities": [{"id": "c", "name": "n", "version": "1"}],
                        }
                    ],
                    "version": "1",
                }
            },
            "CapabilityReport.endpoints[0].capabilities[0].actions",
        ),
    ],
)
def test_field_rules(things: ManagedThings, changes: dict[str, Any], path: str) -> None:
    assert path in _problems(lambda: things.create(body(**changes)))
    assert things.list() == []


def test_valid_optional_fields_are_accepted(things: ManagedThings) -> None:
    report = {
        "endpoints": [
            {
                "id": "1",
                "deviceTypes": ["light"],
                "capabilities": [
                    {
                        "id": "aws.OnOff",
                        "name": "OnOff",
                        "version": "1",
                        "actions": ["toggle"],
                        "events": [],
                        "properties": ["OnOff"],
                    }
                ],
            }
        ],
        "nodeId": "n1",
        "version": "1.0",
    }
    result = things.create(
        body(
            Brand="Acme Co_1-2",
            Model="M 1",
            SerialNumber="SN-1_2 3",
            Name="灯 ١٢٣ lamp_1.2-3",
            Owner="ops@example.com",
            ClientToken="tok=_-1",
            CredentialLockerId="abc123",
            Classification="light bulb",
            Capabilities='{"light": [1, 2], "dim": "a\\b/c"}\n',
            CapabilityReport=report,
            MetaData={"a b#": "", "ü:": "x\ty", **{f"k{i}": "v" for i in range(47)}},
            Tags={f"t{i}": "" for i in range(50)},
        )
    )
    assert things.describe(result.body["Id"])["CapabilityReport"] == report


def test_material_must_parse_as_its_type(things: ManagedThings) -> None:
    with pytest.raises(ValidationError) as info:
        things.create(body(AuthenticationMaterialType="ZWAVE_QR_BAR_CODE"))
    assert info.value.reason == "QR_TYPE_MISMATCH"
    with pytest.raises(ValidationError) as info:
        things.create(body(AuthenticationMaterial=ZIGBEE.replace("90FD", "90FE")))
    assert info.value.reason == "QR_CHECKSUM_MISMATCH"
    assert "0102030405060708090A" not in info.value.message


def test_client_token_idempotency(things: ManagedThings, notifier: RecordingNotifier) -> None:
    first = things.create(body(ClientToken="abc"))
    again = things.create(body(ClientToken="abc"))
    assert again.body == first.body
    assert again.replayed
    assert len(things.list()) == 1
    assert len(notifier.things) == 1
    with pytest.raises(ConflictError) as info:
        things.create(body(ClientToken="abc", Name="other"))
    assert info.value.reason == "CLIENT_TOKEN_CONFLICT"
    assert info.value.to_dict()["error"]["statusCode"] == 409


def test_same_device_twice_is_a_conflict(things: ManagedThings) -> None:
    things.create(body())
    with pytest.raises(ConflictError) as info:
        things.create(body(Name="again"))
    assert info.value.reason == "DEVICE_ALREADY_MANAGED"


def test_lifecycle_and_failures(things: ManagedThings, notifier: RecordingNotifier) -> None:
    thing_id = things.create(body()).body["Id"]
    things.transition(thing_id, PRE_ASSOCIATED)
    with pytest.raises(ConflictError):
        things.transition(thing_id, ACTIVATED)
    things.transition(thing_id, FAILED, reason="JOIN_TIMEOUT", message="no join in 60 s")
    failed = things.describe(thing_id)
    assert failed["ProvisioningStatus"] == FAILED
    assert failed["FailureReason"] == "JOIN_TIMEOUT"
    things.transition(thing_id, PRE_ASSOCIATED)
    things.transition(thing_id, DISCOVERED)
    things.transition(thing_id, ACTIVATED)
    assert "FailureReason" not in things.describe(thing_id)
    assert [e.status for e in notifier.things] == [
        UNASSOCIATED,
        PRE_ASSOCIATED,
        FAILED,
        PRE_ASSOCIATED,
        DISCOVERED,
        ACTIVATED,
    ]
    assert notifier.things[2].reason == "JOIN_TIMEOUT"
    with pytest.raises(ValueError, match="reason"):
        things.transition(thing_id, FAILED)


def test_persisted_and_deleted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store(path) as store:
        first = ManagedThings(store, region="eu-west-1", account="1")
        thing_id = first.create(
            body(AuthenticationMaterial=WIFI, AuthenticationMaterialType="WIFI_SETUP_QR_BAR_CODE")
        ).body["Id"]
    with Store(path) as store:
        second = ManagedThings(store, region="eu-west-1", account="1")
        assert [t["Id"] for t in second.list()] == [thing_id]
        assert second.payload(thing_id).fields["ssid"] == "home"
        assert second.list(status=ACTIVATED) == []
        second.delete(thing_id)
        with pytest.raises(ResourceNotFoundError):
            second.describe(thing_id)
        with pytest.raises(ResourceNotFoundError):
            second.delete(thing_id)


def test_cli_things(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "c.db")
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            body(
                AuthenticationMaterial=ZWAVE,
                AuthenticationMaterialType="ZWAVE_QR_BAR_CODE",
                ClientToken="t1",
            )
        )
    )
    assert main(["things", "create", str(request), "--database", db]) == 0
    created = json.loads(capsys.readouterr().out)
    assert ARN_PATTERN.fullmatch(created["Arn"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(request.read_bytes())))
    assert main(["things", "create", "-", "--database", db]) == 0
    assert json.loads(capsys.readouterr().out) == created
    assert main(["things", "list", "--database", db]) == 0
    items = json.loads(capsys.readouterr().out)["Items"]
    assert [i["Id"] for i in items] == [created["Id"]]
    assert main(["things", "describe", created["Id"], "--database", db]) == 0
    out = capsys.readouterr().out
    assert "51525-35455" not in out
    assert json.loads(out)["Format"] == "zwave-smartstart"
    assert main(["things", "delete", created["Id"], "--database", db]) == 0
    capsys.readouterr()
    assert main(["things", "describe", created["Id"], "--database", db]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "ResourceNotFoundException"
    request.write_text('{"Role": "DEVICE", "Role": "DEVICE"}')
    assert main(["things", "create", str(request), "--database", db]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "INVALID_JSON"
