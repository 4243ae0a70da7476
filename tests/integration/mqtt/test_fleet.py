"""The device side of fleet provisioning on a real mosquitto, answered by the registry code.

The responder (tests/helpers/fleet_responder.py) signs with the real Registry; the broker
checks the claim and then the permanent certificate with mutual TLS, and the ACL keeps the
appliance to its own ``edge/<thingName>/`` topics once provisioned.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.archive.install import current_credentials
from agent.fsutil import PRIVATE_FILE, PUBLIC_FILE
from agent.mqtt.client import Endpoint
from agent.mqtt.credentials import install_set
from agent.mqtt.fleet import (
    ClaimExpiredError,
    FleetExchange,
    FleetOptions,
    FleetProvisioningError,
    Format,
    KeyKind,
    Mode,
    provision,
)
from agent.registry.ca import CertificateAuthority, cert_to_pem, generate_key, init_ca, key_to_pem
from agent.registry.register import Registry
from agent.registry.signing import CsrPolicy
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.fleet_report import report_provisioned
from tests.helpers.fleet_responder import Responder
from tests.helpers.mosquitto import Broker, Pki, Watcher
from tests.integration.mqtt.conftest import validate

pytestmark = pytest.mark.mqtt

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "ThingName": {"Type": "String"},
        "Site": {"Type": "String", "Default": "lab"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Ref": "ThingName"},
                "AttributePayload": {"site": {"Ref": "Site"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                "Status": "ACTIVE",
            },
        },
    },
    "DeviceConfiguration": {"mqttEndpoint": "OPERATIONAL"},
}


@dataclass
class World:
    ca: CertificateAuthority
    pki: Pki
    claim_broker: Broker
    operational: Broker
    registry: Registry
    storage: SqliteRegistryStorage
    tmp: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ca = init_ca(tmp_path / "ca")
    pki = Pki(
        tmp_path / "pki",
        key=cast("ec.EllipticCurvePrivateKey", ca.root_key),
        cert=ca.root_cert,
        issuers=(ca.claim_issuer.cert, ca.device_issuer.cert),
    )
    claim_dir = tmp_path / "claim-broker"
    claim_dir.mkdir()
    claim_broker = Broker(
        claim_dir, pki, acl="pattern readwrite edge/%u/#\npattern readwrite $aws/#\n"
    )
    op_dir = tmp_path / "op-broker"
    op_dir.mkdir()
    operational = Broker(op_dir, pki)
    claim_broker.start()
    operational.start()
    storage = SqliteRegistryStorage.open(tmp_path / "registry.db")
    registry = Registry(storage, ca.registry(), region="us-east-1", account="123456789012")
    try:
        yield World(ca, pki, claim_broker, operational, registry, storage, tmp_path)
    finally:
        storage.close()
        claim_broker.stop()
        operational.stop()


def install_claim(
    world: World,
    thing: str,
    *,
    lifetime: dt.timedelta = dt.timedelta(minutes=5),
    start: dt.datetime | None = None,
    template: str = "fleet",
) -> Path:
    """Install a claim credential set as ``archive install`` leaves it."""
    key = generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    cert = world.ca.claim_issuer.issue(
        common_name=thing,
        public_key=key.public_key(),
        not_before=start or now - dt.timedelta(seconds=30),
        lifetime=lifetime,
    )
    manifest = {
        "formatVersion": 1,
        "deviceName": thing,
        "deviceId": f"device-{thing}",
        "arn": f"arn:aws:panorama:us-east-1:123456789012:device/device-{thing}",
        "iotThingName": thing,
        "createdAt": now.isoformat(),
        "iotEndpoint": f"localhost:{world.claim_broker.port}",
        "provisioningTemplate": template,
        "templateParameters": {"ThingName": thing, "Site": "plant-7"},
    }
    state = world.tmp / f"state-{thing}"
    install_set(
        state,
        "claim",
        {
            "certificate.pem": (
                cert_to_pem(cert) + cert_to_pem(world.ca.claim_issuer.cert),
                PUBLIC_FILE,
            ),
            "private.key": (key_to_pem(key), PRIVATE_FILE),
            "root-ca.pem": (cert_to_pem(world.ca.root_cert), PUBLIC_FILE),
            "manifest.json": (json.dumps(manifest).encode(), PUBLIC_FILE),
        },
    )
    return state


@contextlib.asynccontextmanager
async def responder(world: World, **kwargs: Any) -> AsyncIterator[Responder]:
    template = json.loads(
        json.dumps(TEMPLATE).replace("OPERATIONAL", f"localhost:{world.operational.port}")
    )
    r = Responder(
        world.registry,
        {"fleet": template, "off": template},
        Endpoint("localhost", world.claim_broker.port),
        world.pki.identity("registry"),
        disabled={"off"},
        **kwargs,
    )
    ready = asyncio.Event()
    task = asyncio.create_task(r.serve(ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield r
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _count(world: World, table: str) -> int:
    with sqlite3.connect(world.tmp / "registry.db") as db:
        return int(db.execute(f"SELECT COUNT(*) FROM registry_{table}").fetchone()[0])  # noqa: S608


@pytest.mark.parametrize(
    ("mode", "fmt", "key_type"),
    [
        ("csr", "json", "ec-p256"),
        ("csr", "cbor", "ed25519"),
        ("create-keys", "json", "ec-p256"),
        ("create-keys", "cbor", "ec-p256"),
        ("csr", "json", "rsa-2048"),
    ],
)
def test_full_flow_then_events_with_the_permanent_identity(
    world: World, mode: Mode, fmt: Format, key_type: KeyKind
) -> None:
    thing = f"hub-{mode}-{fmt}-{key_type}".replace("_", "-")
    state = install_claim(world, thing)
    claim_fp = current_credentials(state)
    watcher = Watcher(world.operational, world.pki.identity(thing), [f"edge/{thing}/events"])
    steps: list[str] = []

    async def scenario() -> dict[str, Any]:
        async with responder(world, create_keys_cn=thing) as r:
            result = await provision(
                state,
                FleetOptions(mode=mode, payload_format=fmt, key_type=key_type),
                on_step=steps.append,
            )
            assert r.requests == [
                "CreateCertificateFromCsr" if mode == "csr" else "CreateKeysAndCertificate",
                "RegisterThing",
            ]
        assert result.endpoint == Endpoint("localhost", world.operational.port)
        await report_provisioned(state, result)
        return result.to_json()

    try:
        out = asyncio.run(scenario())
        assert steps == ["certificate", "registered", "installed"]
        current = current_credentials(state)
        assert current is not None
        assert current != claim_fp
        key_file = current / "private.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((current / "certificate.pem").read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={thing}"
        assert out["thingName"] == thing
        got = watcher.wait_for(1, timeout=15)
        event = validate("event.schema.json", got[0])
        assert event["type"] == "FLEET_PROVISIONED"
        assert event["body"]["certificateId"] == out["certificateId"]
        assert _count(world, "certificates") == 1
        assert _count(world, "things") == 1
        # the key of the exchange is gone from the pending area
        assert not any((state / "credentials" / "pending").rglob("private.key"))
    finally:
        watcher.close()


def test_crash_between_certificate_and_register_resumes_with_the_recorded_token(
    world: World,
) -> None:
    thing = "hub-resume"
    state = install_claim(world, thing)

    class CrashError(Exception):
        pass

    def crash_after_certificate(step: str) -> None:
        if step == "certificate":
            raise CrashError

    async def scenario() -> tuple[list[str], str]:
        async with responder(world) as r:
            with pytest.raises(CrashError):
                await provision(state, on_step=crash_after_certificate)
            token_before = _recorded_token(state)
            result = await provision(state)
            assert result.resumed_from == "certificate"
            return r.requests, token_before

    requests, token = asyncio.run(scenario())
    assert token
    assert requests == ["CreateCertificateFromCsr", "RegisterThing"]
    assert _count(world, "certificates") == 1
    assert _count(world, "things") == 1


def test_registered_before_a_crash_installs_after_the_claim_expired(world: World) -> None:
    # RegisterThing was answered, then the process died; it comes back after the claim's
    # window: the exchange must finish locally, not refuse (nor register a second time).
    thing = "hub-late"
    state = install_claim(
        world,
        thing,
        start=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
        lifetime=dt.timedelta(seconds=6),
    )

    class CrashError(Exception):
        pass

    def crash_after_register(step: str) -> None:
        if step == "registered":
            raise CrashError

    async def scenario() -> tuple[list[str], str]:
        async with responder(world) as r:
            with pytest.raises(CrashError):
                await provision(state, on_step=crash_after_register)
            expired_at = x509.load_pem_x509_certificate(
                (current_credentials(state) or state).joinpath("certificate.pem").read_bytes()
            ).not_valid_after_utc
            await asyncio.sleep(max(0.0, (expired_at - dt.datetime.now(dt.UTC)).total_seconds()))
            assert dt.datetime.now(dt.UTC) > expired_at
            result = await provision(state, FleetOptions(), on_step=None)
            assert result.resumed_from == "registered"
            return r.requests, result.thing_name

    requests, name = asyncio.run(scenario())
    assert requests == ["CreateCertificateFromCsr", "RegisterThing"]
    assert name
    assert _count(world, "things") == 1
    permanent = current_credentials(state)
    assert permanent is not None
    assert (permanent / "private.key").exists()


def _recorded_token(state: Path) -> str:
    exchange = FleetExchange(state)
    try:
        row = exchange._store.db.execute("SELECT ownership_token FROM fleet_exchange").fetchone()
        return str(row[0])
    finally:
        exchange.close()


@pytest.mark.parametrize(
    ("template", "status", "code"),
    [("missing", 404, "ResourceNotFoundException"), ("off", 400, "InvalidRequestException")],
)
def test_rejections_carry_aws_fields(world: World, template: str, status: int, code: str) -> None:
    thing = f"hub-rej-{template}"
    state = install_claim(world, thing, template=template)

    async def scenario() -> FleetProvisioningError:
        async with responder(world):
            with pytest.raises(FleetProvisioningError) as info:
                await provision(state)
            return info.value

    err = asyncio.run(scenario())
    aws = err.to_dict()["error"]["aws"]
    assert aws["operation"] == "RegisterThing"
    assert aws["statusCode"] == status
    assert aws["errorCode"] == code
    assert aws["errorMessage"]
    # nothing switched: the claim is still the set in force
    assert json.loads((cast("Path", current_credentials(state)) / "manifest.json").read_bytes())


def test_weak_key_rejected_with_aws_fields(world: World) -> None:
    thing = "hub-weak"
    state = install_claim(world, thing)
    # a registry that takes RSA only from 3072 bits: the device's RSA-2048 key is too weak
    world.registry = Registry(
        world.storage,
        world.ca.registry(),
        region="us-east-1",
        account="123456789012",
        csr_policy=CsrPolicy(min_rsa_bits=3072),
    )

    async def scenario() -> FleetProvisioningError:
        async with responder(world):
            with pytest.raises(FleetProvisioningError) as info:
                await provision(state, FleetOptions(key_type="rsa-2048"))
            return info.value

    err = asyncio.run(scenario())
    assert err.aws_status == 400
    assert err.operation == "CreateCertificateFromCsr"
    assert "rsa" in err.aws_message.lower() or "key" in err.aws_message.lower()


def test_expired_claim_is_refused_before_connecting(world: World) -> None:
    now = dt.datetime.now(dt.UTC)
    state = install_claim(
        world, "hub-expired", start=now - dt.timedelta(minutes=10), lifetime=dt.timedelta(minutes=5)
    )
    with pytest.raises(ClaimExpiredError):
        asyncio.run(provision(state))


def test_registry_unreachable_is_a_clear_error(world: World) -> None:
    from agent.mqtt.client import MqttConnectionError

    state = install_claim(world, "hub-unreachable")
    world.claim_broker.stop()
    with pytest.raises(MqttConnectionError) as info:
        asyncio.run(provision(state, FleetOptions(step_timeout=3)))
    assert info.value.reason == "MQTT_CONNECT_FAILED"
    assert info.value.to_dict()["error"]["statusCode"] == 503
