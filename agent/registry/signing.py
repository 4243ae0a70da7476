"""CSR signing with the device issuer, and certificate facts for templates.

A CSR is accepted only when its self-signature verifies, its key type and size are allowed
(:class:`CsrPolicy`, from the ``[registry]`` config section) and its subject follows the
rules: a common name matching ``common_name_pattern``, only well-known attribute types, each
at most once, and a two-letter country. The issued certificate keeps the CSR's subject; its
id is the 64-hex SHA-256 fingerprint of its DER encoding.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.chains import CLIENT_AUTH, ChainError, verify_chain
from agent.config import RegistrySection
from agent.errors import ConfigError, FieldProblem
from agent.registry.ca import DeviceIssuer, cert_to_pem
from agent.registry.errors import CsrError, ResourceRegistrationFailureError
from agent.registry.template import CERTIFICATE_PREFIX

AllowedKeyType = Literal["ec-p256", "ec-p384", "rsa", "ed25519"]
CSR_MAX = 4096

#: Subject attributes a CSR may carry, with the pseudo-parameter each one fills.
SUBJECT_FIELDS: dict[x509.ObjectIdentifier, str] = {
    NameOID.COMMON_NAME: "CommonName",
    NameOID.COUNTRY_NAME: "Country",
    NameOID.ORGANIZATION_NAME: "Organization",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OrganizationalUnit",
    NameOID.DN_QUALIFIER: "DistinguishedNameQualifier",
    NameOID.STATE_OR_PROVINCE_NAME: "StateName",
    NameOID.SERIAL_NUMBER: "SerialNumber",
    NameOID.LOCALITY_NAME: "Locality",
}


@dataclass(frozen=True, slots=True)
class CsrPolicy:
    """Which CSRs the registry signs."""

    allowed_key_types: tuple[AllowedKeyType, ...] = ("ec-p256", "ec-p384", "rsa", "ed25519")
    min_rsa_bits: int = 2048
    common_name_pattern: str = "[A-Za-z0-9:_.-]{1,64}"
    lifetime: dt.timedelta = field(default_factory=lambda: dt.timedelta(days=365))

    @classmethod
    def from_config(cls, section: RegistrySection) -> CsrPolicy:
        """The policy from the ``[registry]`` section.

        Raises:
            ConfigError: ``common_name_pattern`` is not a regular expression.
        """
        try:
            re.compile(section.common_name_pattern)
        except re.error as exc:
            raise ConfigError(
                f"registry.common_name_pattern is not a regular expression: {exc}",
                fields=[FieldProblem("registry.common_name_pattern", str(exc))],
            ) from None
        return cls(
            allowed_key_types=section.allowed_key_types,
            min_rsa_bits=section.min_rsa_bits,
            common_name_pattern=section.common_name_pattern,
            lifetime=dt.timedelta(days=section.certificate_lifetime_days),
        )


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate with its id and the pseudo-parameters templates can read from it."""

    certificate_id: str
    certificate_pem: str
    certificate: x509.Certificate
    parameters: dict[str, str]


def certificate_id(cert: x509.Certificate) -> str:
    """The registry's certificate id: SHA-256 fingerprint of the DER encoding, 64 hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def certificate_parameters(cert: x509.Certificate) -> dict[str, str]:
    """``AWS::IoT::Certificate::*`` pseudo-parameters from a certificate (Id and subject)."""
    params = {CERTIFICATE_PREFIX + "Id": certificate_id(cert)}
    for attribute in cert.subject:
        name = SUBJECT_FIELDS.get(attribute.oid)
        if name is not None and isinstance(attribute.value, str):
            params.setdefault(CERTIFICATE_PREFIX + name, attribute.value)
    return params


def describe_certificate(cert: x509.Certificate) -> IssuedCertificate:
    """Wrap a certificate with its id, PEM and pseudo-parameters."""
    return IssuedCertificate(
        certificate_id(cert), cert_to_pem(cert).decode("ascii"), cert, certificate_parameters(cert)
    )


_DESCRIBED: dict[str, IssuedCertificate] = {}
_DESCRIBED_MAX = 4096


def _remember(issued: IssuedCertificate) -> IssuedCertificate:
    if len(_DESCRIBED) >= _DESCRIBED_MAX:
        _DESCRIBED.clear()
    _DESCRIBED[issued.certificate_pem] = issued
    return issued


def describe_certificate_pem(certificate_pem: str) -> IssuedCertificate:
    """:func:`describe_certificate` of a stored PEM, remembered for the PEMs seen recently.

    A certificate issued here is described again at RegisterThing (the device names it by
    its ownership token); the PEM determines everything described, so it is the key.

    Raises:
        ValueError: not a PEM certificate.
    """
    found = _DESCRIBED.get(certificate_pem)
    if found is None:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        found = _remember(describe_certificate(cert))
    return found


def _csr_problem(message: str, reason: str, path: str) -> CsrError:
    return CsrError(message, reason=reason, fields=[FieldProblem(path, message)])


def _key_type(key: object, policy: CsrPolicy, path: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
        if kind is None or kind not in policy.allowed_key_types:
            raise _csr_problem(
                f"the CSR's EC curve {key.curve.name} is not allowed",
                "KEY_TYPE_NOT_ALLOWED",
                path,
            )
        return
    if isinstance(key, rsa.RSAPublicKey):
        if "rsa" not in policy.allowed_key_types:
            raise _csr_problem("RSA keys are not allowed", "KEY_TYPE_NOT_ALLOWED", path)
        if key.key_size < policy.min_rsa_bits:
            raise _csr_problem(
                f"the CSR's RSA key has {key.key_size} bits; at least "
                f"{policy.min_rsa_bits} are required",
                "KEY_TOO_WEAK",
                path,
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        if "ed25519" not in policy.allowed_key_types:
            raise _csr_problem("Ed25519 keys are not allowed", "KEY_TYPE_NOT_ALLOWED", path)
        return
    raise _csr_problem("the CSR's key type is not supported", "KEY_TYPE_NOT_ALLOWED", path)


def _subject(name: x509.Name, policy: CsrPolicy, path: str) -> None:
    seen: set[x509.ObjectIdentifier] = set()
    for attribute in name:
        if attribute.oid not in SUBJECT_FIELDS:
            raise _csr_problem(
                f"the CSR's subject has a disallowed attribute {attribute.oid.dotted_string}",
                "SUBJECT_INVALID",
                path,
            )
        if attribute.oid in seen:
            raise _csr_problem(
                f"the CSR's subject repeats {SUBJECT_FIELDS[attribute.oid]}",
                "SUBJECT_INVALID",
                path,
            )
        seen.add(attribute.oid)
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names:
        raise _csr_problem("the CSR's subject has no common name", "SUBJECT_INVALID", path)
    common_name = common_names[0].value
    if not isinstance(common_name, str) or not re.fullmatch(
        policy.common_name_pattern, common_name
    ):
        raise _csr_problem(
            f"the CSR's common name does not match {policy.common_name_pattern}",
            "SUBJECT_INVALID",
            path,
        )


def load_csr(
    csr_pem: str, policy: CsrPolicy, *, path: str = "certificateSigningRequest"
) -> x509.CertificateSigningRequest:
    """Decode a PEM CSR and check it against ``policy``.

    Args:
        csr_pem: the CSR in PEM (at most 4096 characters).
        policy: allowed key types and subject rules.
        path: the field path reported with any problem.

    Raises:
        CsrError: ``CSR_INVALID``, ``CSR_SIGNATURE_INVALID``, ``KEY_TYPE_NOT_ALLOWED``,
            ``KEY_TOO_WEAK`` or ``SUBJECT_INVALID``.
    """
    if len(csr_pem) > CSR_MAX:
        raise _csr_problem(f"the CSR is longer than {CSR_MAX} characters", "CSR_INVALID", path)
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8"))
    except ValueError:
        raise _csr_problem(
            "the CSR is not a PEM certificate signing request", "CSR_INVALID", path
        ) from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise _csr_problem("the CSR's signature does not verify", "CSR_SIGNATURE_INVALID", path)
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _csr_problem(
            "the CSR's public key is not supported", "KEY_TYPE_NOT_ALLOWED", path
        ) from None
    _key_type(key, policy, path)
    _subject(csr.subject, policy, path)
    return csr


class CsrSigner:
    """Signs accepted CSRs with the device issuer's key (never the root's)."""

    def __init__(self, keys: DeviceIssuer, policy: CsrPolicy | None = None) -> None:
        self.keys = keys
        self.policy = policy or CsrPolicy()

    def sign(
        self,
        csr_pem: str,
        *,
        now: dt.datetime | None = None,
        path: str = "certificateSigningRequest",
    ) -> IssuedCertificate:
        """Check and sign a CSR.

        Args:
            csr_pem: the CSR in PEM.
            now: the issue time (default: the current time).
            path: the field path reported with any problem.

        Raises:
            CsrError: the CSR was refused (see :func:`load_csr`).
        """
        csr = load_csr(csr_pem, self.policy, path=path)
        key = csr.public_key()
        assert isinstance(  # noqa: S101 - load_csr allows only these key types
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        )
        issued_at = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        common_name = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        extra = tuple(
            x509.NameAttribute(a.oid, str(a.value))
            for a in csr.subject
            if a.oid != NameOID.COMMON_NAME
        )
        cert = self.keys.issuer.issue(
            common_name=str(common_name),
            public_key=key,
            not_before=issued_at - dt.timedelta(minutes=5),
            lifetime=self.policy.lifetime,
            extra_subject=extra,
        )
        return _remember(describe_certificate(cert))

    def verify_issued(
        self,
        certificate_pem: str,
        *,
        path: str,
        now: dt.datetime | None = None,
        ca_certificate: x509.Certificate | None = None,
    ) -> IssuedCertificate:
        """Accept a device certificate in PEM only if an accepted CA issued it for clientAuth.

        The certificate must be inside its validity window at ``now``, carry the
        ``clientAuth`` extended key usage, not be a CA, and chain to ``ca_certificate``
        (when given) or to one of :attr:`DeviceIssuer.accepted_cas`: the device issuer and
        the CA certificates registered with ``edge-agent ca register``. The archive signer
        (``codeSigning``) and every CA certificate are refused.

        Raises:
            ResourceRegistrationFailureError: ``CERTIFICATE_INVALID``, ``CERTIFICATE_EXPIRED``,
                ``CERTIFICATE_NOT_YET_VALID``, ``CERTIFICATE_PURPOSE_INVALID`` or
                ``CERTIFICATE_NOT_TRUSTED``.
        """
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem.encode("utf-8"))
        except ValueError:
            raise _pem_problem(
                path,
                "the certificate is not a PEM X.509 certificate",
                "CERTIFICATE_INVALID",
                "not a PEM certificate",
            ) from None
        at = now or dt.datetime.now(dt.UTC)
        if at < cert.not_valid_before_utc:
            raise _pem_problem(
                path,
                "the certificate is not valid yet",
                "CERTIFICATE_NOT_YET_VALID",
                "not valid yet",
            )
        if at > cert.not_valid_after_utc:
            raise _pem_problem(
                path, "the certificate has expired", "CERTIFICATE_EXPIRED", "expired"
            )
        if not _is_client_leaf(cert):
            raise _pem_problem(
                path,
                "the certificate is not a device certificate: it must carry the clientAuth "
                "extended key usage and not be a CA",
                "CERTIFICATE_PURPOSE_INVALID",
                "not a clientAuth end-entity certificate",
            )
        anchors = (ca_certificate,) if ca_certificate is not None else self.keys.accepted_cas
        try:
            verify_chain(cert, [], anchors, at=at, usage=CLIENT_AUTH)
        except ChainError:
            raise _pem_problem(
                path,
                "the certificate was not issued by a CA the registry accepts",
                "CERTIFICATE_NOT_TRUSTED",
                "not issued by an accepted CA",
            ) from None
        return describe_certificate(cert)


def _is_client_leaf(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return CLIENT_AUTH in eku


def _pem_problem(
    path: str, message: str, reason: str, short: str
) -> ResourceRegistrationFailureError:
    return ResourceRegistrationFailureError(
        message, reason=reason, fields=[FieldProblem(path, short)]
    )
