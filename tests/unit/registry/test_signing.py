"""CSR checks and signing: accepted key types, every rejection, certificate ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.config import parse_config
from agent.registry.ca import CertificateAuthority, KeyType, cert_to_pem, generate_key
from agent.registry.errors import CsrError, ResourceRegistrationFailureError
from agent.registry.signing import (
    AllowedKeyType,
    CsrPolicy,
    CsrSigner,
    certificate_id,
    certificate_parameters,
)
from tests.helpers.registry import curve_csr, make_csr, tampered_csr, weak_rsa_csr


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_allowed_key_types_are_signed(ca: CertificateAuthority, key_type: KeyType) -> None:
    issued = CsrSigner(ca.registry()).sign(make_csr("device-1", key_type=key_type))
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    cert.verify_directly_issued_by(ca.device_issuer.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "device-1"
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    assert issued.certificate_id == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert len(issued.certificate_id) == 64


def test_certificate_parameters_come_from_the_subject(ca: CertificateAuthority) -> None:
    csr = make_csr(
        "device-7",
        extra=(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "Acme"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "Plant 3"),
            (NameOID.STATE_OR_PROVINCE_NAME, "Alsace"),
            (NameOID.SERIAL_NUMBER, "SN-99"),
            (NameOID.DN_QUALIFIER, "q1"),
        ),
    )
    issued = CsrSigner(ca.registry()).sign(csr)
    prefix = "AWS::IoT::Certificate::"
    assert issued.parameters == {
        prefix + "Id": issued.certificate_id,
        prefix + "CommonName": "device-7",
        prefix + "Country": "FR",
        prefix + "Organization": "Acme",
        prefix + "OrganizationalUnit": "Plant 3",
        prefix + "StateName": "Alsace",
        prefix + "SerialNumber": "SN-99",
        prefix + "DistinguishedNameQualifier": "q1",
    }
    assert certificate_parameters(issued.certificate) == issued.parameters
    assert certificate_id(issued.certificate) == issued.certificate_id


def rejection(signer: CsrSigner, csr: str) -> CsrError:
    with pytest.raises(CsrError) as caught:
        signer.sign(csr, path="Resources.certificate.Properties.CertificateSigningRequest")
    error = caught.value
    assert error.code == "InvalidRequestException"
    assert error.fields[0].path == "Resources.certificate.Properties.CertificateSigningRequest"
    return error


def test_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    assert rejection(CsrSigner(ca.registry()), tampered_csr()).reason == "CSR_SIGNATURE_INVALID"


def test_weak_rsa_key_is_refused(ca: CertificateAuthority) -> None:
    error = rejection(CsrSigner(ca.registry()), weak_rsa_csr(1024))
    assert error.reason == "KEY_TOO_WEAK"
    assert "1024" in error.message


def test_rsa_minimum_is_configurable(ca: CertificateAuthority) -> None:
    signer = CsrSigner(ca.registry(), CsrPolicy(min_rsa_bits=3072))
    assert rejection(signer, make_csr(key_type="rsa-2048")).reason == "KEY_TOO_WEAK"
    signer.sign(make_csr(key_type="rsa-3072"))


@pytest.mark.parametrize("curve", [ec.SECP521R1(), ec.SECP256K1(), ec.SECP224R1()])
def test_disallowed_curves_are_refused(ca: CertificateAuthority, curve: ec.EllipticCurve) -> None:
    assert rejection(CsrSigner(ca.registry()), curve_csr(curve)).reason == "KEY_TYPE_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("allowed", "key_type"),
    [
        (("ec-p256",), "ed25519"),
        (("ec-p256",), "rsa-2048"),
        (("ec-p256",), "ec-p384"),
        (("rsa",), "ec-p256"),
    ],
)
def test_key_types_outside_the_policy_are_refused(
    ca: CertificateAuthority, allowed: tuple[AllowedKeyType, ...], key_type: KeyType
) -> None:
    policy = CsrPolicy(allowed_key_types=allowed)
    error = rejection(CsrSigner(ca.registry(), policy), make_csr(key_type=key_type))
    assert error.reason == "KEY_TYPE_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("common_name", "extra"),
    [
        ("", ((NameOID.COUNTRY_NAME, "DE"),)),
        ("bad name with spaces", ()),
        ("semi;colon", ()),
        ("ok", ((NameOID.EMAIL_ADDRESS, "a@example.com"),)),
        ("ok", ((NameOID.COMMON_NAME, "other"),)),
    ],
    ids=["no-cn", "cn-pattern", "cn-character", "email-attribute", "two-cns"],
)
def test_subject_rules(
    ca: CertificateAuthority, common_name: str, extra: tuple[tuple[x509.ObjectIdentifier, str]]
) -> None:
    error = rejection(CsrSigner(ca.registry()), make_csr(common_name, extra=extra))
    assert error.reason == "SUBJECT_INVALID"


def test_common_name_pattern_is_configurable(ca: CertificateAuthority) -> None:
    signer = CsrSigner(ca.registry(), CsrPolicy(common_name_pattern="edge-[0-9]+"))
    signer.sign(make_csr("edge-12"))
    assert rejection(signer, make_csr("device-12")).reason == "SUBJECT_INVALID"


@pytest.mark.parametrize(
    "text",
    [
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "A" * 5000,
    ],
)
def test_garbage_is_refused(ca: CertificateAuthority, text: str) -> None:
    assert rejection(CsrSigner(ca.registry()), text).reason == "CSR_INVALID"


def test_certificate_pem_must_come_from_the_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    signer = CsrSigner(ca.registry())
    mine = signer.sign(make_csr())
    assert signer.verify_issued(mine.certificate_pem, path="p").certificate_id == (
        mine.certificate_id
    )
    theirs = CsrSigner(other_ca.registry()).sign(make_csr())
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        signer.verify_issued(theirs.certificate_pem, path="p")
    assert caught.value.reason == "CERTIFICATE_NOT_TRUSTED"
    with pytest.raises(ResourceRegistrationFailureError) as caught:
        signer.verify_issued("garbage", path="p")
    assert caught.value.reason == "CERTIFICATE_INVALID"
    assert caught.value.fields[0].path == "p"


def test_policy_from_config(ca: CertificateAuthority, tmp_path: Path) -> None:
    config = parse_config(
        "[registry]\n"
        'allowed_key_types = ["ec-p384"]\n'
        "min_rsa_bits = 4096\n"
        'common_name_pattern = "dev-[a-z]+"\n'
        "certificate_lifetime_days = 30\n"
    )
    policy = CsrPolicy.from_config(config.registry)
    assert policy.allowed_key_types == ("ec-p384",)
    assert policy.min_rsa_bits == 4096
    issued = CsrSigner(ca.registry(), policy).sign(make_csr("dev-abc", key_type="ec-p384"))
    lifetime = issued.certificate.not_valid_after_utc - issued.certificate.not_valid_before_utc
    assert lifetime.days == 30
    del tmp_path


def test_unknown_key_type_in_config_is_refused() -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config('[registry]\nallowed_key_types = ["dsa"]\n')
    assert caught.value.fields[0].path == "registry.allowed_key_types[0]"


def test_issued_pem_round_trips(ca: CertificateAuthority) -> None:
    issued = CsrSigner(ca.registry()).sign(make_csr(key=generate_key("ec-p256")))
    assert cert_to_pem(issued.certificate).decode() == issued.certificate_pem


def test_bad_common_name_pattern_is_a_config_error() -> None:
    from agent.errors import ConfigError

    config = parse_config('[registry]\ncommon_name_pattern = "(unclosed"\n')
    with pytest.raises(ConfigError) as caught:
        CsrPolicy.from_config(config.registry)
    assert caught.value.fields[0].path == "registry.common_name_pattern"
