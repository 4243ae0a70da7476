"""What AWS guarantees, through ``registry serve``: isolation, token binding, TLS, topics."""

from __future__ import annotations

import json
import queue
import socket
import ssl
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.registry.ca import init_ca
from tests.helpers.endpoint import RawDevice
from tests.helpers.registry import make_csr
from tests.helpers.sdk_device import RejectedError, provision_v5, provision_v311
from tests.integration.endpoint.conftest import Endpoint

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
REGISTER = "$aws/provisioning-templates/edge-fleet/provision/json"
EVERY_RESPONSE = [
    f"{base}/{fmt}/{outcome}"
    for base in (
        "$aws/certificates/create-from-csr",
        "$aws/certificates/create",
        "$aws/provisioning-templates/edge-fleet/provision",
    )
    for fmt in ("json", "cbor")
    for outcome in ("accepted", "rejected")
]


def _drain(device: RawDevice, seconds: float) -> list[tuple[str, bytes]]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(device.messages.get(timeout=0.05))
        except queue.Empty:
            continue
    return got


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_an_eavesdropping_claim_connection_receives_nothing(
    endpoint: Endpoint, protocol: MQTTProtocolVersion
) -> None:
    spy = RawDevice(endpoint.port, endpoint.pki.claim(), endpoint.pki.ca_file, protocol=protocol)
    try:
        spy.subscribe(
            "$aws/#",
            "#",
            "+/#",
            "edge-registry/#",
            "$share/spies/edge-registry/request",
            *EVERY_RESPONSE,
        )
        victim = endpoint.pki.claim()
        for provision in (provision_v311, provision_v5):
            got = provision(
                endpoint.port,
                victim if provision is provision_v311 else endpoint.pki.claim(),
                str(endpoint.pki.ca_file),
                template="edge-fleet",
                parameters={"SerialNumber": f"spied{protocol.value}{provision.__name__[-1]}"},
                csr=make_csr(victim.name) if provision is provision_v311 else None,
                method="csr" if provision is provision_v311 else "keys",
            )
            assert got.thing_name
        assert _drain(spy, 0.5) == []
    finally:
        spy.close()


def test_a_token_replayed_by_another_device_is_rejected_and_writes_nothing(
    endpoint: Endpoint,
) -> None:
    owner = endpoint.pki.claim()
    owner_device = RawDevice(endpoint.port, owner, endpoint.pki.ca_file)
    try:
        topic, payload = owner_device.request(
            CSR_TOPIC, json.dumps({"certificateSigningRequest": make_csr(owner.name)})
        )
        assert topic == CSR_TOPIC + "/accepted"
        token = json.loads(payload)["certificateOwnershipToken"]
    finally:
        owner_device.close()
    thief = RawDevice(endpoint.port, endpoint.pki.claim(), endpoint.pki.ca_file)
    try:
        body = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "stolen"}}
        topic, payload = thief.request(REGISTER, json.dumps(body))
    finally:
        thief.close()
    assert topic == REGISTER + "/rejected"
    assert json.loads(payload)["errorCode"] == "InvalidCertificateOwnershipToken"
    with endpoint.storage() as storage:
        assert storage.get_thing("edge-stolen") is None
    # The owner reconnecting with its own claim certificate may continue.
    again = RawDevice(endpoint.port, owner, endpoint.pki.ca_file)
    try:
        body["parameters"] = {"SerialNumber": "resumed"}
        topic, payload = again.request(REGISTER, json.dumps(body))
    finally:
        again.close()
    assert topic == REGISTER + "/accepted", payload
    assert json.loads(payload)["thingName"] == "edge-resumed"


def test_the_sdk_sees_rejections_with_aws_fields(endpoint: Endpoint) -> None:
    claim = endpoint.pki.claim()
    with pytest.raises(RejectedError) as caught:
        provision_v5(
            endpoint.port,
            claim,
            str(endpoint.pki.ca_file),
            template="no-such-template",
            parameters={"SerialNumber": "x"},
            csr=make_csr(claim.name),
        )
    assert (caught.value.status_code, caught.value.error_code) == (404, "ResourceNotFound")
    assert caught.value.step == "register"


def test_a_look_alike_ca_is_refused_at_tls(endpoint: Endpoint, tmp_path: Path) -> None:
    impostor = init_ca(tmp_path / "impostor", name="endpoint test CA")  # the same name
    claim = endpoint.pki.claim("dev-fake", ca=impostor)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        RawDevice(endpoint.port, claim, endpoint.pki.ca_file)
    with pytest.raises(Exception, match=r"(?i)tls|socket|connection|closed"):
        provision_v311(
            endpoint.port,
            claim,
            str(endpoint.pki.ca_file),
            template="edge-fleet",
            parameters={"SerialNumber": "fake"},
            csr=make_csr(claim.name),
        )


def test_a_client_id_with_topic_wildcards(endpoint: Endpoint) -> None:
    claim = endpoint.pki.claim()
    device = RawDevice(endpoint.port, claim, endpoint.pki.ca_file, client_id="a/#+b/+/#")
    try:
        topic, payload = device.request(
            CSR_TOPIC, json.dumps({"certificateSigningRequest": make_csr(claim.name)})
        )
        assert topic == CSR_TOPIC + "/accepted"
        token = json.loads(payload)["certificateOwnershipToken"]
        body = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "wild"}}
        topic, payload = device.request(REGISTER, json.dumps(body))
    finally:
        device.close()
    assert topic == REGISTER + "/accepted"


def test_cbor_over_mqtt(endpoint: Endpoint) -> None:
    claim = endpoint.pki.claim()
    device = RawDevice(endpoint.port, claim, endpoint.pki.ca_file)
    try:
        topic, payload = device.request("$aws/certificates/create/cbor", cbor2.dumps({}))
        assert topic == "$aws/certificates/create/cbor/accepted"
        created = cbor2.loads(payload)
        body = {
            "certificateOwnershipToken": created["certificateOwnershipToken"],
            "parameters": {"SerialNumber": "cbor"},
        }
        register = "$aws/provisioning-templates/edge-fleet/provision/cbor"
        topic, payload = device.request(register, cbor2.dumps(body))
        assert topic == register + "/accepted"
        assert cbor2.loads(payload) == {
            "deviceConfiguration": {"ntpServer": "pool.ntp.org"},
            "thingName": "edge-cbor",
        }
        topic, payload = device.request(register, b"\xa1\x61")
        assert topic == register + "/rejected"
        assert cbor2.loads(payload)["errorCode"] == "InvalidPayload"
    finally:
        device.close()


def test_bad_payloads_over_mqtt(endpoint: Endpoint) -> None:
    claim = endpoint.pki.claim()
    device = RawDevice(endpoint.port, claim, endpoint.pki.ca_file)
    try:
        for payload in (b"{nope", json.dumps({"certificateSigningRequest": "x" * 70000}).encode()):
            topic, answer = device.request(CSR_TOPIC, payload)
            assert topic == CSR_TOPIC + "/rejected"
            assert json.loads(answer)["errorCode"] == "InvalidPayload"
        # Beyond the plugin's limit (AWS's 128 KiB) the request never reaches the registry,
        # and the connection stays usable.
        device.client.publish(CSR_TOPIC, b"x" * 133000, 1)
        assert _drain(device, 0.5) == []
        topic, _ = device.request(CSR_TOPIC, b"[]")
        assert topic == CSR_TOPIC + "/rejected"
    finally:
        device.close()


def test_claim_clients_only_use_provisioning_topics(endpoint: Endpoint) -> None:
    listener = RawDevice(endpoint.port, endpoint.pki.claim(), endpoint.pki.ca_file)
    talker = RawDevice(endpoint.port, endpoint.pki.claim(), endpoint.pki.ca_file)
    try:
        listener.subscribe("chat/#", "edge-registry/#")
        talker.client.publish("chat/hello", b"hi", 1)
        talker.client.publish("edge-registry/reply", b"forged", 1)
        talker.client.publish("$aws/things/x/shadow/update", b"{}", 1)
        assert _drain(listener, 0.5) == []
    finally:
        listener.close()
        talker.close()


@pytest.mark.parametrize("password", [None, "guess"])
def test_a_claim_client_cannot_pose_as_the_registry(
    endpoint: Endpoint, password: str | None
) -> None:
    claim = endpoint.pki.claim()
    outcome: queue.Queue[object] = queue.Queue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="impostor", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set(
        ca_certs=str(endpoint.pki.ca_file), certfile=str(claim.cert), keyfile=str(claim.key)
    )
    client.username_pw_set("edge-registry", password)
    client.on_connect = lambda _c, _u, _f, reason, _p: outcome.put(reason)
    client.connect("127.0.0.1", endpoint.port)
    client.loop_start()
    try:
        reason = outcome.get(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()
    assert getattr(reason, "is_failure", False), reason


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_no_session_tickets_are_issued(endpoint: Endpoint, version: ssl.TLSVersion) -> None:
    claim = endpoint.pki.claim()
    context = ssl.create_default_context(cafile=str(endpoint.pki.ca_file))
    context.load_cert_chain(str(claim.cert), str(claim.key))
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        client_id = b"tickets"
        body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
        tls.sendall(bytes([0x10, len(body)]) + body)
        assert tls.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted: TLS 1.3 tickets came first
        assert tls.version() == {"TLSv1_3": "TLSv1.3", "TLSv1_2": "TLSv1.2"}[version.name]
        session = tls.session
        assert session is not None
        assert not session.has_ticket
        tls.sendall(b"\xe0\x00")
