"""The whole flow against the registry's own endpoint (``edge-agent registry serve``).

claim → CSR (or CreateKeysAndCertificate) → RegisterThing on ``registry serve`` → the
permanent credential set installed → reconnect to the operational mosquitto with the
permanent identity → events flow; ``kill -9`` between the steps; every rejection with AWS's
fields.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.archive.install import current_credentials
from agent.fsutil import PRIVATE_FILE, PUBLIC_FILE
from agent.mqtt.client import Endpoint, MqttConnectionError
from agent.mqtt.credentials import install_set
from agent.mqtt.fleet import FleetOptions, FleetProvisioningError, Format, KeyKind, Mode, provision
from agent.registry.ca import cert_to_pem, generate_key, key_to_pem
from tests.helpers.endpoint import EndpointPki, Serve, add_template, serve, write_config
from tests.helpers.fleet_report import report_provisioned
from tests.helpers.mosquitto import Broker, Pki, Watcher
from tests.helpers.registry import example_template, write_hook
from tests.integration.endpoint.conftest import need_endpoint
from tests.integration.mqtt.conftest import validate

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[3]


@dataclass
class World:
    pki: EndpointPki
    database: Path
    serve: Serve
    operational: Broker
    broker_pki: Pki
    tmp: Path

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.serve.port}"

    def count(self, table: str) -> int:
        with sqlite3.connect(self.database) as db:
            return int(db.execute(f"SELECT COUNT(*) FROM registry_{table}").fetchone()[0])  # noqa: S608


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need_endpoint()
    tmp = tmp_path_factory.mktemp("fleet-endpoint")
    pki = EndpointPki(tmp / "pki")
    broker_pki = Pki(
        tmp / "broker-pki",
        key=cast("ec.EllipticCurvePrivateKey", pki.ca.root_key),
        cert=pki.ca.root_cert,
        issuers=(pki.ca.claim_issuer.cert, pki.ca.device_issuer.cert),
    )
    (tmp / "op").mkdir()
    operational = Broker(tmp / "op", broker_pki)
    operational.start()
    database = tmp / "registry.db"
    # RSA keys only from 3072 bits: the appliance's RSA-2048 choice counts as a weak key here
    config = write_config(tmp / "agent.toml", pki, database, min_rsa_bits=3072)
    body = example_template()
    body["DeviceConfiguration"] = {"mqttEndpoint": f"localhost:{operational.port}", "site": "lab"}
    add_template(database, "edge-fleet", body=body)
    add_template(database, "edge-off", body=body, enabled=False)
    deny = write_hook(tmp, "deny", "print(json.dumps({'allowProvisioning': False}))")
    add_template(database, "edge-deny", body=body, hook=str(deny))
    running = serve(config, pki)
    try:
        yield World(pki, database, running, operational, broker_pki, tmp)
    finally:
        running.stop()
        operational.stop()


def install_claim(
    world: World,
    *,
    template: str = "edge-fleet",
    not_before: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(minutes=5),
) -> tuple[Path, str]:
    """Install a claim set as ``archive install`` leaves it; return (state dir, thing name)."""
    serial = secrets.token_hex(4)
    thing = f"edge-{serial}"  # the example template names the thing edge-<SerialNumber>
    key = generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    cert = world.pki.ca.claim_issuer.issue(
        common_name=thing,
        public_key=key.public_key(),
        not_before=not_before or now - dt.timedelta(seconds=30),
        lifetime=lifetime,
    )
    manifest = {
        "formatVersion": 1,
        "deviceName": thing,
        "deviceId": f"device-{serial}",
        "arn": f"arn:aws:panorama:us-east-1:123456789012:device/device-{serial}",
        "iotThingName": thing,
        "iotEndpoint": world.endpoint,
        "provisioningTemplate": template,
        "templateParameters": {"SerialNumber": serial},
    }
    state = world.tmp / f"state-{thing}"
    install_set(
        state,
        "claim",
        {
            "certificate.pem": (
                cert_to_pem(cert) + cert_to_pem(world.pki.ca.claim_issuer.cert),
                PUBLIC_FILE,
            ),
            "private.key": (key_to_pem(key), PRIVATE_FILE),
            "root-ca.pem": (world.pki.ca_file.read_bytes(), PUBLIC_FILE),
            "manifest.json": (json.dumps(manifest).encode(), PUBLIC_FILE),
        },
    )
    return state, thing


def _things_named(world: World, thing: str) -> int:
    with sqlite3.connect(world.database) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM registry_things WHERE name = ?", (thing,)).fetchone()[
                0
            ]
        )


_PARTS = {
    "CreateCertificateFromCsr": "createCertificateFromCsr",
    "CreateKeysAndCertificate": "createKeysAndCertificate",
    "RegisterThing": "registerThing",
}


def check_against_schemas(
    operation: str, request: dict[str, Any], outcome: str, answer: dict[str, Any]
) -> None:
    """Every request the appliance sends and every answer it gets match the shipped schema."""
    validate("fleet-provisioning.schema.json", request, f"{_PARTS[operation]}Request")
    part = f"{_PARTS[operation]}Accepted" if outcome == "accepted" else "rejected"
    validate("fleet-provisioning.schema.json", answer, part)


@pytest.mark.parametrize(
    ("mode", "fmt", "key_type"),
    [
        ("csr", "json", "ec-p256"),
        ("csr", "cbor", "ed25519"),
        ("create-keys", "json", "ec-p256"),
        ("create-keys", "cbor", "ec-p256"),
    ],
)
def test_full_flow_then_events_with_the_permanent_identity(
    world: World, mode: Mode, fmt: Format, key_type: KeyKind
) -> None:
    state, thing = install_claim(world)
    claim_set = current_credentials(state)
    certs_before = world.count("certificates")
    watcher = Watcher(world.operational, world.broker_pki.identity(thing), [f"edge/{thing}/#"])

    async def scenario() -> dict[str, Any]:
        result = await provision(
            state,
            FleetOptions(mode=mode, payload_format=fmt, key_type=key_type),
            on_exchange=check_against_schemas,
        )
        assert result.endpoint == Endpoint("localhost", world.operational.port)
        assert result.thing_name == thing
        await report_provisioned(state, result)
        return result.to_json()

    try:
        out = asyncio.run(scenario())
        assert current_credentials(state) != claim_set
        assert out["deviceConfiguration"]["site"] == "lab"
        events = [
            validate("event.schema.json", p) for p in watcher.wait_for(1, f"edge/{thing}/events")
        ]
        assert events[0]["type"] == "FLEET_PROVISIONED"
        assert events[0]["body"]["certificateId"] == out["certificateId"]
        statuses = [
            validate("status.schema.json", p) for p in watcher.payloads(f"edge/{thing}/status")
        ]
        assert statuses
        assert statuses[0]["state"] == "online"
        assert world.count("certificates") == certs_before + 1
        assert _things_named(world, thing) == 1
    finally:
        watcher.close()


def _run(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_between_certificate_and_register_resumes_with_the_recorded_token(
    world: World,
) -> None:
    state, thing = install_claim(world)
    certs_before = world.count("certificates")
    first = _run(["-m", "tests.helpers.fleet_driver", str(state), world.endpoint, "certificate"])
    assert first.stdout is not None
    line = first.stdout.readline()
    assert line.strip() == "step certificate", first.stderr.read() if first.stderr else ""
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert world.count("certificates") == certs_before + 1
    assert _things_named(world, thing) == 0

    watcher = Watcher(world.operational, world.broker_pki.identity(thing), [f"edge/{thing}/events"])
    try:
        second = _run(["-m", "agent", "provision", "fleet", "--state-dir", str(state)])
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        result = json.loads(out)
        assert result["resumedFrom"] == "certificate"
        assert result["reported"]["delivered"] is True
        assert (
            world.count("certificates") == certs_before + 1
        )  # the same certificate, not a new one
        assert _things_named(world, thing) == 1
        event = validate("event.schema.json", watcher.wait_for(1)[0])
        assert event["type"] == "FLEET_PROVISIONED"
        # the private key of the half-finished exchange never reached the output
        key = (cast("Path", current_credentials(state)) / "private.key").read_text()
        body = key.splitlines()[1]
        assert body not in out
        assert body not in err
    finally:
        watcher.close()


@pytest.mark.parametrize(
    ("template", "options", "operation", "status", "code"),
    [
        ("no-such-template", {}, "RegisterThing", 404, "ResourceNotFound"),
        ("edge-off", {}, "RegisterThing", 400, "InvalidRequest"),
        ("edge-deny", {}, "RegisterThing", 403, "AccessDenied"),
        ("edge-fleet", {"key_type": "rsa-2048"}, "CreateCertificateFromCsr", 400, "InvalidCsr"),
    ],
)
def test_rejections_carry_aws_fields(
    world: World, template: str, options: dict[str, Any], operation: str, status: int, code: str
) -> None:
    state, _thing = install_claim(world, template=template)
    claim_set = current_credentials(state)
    with pytest.raises(FleetProvisioningError) as info:
        asyncio.run(provision(state, FleetOptions(**options), on_exchange=check_against_schemas))
    err = info.value
    assert (err.operation, err.aws_status) == (operation, status), err.to_dict()
    assert err.aws_code.startswith(code), err.to_dict()
    assert err.aws_message
    validate("error.schema.json", err.to_dict())
    assert current_credentials(state) == claim_set  # nothing switched


def test_claim_outside_its_window_is_refused_at_tls(world: World) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    state, _thing = install_claim(world, not_before=later)  # not valid yet: the server refuses
    with pytest.raises(MqttConnectionError) as info:
        asyncio.run(provision(state, FleetOptions(step_timeout=5)))
    assert info.value.reason == "MQTT_CONNECT_FAILED"


def test_registry_unreachable(world: World) -> None:
    from tests.helpers.mosquitto import free_port

    state, _thing = install_claim(world)
    with pytest.raises(MqttConnectionError) as info:
        asyncio.run(provision(state, FleetOptions(endpoint=f"localhost:{free_port()}")))
    assert info.value.to_dict()["error"]["statusCode"] == 503


def test_cli_reports_a_rejection_as_json_with_exit_code_1(world: World) -> None:
    state, _thing = install_claim(world, template="edge-off")
    proc = _run(["-m", "agent", "provision", "fleet", "--state-dir", str(state)])
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    error = validate("error.schema.json", json.loads(out))["error"]
    assert error["reason"] == "FLEET_REJECTED"
    assert error["aws"]["statusCode"] == 400
    assert error["aws"]["operation"] == "RegisterThing"
