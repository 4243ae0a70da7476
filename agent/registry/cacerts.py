"""Further CA certificates for ``CertificatePem`` (AWS RegisterCACertificate semantics).

A factory with its own CA registers it once (``edge-agent ca register``); from then on a
template's ``CertificatePem`` may be a certificate that CA issued (and ``CACertificatePem``
may name it). As with AWS IoT, the operator proves possession of the CA's key with a
*verification certificate*: a certificate signed by the CA's key whose subject CN is the
registry's registration code (``edge-agent ca registration-code``).

Registered CAs live in ``<ca_dir>/registered-cas/<certificateId>.pem`` (``.inactive.pem`` when
registered with ``--inactive``); :func:`load_registered_cas` returns the active ones.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.errors import FieldProblem, InvalidRequestError, ResourceAlreadyExistsError
from agent.fsutil import PUBLIC_FILE, atomic_write, ensure_dir

REGISTERED_DIR = "registered-cas"
REGISTRATION_CODE = "registration-code"
CA_PEM_MAX = 65536


@dataclass(frozen=True, slots=True)
class RegisteredCa:
    """The RegisterCACertificate response."""

    certificate_id: str
    certificate_arn: str
    status: str

    def to_json(self) -> dict[str, str]:
        """``{certificateArn, certificateId, status}``."""
        return {
            "certificateArn": self.certificate_arn,
            "certificateId": self.certificate_id,
            "status": self.status,
        }


def registration_code(directory: Path) -> str:
    """The registry's registration code (64 hex), made on first use (GetRegistrationCode)."""
    path = directory / REGISTRATION_CODE
    if path.exists():
        return path.read_text("ascii").strip()
    ensure_dir(directory)
    code = secrets.token_hex(32)
    atomic_write(path, (code + "\n").encode("ascii"), PUBLIC_FILE)
    return code


def load_registered_cas(directory: Path) -> tuple[x509.Certificate, ...]:
    """The active registered CA certificates of ``directory`` (none when there are none)."""
    folder = directory / REGISTERED_DIR
    if not folder.is_dir():
        return ()
    return tuple(
        x509.load_pem_x509_certificate(path.read_bytes())
        for path in sorted(folder.glob("*.pem"))
        if not path.name.endswith(".inactive.pem")
    )


def _bad(field: str, message: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(message, reason=reason, fields=[FieldProblem(field, message)])


def _load(pem: str, field: str) -> x509.Certificate:
    if not 1 <= len(pem) <= CA_PEM_MAX:
        raise _bad(field, f"must be 1 to {CA_PEM_MAX} characters", "CERTIFICATE_INVALID")
    try:
        return x509.load_pem_x509_certificate(pem.encode("utf-8"))
    except ValueError:
        raise _bad(field, "is not a PEM X.509 certificate", "CERTIFICATE_INVALID") from None


def register_ca_certificate(
    directory: Path,
    ca_certificate: str,
    verification_certificate: str,
    *,
    region: str,
    account: str,
    set_as_active: bool = True,
    now: dt.datetime | None = None,
) -> RegisteredCa:
    """Register a CA certificate whose certificates ``CertificatePem`` may then carry.

    Args:
        directory: the registry's CA directory (``registry.ca_dir``).
        ca_certificate: the CA certificate (PEM): a CA, inside its validity window.
        verification_certificate: a certificate signed by the CA's key whose subject CN is
            :func:`registration_code`.
        region: for the ARN.
        account: for the ARN.
        set_as_active: register as ACTIVE (default) or INACTIVE.
        now: the time to check validity at (default: now).

    Raises:
        InvalidRequestError: ``CERTIFICATE_INVALID``, ``CA_CERTIFICATE_NOT_A_CA``,
            ``CERTIFICATE_EXPIRED`` or ``REGISTRATION_CODE_INVALID``.
        ResourceAlreadyExistsError: ``CA_ALREADY_REGISTERED``.
    """
    at = now or dt.datetime.now(dt.UTC)
    ca = _load(ca_certificate, "caCertificate")
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise _bad("caCertificate", "is not a CA certificate", "CA_CERTIFICATE_NOT_A_CA")
    if not ca.not_valid_before_utc <= at <= ca.not_valid_after_utc:
        raise _bad("caCertificate", "is outside its validity window", "CERTIFICATE_EXPIRED")
    proof = _load(verification_certificate, "verificationCertificate")
    code = registration_code(directory)
    common_names = [a.value for a in proof.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        proof.verify_directly_issued_by(ca)
        signed = True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        signed = False
    if not signed or common_names != [code]:
        raise _bad(
            "verificationCertificate",
            "must be signed by the CA's key and have the registration code as its CN",
            "REGISTRATION_CODE_INVALID",
        )
    certificate_id = ca.fingerprint(hashes.SHA256()).hex()
    folder = ensure_dir(directory / REGISTERED_DIR)
    if any(folder.glob(f"{certificate_id}*.pem")):
        raise ResourceAlreadyExistsError(
            f"the CA certificate {certificate_id[:16]}... is already registered",
            reason="CA_ALREADY_REGISTERED",
        )
    status = "ACTIVE" if set_as_active else "INACTIVE"
    name = f"{certificate_id}.pem" if set_as_active else f"{certificate_id}.inactive.pem"
    atomic_write(folder / name, ca_certificate.encode("utf-8"), PUBLIC_FILE)
    return RegisteredCa(
        certificate_id, f"arn:aws:iot:{region}:{account}:cacert/{certificate_id}", status
    )
