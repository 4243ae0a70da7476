"""Proving a provisioning archive genuine (format v1).

The checks run in a fixed order, so each bad archive gets one stable reason:

1. the ZIP container (:mod:`agent.archive.reader`);
2. ``manifest.sig`` over the exact bytes of ``manifest.json`` with ``signer.pem``'s key;
3. the manifest schema, then the SHA-256 of every other entry;
4. the device name: file name = ``deviceName`` = the claim certificate's subject CN;
5. the claim certificate's lifetime (at most 5 minutes + skew) and, when the clock is
   trusted, that now is inside it (otherwise ``timeCheck`` is ``deferred``);
6. the signer and the claim certificate chain to the trust anchor
   (``cryptography.x509.verification``), the signer for ``codeSigning``, the claim
   certificate for ``clientAuth``;
7. ``private.key`` is the claim certificate's key; ``root-ca.pem`` holds certificates.

Single use (the ledger) is checked by :mod:`agent.archive.install`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.archive.clock import Clock
from agent.archive.manifest import (
    CERTIFICATE,
    COMMON_NAME_MAX,
    DEVICE_NAME_URI_PREFIX,
    HASHED_NAMES,
    MANIFEST,
    PRIVATE_KEY,
    ROOT_CA,
    SIGNATURE,
    SIGNER,
    Manifest,
    device_name_uri,
    parse_manifest,
)
from agent.archive.reader import ArchiveContents, Limits, read_archive
from agent.chains import ChainError, verify_chain
from agent.errors import (
    ArchiveError,
    CertificateError,
    ConfigError,
    FieldProblem,
    ManifestError,
    SignatureError,
)

TimeCheck = Literal["passed", "deferred"]
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a valid archive must satisfy on this appliance."""

    trust_anchors: tuple[x509.Certificate, ...]
    limits: Limits = field(default_factory=Limits)
    max_lifetime: dt.timedelta = dt.timedelta(minutes=5)
    clock_skew: dt.timedelta = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class VerifiedArchive:
    """An archive that passed every check (the time window possibly deferred)."""

    manifest: Manifest
    contents: ArchiveContents
    certificate: x509.Certificate
    fingerprint: str
    time_check: TimeCheck

    @property
    def not_before(self) -> dt.datetime:
        """Start of the claim certificate's validity."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        """End of the claim certificate's validity."""
        return self.certificate.not_valid_after_utc

    def summary(self) -> dict[str, Any]:
        """The JSON summary printed by ``archive validate`` (no secrets)."""
        m = self.manifest
        return {
            "deviceName": m.device_name,
            "deviceId": m.device_id,
            "iotThingName": m.iot_thing_name,
            "arn": m.arn,
            "iotEndpoint": m.iot_endpoint,
            "provisioningTemplate": m.provisioning_template,
            "certificateFingerprint": self.fingerprint,
            "notBefore": _rfc3339(self.not_before),
            "notAfter": _rfc3339(self.not_after),
            "networkingConfiguration": (
                m.networking_configuration.to_json() if m.networking_configuration else None
            ),
            "timeCheck": self.time_check,
        }


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def load_trust_anchors(path: Path) -> tuple[x509.Certificate, ...]:
    """Load the PEM trust anchor file (one or more certificates)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the trust anchor {path}: {exc.strerror}", reason="TRUST_ANCHOR_MISSING"
        ) from exc
    try:
        anchors = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ConfigError(
            f"{path} holds no usable PEM certificate", reason="TRUST_ANCHOR_INVALID"
        ) from exc
    return anchors


def verify_archive(path: Path, policy: Policy, clock: Clock) -> VerifiedArchive:
    """Run every check on the archive at ``path``; raise an ArchiveError on the first failure."""
    try:
        contents = read_archive(path, policy.limits)
        verified = verify_contents(contents, policy, clock)
    except ArchiveError as exc:
        _log.warning("archive %s refused: %s", path.name, exc.reason)
        raise
    _log.info(
        "archive %s verified (device %s, time check %s)",
        path.name,
        verified.manifest.device_name,
        verified.time_check,
    )
    return verified


def verify_contents(contents: ArchiveContents, policy: Policy, clock: Clock) -> VerifiedArchive:
    """Run the checks after the ZIP layer (see the module docstring for the order)."""
    entries = contents.entries
    signer_chain = _load_certificates(entries[SIGNER], SIGNER, "SIGNER_INVALID")
    _verify_signature(signer_chain[0], entries[MANIFEST], entries[SIGNATURE])
    manifest = parse_manifest(entries[MANIFEST])
    _verify_hashes(manifest, entries)
    if manifest.device_name != contents.device_name:
        raise ArchiveError(
            f"the file is named for device {contents.device_name!r} but its manifest is for "
            f"{manifest.device_name!r}",
            reason="DEVICE_NAME_MISMATCH",
            fields=[FieldProblem("deviceName", "differs from the file name")],
        )
    cert_chain = _load_certificates(entries[CERTIFICATE], CERTIFICATE, "CERTIFICATE_INVALID")
    certificate = cert_chain[0]
    check_device_binding(certificate, manifest.device_name)
    time_check, at = _check_window(certificate, policy, clock)
    intermediates = [*signer_chain[1:], *cert_chain[1:]]
    _verify_chain(
        signer_chain[0],
        intermediates,
        policy,
        at,
        ExtendedKeyUsageOID.CODE_SIGNING,
        reason="SIGNER_UNTRUSTED",
        what="the archive signer",
    )
    _verify_chain(
        certificate,
        intermediates,
        policy,
        at,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        reason="CERTIFICATE_UNTRUSTED",
        what="the claim certificate",
    )
    _verify_key_pair(certificate, entries[PRIVATE_KEY])
    _load_certificates(entries[ROOT_CA], ROOT_CA, "ROOT_CA_INVALID")
    return VerifiedArchive(
        manifest=manifest,
        contents=contents,
        certificate=certificate,
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        time_check=time_check,
    )


def verify_signed_manifest(
    manifest: bytes, signature: bytes, signer_pem: bytes, policy: Policy, at: dt.datetime
) -> Manifest:
    """Re-check an installed set's ``manifest.json`` against its ``manifest.sig``.

    The signature must verify with ``signer.pem``, whose chain must reach the trust anchor
    for ``codeSigning`` at time ``at``.

    Raises:
        SignatureError: ``SIGNER_INVALID``, ``SIGNATURE_INVALID`` or ``SIGNER_UNTRUSTED``.
        ManifestError: the manifest no longer parses.
    """
    chain = _load_certificates(signer_pem, SIGNER, "SIGNER_INVALID")
    _verify_signature(chain[0], manifest, signature)
    _verify_chain(
        chain[0],
        chain[1:],
        policy,
        at,
        ExtendedKeyUsageOID.CODE_SIGNING,
        reason="SIGNER_UNTRUSTED",
        what="the archive signer",
    )
    return parse_manifest(manifest)


def _load_certificates(data: bytes, name: str, reason: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise SignatureError(f"{name} holds no readable PEM certificate", reason=reason)
    return certs


def _verify_signature(signer: x509.Certificate, manifest: bytes, signature: bytes) -> None:
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, manifest, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, manifest)
        else:
            raise SignatureError(
                "the archive signer's key is neither EC nor Ed25519",
                reason="SIGNER_KEY_UNSUPPORTED",
            )
    except InvalidSignature:
        raise SignatureError(
            "manifest.sig does not verify: the archive was altered or not signed by its signer",
            reason="SIGNATURE_INVALID",
        ) from None


def _verify_hashes(manifest: Manifest, entries: dict[str, bytes]) -> None:
    for name in HASHED_NAMES:
        digest = hashlib.sha256(entries[name]).hexdigest()
        if not hmac.compare_digest(digest, manifest.files[name]):
            raise ManifestError(
                f"{name} does not match the SHA-256 in manifest.json",
                reason="HASH_MISMATCH",
                fields=[FieldProblem(f"files.{name}", "hash mismatch")],
            )


def _check_window(
    certificate: x509.Certificate, policy: Policy, clock: Clock
) -> tuple[TimeCheck, dt.datetime]:
    """Check the lifetime; return the time check and the time to verify chains at."""
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    lifetime = not_after - not_before
    if lifetime > policy.max_lifetime + policy.clock_skew:
        raise CertificateError(
            f"the claim certificate lives {int(lifetime.total_seconds())} s; at most "
            f"{int(policy.max_lifetime.total_seconds())} s are allowed",
            reason="CERTIFICATE_LIFETIME_TOO_LONG",
        )
    if lifetime <= dt.timedelta(0):
        raise CertificateError(
            "the claim certificate expires before it starts", reason="CERTIFICATE_INVALID"
        )
    if not clock.trusted():
        return "deferred", not_before
    now = clock.now()
    check_window(certificate, now, policy.clock_skew)
    return "passed", min(max(now, not_before), not_after)


def check_window(certificate: x509.Certificate, now: dt.datetime, skew: dt.timedelta) -> None:
    """Raise unless ``now`` is inside the certificate's validity (``skew`` either side).

    Used at validation when the clock is trusted, and after NTP sync when it was deferred.
    """
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before - skew:
        raise CertificateError(
            f"the claim certificate is valid only from {_rfc3339(not_before)}; the appliance "
            f"clock says {_rfc3339(now)}",
            reason="CERTIFICATE_NOT_YET_VALID",
        )
    if now > not_after + skew:
        raise CertificateError(
            f"the claim certificate expired at {_rfc3339(not_after)} (it lives 5 minutes); "
            "make a new archive and use it at once",
            reason="CERTIFICATE_EXPIRED",
        )


def check_device_binding(certificate: x509.Certificate, device_name: str) -> None:
    """Raise unless the claim certificate is bound to ``device_name``.

    The binding is the subjectAltName URI ``urn:edge-agent:device:<Name>`` (exactly one such
    URI); the subject CN, when present, must be the name too, and is present whenever the
    name fits in a CN (64 characters).
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            u
            for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(DEVICE_NAME_URI_PREFIX)
        ]
    except x509.ExtensionNotFound:
        uris = []
    common_names = [
        a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    expected_cns = [device_name] if len(device_name) <= COMMON_NAME_MAX else []
    if uris != [device_name_uri(device_name)] or common_names != expected_cns:
        raise CertificateError(
            f"the claim certificate is not issued to device {device_name[:64]!r}",
            reason="DEVICE_NAME_MISMATCH",
        )


def _verify_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    policy: Policy,
    at: dt.datetime,
    usage: x509.ObjectIdentifier,
    *,
    reason: str,
    what: str,
) -> None:
    try:
        verify_chain(leaf, intermediates, policy.trust_anchors, at=at, usage=usage)
    except ChainError as exc:
        raise SignatureError(
            f"{what} does not chain to the provisioning trust anchor ({exc})", reason=reason
        ) from None


def load_claim_key(
    data: bytes,
) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """Load ``private.key`` (unencrypted PEM: RSA, EC or Ed25519)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message may quote key material; say only what is wrong.
        raise CertificateError(
            "private.key is not an unencrypted PEM private key", reason="PRIVATE_KEY_INVALID"
        ) from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CertificateError(
            "private.key is not an RSA, EC or Ed25519 key", reason="PRIVATE_KEY_INVALID"
        )
    return key


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _verify_key_pair(certificate: x509.Certificate, key_pem: bytes) -> None:
    key = load_claim_key(key_pem)
    if _public_der(key.public_key()) != _public_der(certificate.public_key()):
        raise CertificateError(
            "private.key does not belong to the claim certificate",
            reason="PRIVATE_KEY_MISMATCH",
        )
