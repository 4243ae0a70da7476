"""The provisioning PKI (``edge-agent ca init``) and the loaders each host uses.

``ca init`` writes one directory; each certificate has its own key and purpose:

==========================  =========================  ==================  ====================
file                        certificate                key kept on         used for
==========================  =========================  ==================  ====================
``ca.pem`` / ``ca.key``     provisioning root (CA)     offline after init  the appliances' anchor
``signer.pem`` / ``.key``   archive signer             factory             signs manifest.json
                            (``codeSigning``)
``claim-issuer.pem/.key``   claim issuer (CA,          factory             5-minute claim certs
                            ``clientAuth`` only)
``device-issuer.pem/.key``  device issuer (CA,         registry host       signs device CSRs
                            ``clientAuth`` only)
==========================  =========================  ==================  ====================

Nothing online needs ``ca.key``: move it offline after ``ca init``. The factory loads
:func:`load_factory_keys` (signer and claim issuer), the registry loads
:func:`load_device_issuer` (the device issuer's key and public certificates only). Keys are
written 0600, atomically. Further CA certificates accepted for a template's
``CertificatePem`` are registered with :func:`agent.registry.cacerts.register_ca_certificate`.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.chains import CLIENT_AUTH, verify_chain
from agent.errors import ConfigError
from agent.fsutil import PUBLIC_FILE, atomic_write, ensure_dir, refuse_shared_dir

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519")

ROOT_CERT = "ca.pem"
ROOT_KEY = "ca.key"
SIGNER_CERT = "signer.pem"
SIGNER_KEY = "signer.key"
CLAIM_ISSUER_CERT = "claim-issuer.pem"
CLAIM_ISSUER_KEY = "claim-issuer.key"
DEVICE_ISSUER_CERT = "device-issuer.pem"
DEVICE_ISSUER_KEY = "device-issuer.key"
#: Every file ``ca init`` writes.
CA_FILES = (
    ROOT_CERT,
    ROOT_KEY,
    SIGNER_CERT,
    SIGNER_KEY,
    CLAIM_ISSUER_CERT,
    CLAIM_ISSUER_KEY,
    DEVICE_ISSUER_CERT,
    DEVICE_ISSUER_KEY,
)
#: What the factory host needs (``archive make``).
FACTORY_FILES = (ROOT_CERT, SIGNER_CERT, SIGNER_KEY, CLAIM_ISSUER_CERT, CLAIM_ISSUER_KEY)
#: What the registry host needs (RegisterThing, bulk registration, ``registry serve``).
REGISTRY_FILES = (ROOT_CERT, CLAIM_ISSUER_CERT, DEVICE_ISSUER_CERT, DEVICE_ISSUER_KEY)

CA_LIFETIME = dt.timedelta(days=3650)
ISSUER_LIFETIME = dt.timedelta(days=1825)
SIGNER_LIFETIME = dt.timedelta(days=825)


def generate_key(key_type: KeyType = "ec-p256") -> PrivateKey:
    """A new private key of ``key_type``."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ed25519.Ed25519PrivateKey.generate()


def signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The hash to sign certificates with (Ed25519 takes none)."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of one certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _serial() -> int:
    return secrets.randbits(159) | 1


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _key_usage(*, ca: bool, public_key: PublicKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca and isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True)
class Issuer:
    """A certificate that issues others, with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def issue(
        self,
        *,
        common_name: str | None,
        public_key: PublicKey,
        not_before: dt.datetime,
        lifetime: dt.timedelta,
        eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
        extra_subject: tuple[x509.NameAttribute[str], ...] = (),
        uris: tuple[str, ...] = (),
    ) -> x509.Certificate:
        """Issue an end-entity certificate.

        Args:
            common_name: the subject CN (None: no CN, the name is bound in ``uris``).
            public_key: the subject's public key.
            not_before: start of validity.
            lifetime: how long it is valid.
            eku: its one extended key usage.
            extra_subject: further subject attributes, before the CN.
            uris: subjectAltName URIs (critical when the subject is otherwise empty).
        """
        attributes = list(extra_subject)
        if common_name is not None:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False, public_key=public_key), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=not attributes,
            )
        return builder.sign(self.key, signature_hash(self.key))

    def issue_ca(
        self,
        *,
        common_name: str,
        key: PrivateKey,
        now: dt.datetime,
        lifetime: dt.timedelta = ISSUER_LIFETIME,
        eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
        path_length: int | None = 0,
    ) -> x509.Certificate:
        """Issue an intermediate CA certificate, restricted to ``eku`` when given."""
        return _ca_certificate(
            common_name,
            key,
            now=now,
            lifetime=lifetime,
            issuer=self,
            eku=eku,
            path_length=path_length,
        )


def _ca_certificate(
    common_name: str,
    key: PrivateKey,
    *,
    now: dt.datetime,
    lifetime: dt.timedelta,
    issuer: Issuer | None,
    eku: x509.ObjectIdentifier | None,
    path_length: int | None,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    signing_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True, public_key=key.public_key()), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(signing_key, signature_hash(signing_key))


@dataclass(frozen=True, slots=True)
class FactoryKeys:
    """What ``archive make`` needs: the archive signer and the claim issuer (no root key)."""

    root_cert: x509.Certificate
    signer_cert: x509.Certificate
    signer_key: PrivateKey
    claim_issuer: Issuer


@dataclass(frozen=True, slots=True)
class DeviceIssuer:
    """What the registry needs: the device issuer's key and the public certificates.

    Attributes:
        issuer: the device-issuer certificate and key (signs device CSRs).
        root_cert: the provisioning root (public).
        claim_issuer_cert: the claim issuer (public): claim certificates chain to it.
        registered_cas: further CA certificates accepted for a template's
            ``CertificatePem`` (``edge-agent ca register``).
    """

    issuer: Issuer
    root_cert: x509.Certificate
    claim_issuer_cert: x509.Certificate
    registered_cas: tuple[x509.Certificate, ...] = ()

    @property
    def accepted_cas(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates a device certificate may be issued by."""
        return (self.issuer.cert, *self.registered_cas)

    def verify_claim_certificate(self, certificate: x509.Certificate, *, at: dt.datetime) -> None:
        """Check that ``certificate`` is a claim certificate of the claim issuer, valid at ``at``.

        It must be issued by the claim issuer (not the device issuer, not the root directly)
        for ``clientAuth`` and not be a CA.

        Raises:
            ChainError: it is not (the message says why).
        """
        verify_chain(certificate, [], [self.claim_issuer_cert], at=at, usage=CLIENT_AUTH)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """Everything ``ca init`` made (tests, the demo and the bench hold it all in memory)."""

    root: Issuer
    signer_cert: x509.Certificate
    signer_key: PrivateKey
    claim_issuer: Issuer
    device_issuer: Issuer

    @property
    def root_cert(self) -> x509.Certificate:
        """The provisioning root certificate (the appliances' trust anchor)."""
        return self.root.cert

    @property
    def root_key(self) -> PrivateKey:
        """The root key (kept offline in production)."""
        return self.root.key

    def factory(self) -> FactoryKeys:
        """The factory's share: signer and claim issuer."""
        return FactoryKeys(self.root.cert, self.signer_cert, self.signer_key, self.claim_issuer)

    def registry(self) -> DeviceIssuer:
        """The registry's share: the device issuer and the public certificates."""
        return DeviceIssuer(self.device_issuer, self.root.cert, self.claim_issuer.cert)


def init_ca(
    out: Path,
    *,
    name: str = "edge-agent provisioning CA",
    key_type: KeyType = "ec-p256",
    signer_key_type: KeyType = "ec-p256",
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Create the PKI directory; refuses to overwrite an existing one.

    Raises:
        ConfigError: ``CA_EXISTS`` when ``out`` holds any of its files;
            ``DIRECTORY_NOT_PRIVATE`` when ``out`` exists and is group- or world-writable.
    """
    refuse_shared_dir(out)
    ensure_dir(out)
    existing = [f for f in CA_FILES if (out / f).exists()]
    if existing:
        raise ConfigError(
            f"{out} already holds a CA ({', '.join(existing)}); refusing to overwrite it",
            reason="CA_EXISTS",
        )
    now = now or _now()
    root_key = generate_key(key_type)
    root = Issuer(
        _ca_certificate(
            name, root_key, now=now, lifetime=CA_LIFETIME, issuer=None, eku=None, path_length=1
        ),
        root_key,
    )
    claim_key = generate_key(key_type)
    claim = Issuer(
        root.issue_ca(common_name=f"{name} claim issuer", key=claim_key, now=now), claim_key
    )
    device_key = generate_key(key_type)
    device = Issuer(
        root.issue_ca(common_name=f"{name} device issuer", key=device_key, now=now), device_key
    )
    signer_key = generate_key(signer_key_type)
    signer = root.issue(
        common_name=f"{name} archive signer",
        public_key=signer_key.public_key(),
        not_before=now - dt.timedelta(days=1),
        lifetime=SIGNER_LIFETIME,
        eku=ExtendedKeyUsageOID.CODE_SIGNING,
    )
    # Keys first: a directory with certificates but no keys is never left behind.
    for filename, key in (
        (ROOT_KEY, root_key),
        (SIGNER_KEY, signer_key),
        (CLAIM_ISSUER_KEY, claim_key),
        (DEVICE_ISSUER_KEY, device_key),
    ):
        atomic_write(out / filename, key_to_pem(key))
    for filename, cert in (
        (SIGNER_CERT, signer),
        (CLAIM_ISSUER_CERT, claim.cert),
        (DEVICE_ISSUER_CERT, device.cert),
        (ROOT_CERT, root.cert),
    ):
        atomic_write(out / filename, cert_to_pem(cert), PUBLIC_FILE)
    return CertificateAuthority(root, signer, signer_key, claim, device)


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key of a supported type."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the private key {path}", reason="CA_INVALID") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(f"{path}: unsupported key type", reason="CA_INVALID")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Load the first PEM certificate of ``path``."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the certificate {path}", reason="CA_INVALID") from exc


def _need(directory: Path, files: tuple[str, ...], what: str) -> None:
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise ConfigError(
            f"{directory} does not hold the {what} (missing {', '.join(missing)}); "
            "create the PKI with 'edge-agent ca init' and copy these files there",
            reason="CA_MISSING",
        )


def _issuer(directory: Path, cert_name: str, key_name: str) -> Issuer:
    cert = load_certificate(directory / cert_name)
    key = load_private_key(directory / key_name)
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(
            f"{directory / key_name} is not the key of {cert_name}", reason="CA_INVALID"
        )
    return Issuer(cert, key)


def load_factory_keys(directory: Path) -> FactoryKeys:
    """Load what ``archive make`` needs from ``directory`` (the root key is not read).

    Raises:
        ConfigError: ``CA_MISSING`` (a file is missing) or ``CA_INVALID``.
    """
    _need(directory, FACTORY_FILES, "factory keys")
    signer = _issuer(directory, SIGNER_CERT, SIGNER_KEY)
    return FactoryKeys(
        root_cert=load_certificate(directory / ROOT_CERT),
        signer_cert=signer.cert,
        signer_key=signer.key,
        claim_issuer=_issuer(directory, CLAIM_ISSUER_CERT, CLAIM_ISSUER_KEY),
    )


def load_device_issuer(directory: Path) -> DeviceIssuer:
    """Load the registry's keys: the device issuer (cert + key) and the public certificates.

    This is the one function a registry process (RegisterThing, bulk registration,
    ``registry serve``) calls to get its signing key. It reads only ``device-issuer.pem``,
    ``device-issuer.key``, ``claim-issuer.pem``, ``ca.pem`` and the CA certificates
    registered with ``edge-agent ca register``; it never reads ``ca.key`` or ``signer.key``.

    Args:
        directory: the registry's CA directory (``registry.ca_dir``).

    Returns:
        The :class:`DeviceIssuer`: ``issuer`` signs CSRs, ``claim_issuer_cert`` verifies claim
        certificates, ``accepted_cas`` verifies a template's ``CertificatePem``.

    Raises:
        ConfigError: ``CA_ROOT_ONLY`` when ``directory`` holds the root key but no device
            issuer (the offline root's directory was given); ``CA_MISSING`` when a file is
            missing; ``CA_INVALID`` when one does not load or a key does not match.
    """
    from agent.registry.cacerts import load_registered_cas  # noqa: PLC0415 - avoids a cycle

    if (directory / ROOT_KEY).exists() and not (directory / DEVICE_ISSUER_KEY).exists():
        raise ConfigError(
            f"{directory} holds the offline root key (ca.key) but no device issuer: the "
            "registry never uses the root key; give it a directory holding "
            + ", ".join(REGISTRY_FILES),
            reason="CA_ROOT_ONLY",
        )
    _need(directory, REGISTRY_FILES, "registry's device issuer")
    return DeviceIssuer(
        issuer=_issuer(directory, DEVICE_ISSUER_CERT, DEVICE_ISSUER_KEY),
        root_cert=load_certificate(directory / ROOT_CERT),
        claim_issuer_cert=load_certificate(directory / CLAIM_ISSUER_CERT),
        registered_cas=load_registered_cas(directory),
    )
