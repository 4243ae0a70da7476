"""What RegisterThing trusts: CertificatePem rules, registered CAs, pseudo-parameters."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import InvalidRequestError, ResourceAlreadyExistsError
from agent.registry.ca import (
    REGISTRY_FILES,
    CertificateAuthority,
    Issuer,
    cert_to_pem,
    generate_key,
    init_ca,
    load_device_issuer,
    signature_hash,
)
from agent.registry.cacerts import register_ca_certificate, registration_code
from agent.registry.errors import ParameterError, ResourceRegistrationFailureError
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.registry import make_csr

PEM_TEMPLATE = {
    "Parameters": {"Pem": {"Type": "String"}},
    "Resources": {
        "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": {"Ref": "Pem"}}}
    },
}


def _leaf(
    issuer: Issuer,
    *,
    start: dt.timedelta = dt.timedelta(hours=-1),
    lifetime: dt.timedelta = dt.timedelta(days=1),
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> str:
    cert = issuer.issue(
        common_name="pem-device",
        public_key=generate_key().public_key(),
        not_before=dt.datetime.now(dt.UTC).replace(microsecond=0) + start,
        lifetime=lifetime,
        eku=eku,
    )
    return cert_to_pem(cert).decode()


def _refused(registry: Registry, pem: str) -> str:
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(PEM_TEMPLATE, {"Pem": pem})
    assert caught.value.fields[0].path == "Resources.cert.Properties.CertificatePem"
    return caught.value.reason


def test_a_device_certificate_inside_its_window_is_accepted(
    registry: Registry, ca: CertificateAuthority
) -> None:
    result = registry.register_thing(PEM_TEMPLATE, {"Pem": _leaf(ca.device_issuer)})
    assert result.certificate_id is not None


@pytest.mark.parametrize(
    ("start", "lifetime", "reason"),
    [
        (dt.timedelta(days=-3), dt.timedelta(days=1), "CERTIFICATE_EXPIRED"),
        (dt.timedelta(days=1), dt.timedelta(days=1), "CERTIFICATE_NOT_YET_VALID"),
    ],
)
def test_certificate_pem_outside_its_window_is_refused(
    registry: Registry,
    ca: CertificateAuthority,
    start: dt.timedelta,
    lifetime: dt.timedelta,
    reason: str,
) -> None:
    assert _refused(registry, _leaf(ca.device_issuer, start=start, lifetime=lifetime)) == reason


def test_certificate_pem_without_client_auth_is_refused(
    registry: Registry, ca: CertificateAuthority
) -> None:
    pem = _leaf(ca.device_issuer, eku=ExtendedKeyUsageOID.SERVER_AUTH)
    assert _refused(registry, pem) == "CERTIFICATE_PURPOSE_INVALID"


@pytest.mark.parametrize("which", ["signer", "root", "device-issuer", "claim-issuer"])
def test_certificate_pem_is_never_the_signer_or_a_ca(
    registry: Registry, storage: SqliteRegistryStorage, ca: CertificateAuthority, which: str
) -> None:
    cert = {
        "signer": ca.signer_cert,
        "root": ca.root_cert,
        "device-issuer": ca.device_issuer.cert,
        "claim-issuer": ca.claim_issuer.cert,
    }[which]
    assert _refused(registry, cert_to_pem(cert).decode()) == "CERTIFICATE_PURPOSE_INVALID"
    assert storage.count_things() == 0


def test_a_claim_certificate_is_not_a_device_certificate(
    registry: Registry, ca: CertificateAuthority
) -> None:
    # Issued by the claim issuer (same root, clientAuth), not by an accepted CA.
    assert _refused(registry, _leaf(ca.claim_issuer)) == "CERTIFICATE_NOT_TRUSTED"


# --- registered CAs (RegisterCACertificate) --------------------------------------------


def _verification(ca_issuer: Issuer, code: str) -> str:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca_issuer.cert.subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_issuer.key, signature_hash(ca_issuer.key))
    )
    return cert_to_pem(cert).decode()


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A registry host's CA directory: the registry's files only."""
    path = tmp_path / "registry-ca"
    path.mkdir(mode=0o700)
    source = tmp_path / "pki"
    init_ca(source)
    for name in REGISTRY_FILES:
        (path / name).write_bytes((source / name).read_bytes())
    return path


def test_a_registered_factory_ca_is_accepted_for_certificate_pem(
    registry_dir: Path, storage: SqliteRegistryStorage, tmp_path: Path
) -> None:
    factory = init_ca(tmp_path / "factory-own")  # a factory's own CA hierarchy
    pem = _leaf(factory.device_issuer)
    before = Registry(storage, load_device_issuer(registry_dir), region="r", account="1")
    assert _refused(before, pem) == "CERTIFICATE_NOT_TRUSTED"

    code = registration_code(registry_dir)
    assert registration_code(registry_dir) == code
    assert len(code) == 64
    registered = register_ca_certificate(
        registry_dir,
        cert_to_pem(factory.device_issuer.cert).decode(),
        _verification(factory.device_issuer, code),
        region="eu-west-1",
        account="111122223333",
    )
    assert registered.status == "ACTIVE"
    assert registered.certificate_arn.startswith("arn:aws:iot:eu-west-1:111122223333:cacert/")
    after = Registry(storage, load_device_issuer(registry_dir), region="r", account="1")
    result = after.register_thing(PEM_TEMPLATE, {"Pem": pem})
    assert result.certificate_id is not None
    # CACertificatePem may now name it; an unregistered CA is still refused.
    with_ca = {
        "Parameters": {"Pem": {"Type": "String"}, "Ca": {"Type": "String"}},
        "Resources": {
            "cert": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificatePem": {"Ref": "Pem"}, "CACertificatePem": {"Ref": "Ca"}},
            }
        },
    }
    ok = cert_to_pem(factory.device_issuer.cert).decode()
    assert after.register_thing(with_ca, {"Pem": pem, "Ca": ok}).certificate_id is not None
    wrong = cert_to_pem(factory.claim_issuer.cert).decode()
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        after.register_thing(with_ca, {"Pem": pem, "Ca": wrong})
    assert caught.value.reason == "CA_CERTIFICATE_NOT_REGISTERED"
    with pytest.raises(ResourceAlreadyExistsError) as again:
        register_ca_certificate(
            registry_dir, ok, _verification(factory.device_issuer, code), region="r", account="1"
        )
    assert again.value.reason == "CA_ALREADY_REGISTERED"


def test_an_inactive_ca_is_not_accepted(
    registry_dir: Path, storage: SqliteRegistryStorage, tmp_path: Path
) -> None:
    factory = init_ca(tmp_path / "factory-own")
    code = registration_code(registry_dir)
    register_ca_certificate(
        registry_dir,
        cert_to_pem(factory.device_issuer.cert).decode(),
        _verification(factory.device_issuer, code),
        region="r",
        account="1",
        set_as_active=False,
    )
    registry = Registry(storage, load_device_issuer(registry_dir), region="r", account="1")
    assert _refused(registry, _leaf(factory.device_issuer)) == "CERTIFICATE_NOT_TRUSTED"


@pytest.mark.parametrize("problem", ["wrong-code", "wrong-key", "not-a-ca", "garbage"])
def test_registration_needs_proof_of_possession_and_a_ca(
    registry_dir: Path, tmp_path: Path, problem: str
) -> None:
    factory = init_ca(tmp_path / "factory-own")
    code = registration_code(registry_dir)
    ca_pem = cert_to_pem(factory.device_issuer.cert).decode()
    proof = _verification(factory.device_issuer, code)
    if problem == "wrong-code":
        proof = _verification(factory.device_issuer, "0" * 64)
    elif problem == "wrong-key":
        proof = _verification(factory.claim_issuer, code)
    elif problem == "not-a-ca":
        ca_pem = cert_to_pem(factory.signer_cert).decode()
    else:
        ca_pem = "garbage"
    with pytest.raises(InvalidRequestError) as caught:
        register_ca_certificate(registry_dir, ca_pem, proof, region="r", account="1")
    assert (
        caught.value.reason
        == {
            "wrong-code": "REGISTRATION_CODE_INVALID",
            "wrong-key": "REGISTRATION_CODE_INVALID",
            "not-a-ca": "CA_CERTIFICATE_NOT_A_CA",
            "garbage": "CERTIFICATE_INVALID",
        }[problem]
    )
    assert not (registry_dir / "registered-cas").exists() or not list(
        (registry_dir / "registered-cas").iterdir()
    )


# --- certificate pseudo-parameters come only from the certificate ----------------------

COUNTRY_TEMPLATE = {
    "Parameters": {"CSR": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": "t-1",
                "AttributePayload": {"country": {"Ref": "AWS::IoT::Certificate::Country"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
        },
    },
}


def test_caller_certificate_parameters_are_refused(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    csr = make_csr("no-country", extra=())
    with pytest.raises(ParameterError) as caught:
        registry.register_thing(
            COUNTRY_TEMPLATE, {"CSR": csr, "AWS::IoT::Certificate::Country": "XX"}
        )
    assert caught.value.reason == "CERTIFICATE_PARAMETER_NOT_ALLOWED"
    assert caught.value.fields[0].path == "parameters.AWS::IoT::Certificate::Country"
    assert storage.count_things() == 0


def test_a_referenced_field_missing_from_the_certificate_is_the_documented_error(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(COUNTRY_TEMPLATE, {"CSR": make_csr("no-country", extra=())})
    assert caught.value.reason == "CERTIFICATE_FIELD_MISSING"
    assert caught.value.fields[0].path == "Parameters.AWS::IoT::Certificate::Country"
    assert storage.count_things() == 0
    result = registry.register_thing(COUNTRY_TEMPLATE, {"CSR": make_csr("with-country")})
    thing = storage.get_thing("t-1")
    assert thing is not None
    assert thing.attributes == {"country": "DE"}
    assert result.certificate_id is not None


def test_a_template_default_cannot_stand_in_for_the_certificate(
    registry: Registry, storage: SqliteRegistryStorage
) -> None:
    template = {
        **COUNTRY_TEMPLATE,
        "Parameters": {
            "CSR": {"Type": "String"},
            "AWS::IoT::Certificate::Country": {"Type": "String", "Default": "XX"},
        },
    }
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        registry.register_thing(template, {"CSR": make_csr("no-country", extra=())})
    assert caught.value.reason == "CERTIFICATE_FIELD_MISSING"
    assert storage.count_things() == 0
