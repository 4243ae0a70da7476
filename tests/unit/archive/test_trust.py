"""The archive's trust boundary: chain purposes, the device-name binding, name limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.archive.clock import FixedClock
from agent.archive.make import DeviceRequest, build_archive, write_archive
from agent.archive.manifest import device_name_uri
from agent.archive.verify import Policy, verify_archive
from agent.errors import SignatureError, ValidationError
from agent.registry.ca import CertificateAuthority, Issuer, cert_to_pem, generate_key
from tests.helpers.forge import NOW, Forge


def _intermediate(ca: CertificateAuthority, usage: x509.ObjectIdentifier) -> Issuer:
    key = generate_key()
    return Issuer(ca.root.issue_ca(common_name="restricted", key=key, now=NOW, eku=usage), key)


def _signed_by(forge: Forge, inter: Issuer) -> Forge:
    key = generate_key()
    signer = inter.issue(
        common_name="signer",
        public_key=key.public_key(),
        not_before=NOW - dt.timedelta(days=1),
        lifetime=dt.timedelta(days=30),
        eku=ExtendedKeyUsageOID.CODE_SIGNING,
    )
    return forge.but(signer_pem=cert_to_pem(signer) + cert_to_pem(inter.cert), signer_key=key)


def test_signer_under_a_code_signing_intermediate_is_accepted(
    forge: Forge, ca: CertificateAuthority, policy: Policy, clock: FixedClock, tmp_path: Path
) -> None:
    inter = _intermediate(ca, ExtendedKeyUsageOID.CODE_SIGNING)
    path = _signed_by(forge, inter).write(tmp_path)
    assert verify_archive(path, policy, clock).manifest.device_name == "dev-1"


def test_signer_under_a_client_auth_intermediate_is_refused(
    forge: Forge, ca: CertificateAuthority, policy: Policy, clock: FixedClock, tmp_path: Path
) -> None:
    inter = _intermediate(ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    path = _signed_by(forge, inter).write(tmp_path)
    with pytest.raises(SignatureError) as caught:
        verify_archive(path, policy, clock)
    assert caught.value.reason == "SIGNER_UNTRUSTED"


def test_the_claim_issuer_cannot_sign_archives(
    forge: Forge, ca: CertificateAuthority, policy: Policy, clock: FixedClock, tmp_path: Path
) -> None:
    # The claim issuer is restricted to clientAuth: a signer it issues is refused.
    path = _signed_by(forge, ca.claim_issuer).write(tmp_path)
    with pytest.raises(SignatureError) as caught:
        verify_archive(path, policy, clock)
    assert caught.value.reason == "SIGNER_UNTRUSTED"


@pytest.mark.parametrize("length", [1, 63, 64, 65, 128, 200, 233])
def test_every_name_that_fits_a_file_name_works_end_to_end(
    ca: CertificateAuthority, policy: Policy, tmp_path: Path, length: int
) -> None:
    name = ("n-" * 200)[: length - 1] + "z"
    request = DeviceRequest(name=name, not_before=NOW)
    path = write_archive(build_archive(ca.factory(), request), tmp_path)
    assert len(path.name.encode()) <= 255
    verified = verify_archive(path, policy, FixedClock(NOW + dt.timedelta(seconds=5)))
    assert verified.manifest.device_name == name
    cert = verified.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [device_name_uri(name)]
    common_names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert common_names == ([name] if length <= 64 else [])


@pytest.mark.parametrize("length", [234, 255])
def test_a_name_too_long_for_the_file_name_is_refused_with_its_reason(
    ca: CertificateAuthority, tmp_path: Path, length: int
) -> None:
    with pytest.raises(ValidationError) as caught:
        build_archive(ca.factory(), DeviceRequest(name="a" * length))
    assert caught.value.reason == "ARCHIVE_FILE_NAME_TOO_LONG"
    assert caught.value.code == "ValidationException"
    assert [f.path for f in caught.value.fields] == ["Name"]
    assert not list(tmp_path.iterdir())
