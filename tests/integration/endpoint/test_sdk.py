"""The AWS IoT Device SDK v2 for Python provisions through ``registry serve`` unchanged."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers.endpoint import Claim
from tests.helpers.registry import make_csr
from tests.helpers.sdk_device import provision_v5, provision_v311, sdk_client_id
from tests.integration.endpoint.conftest import Endpoint

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _check_issued(endpoint: Endpoint, claim: Claim, serial: str, got: object) -> None:
    from tests.helpers.sdk_device import Provisioned

    assert isinstance(got, Provisioned)
    cert = x509.load_pem_x509_certificate(got.certificate_pem.encode())
    cert.verify_directly_issued_by(endpoint.pki.ca.device_issuer.cert)
    assert got.thing_name == f"edge-{serial}"
    assert got.device_configuration == {"ntpServer": "pool.ntp.org"}
    with endpoint.storage() as storage:
        thing = storage.get_thing(got.thing_name)
        assert thing is not None
        assert thing.attributes == {"site": "lab", "serial": serial}
        assert storage.thing_principals(got.thing_name) == (got.certificate_id,)
        record = storage.get_certificate(got.certificate_id)
        assert record is not None
        assert record.status == "ACTIVE"
    assert len(got.token) >= 32
    del claim


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_create_certificate_from_csr_then_register_thing(endpoint: Endpoint, version: str) -> None:
    claim = endpoint.pki.claim()
    from agent.registry.ca import generate_key

    key = generate_key("ec-p256")
    csr = make_csr(claim.name, key=key)
    serial = f"csr{version.replace('.', '')}"
    provision = provision_v311 if version == "3.1.1" else provision_v5
    got = provision(
        endpoint.port,
        claim,
        str(endpoint.pki.ca_file),
        template="edge-fleet",
        parameters={"SerialNumber": serial},
        csr=csr,
        method="csr",
    )
    _check_issued(endpoint, claim, serial, got)
    cert = x509.load_pem_x509_certificate(got.certificate_pem.encode())
    assert cert.public_key() == key.public_key()
    assert got.private_key is None


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_create_keys_and_certificate_then_register_thing(endpoint: Endpoint, version: str) -> None:
    claim = endpoint.pki.claim()
    serial = f"keys{version.replace('.', '')}"
    provision = provision_v311 if version == "3.1.1" else provision_v5
    got = provision(
        endpoint.port,
        claim,
        str(endpoint.pki.ca_file),
        template="edge-fleet",
        parameters={"SerialNumber": serial},
        method="keys",
    )
    _check_issued(endpoint, claim, serial, got)
    assert got.private_key is not None
    key = serialization.load_pem_private_key(got.private_key.encode(), password=None)
    cert = x509.load_pem_x509_certificate(got.certificate_pem.encode())
    assert cert.public_key() == key.public_key()


def test_sdk_client_ids_are_long_and_accepted(endpoint: Endpoint) -> None:
    client_id = sdk_client_id()
    assert 37 <= len(client_id) <= 41
    claim = endpoint.pki.claim()
    got = provision_v5(
        endpoint.port,
        claim,
        str(endpoint.pki.ca_file),
        template="edge-fleet",
        parameters={"SerialNumber": "longid"},
        csr=make_csr(claim.name),
        client_id=client_id,
    )
    assert got.thing_name == "edge-longid"
