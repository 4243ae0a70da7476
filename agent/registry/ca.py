"""The provisioning certificate authority (``edge-agent ca init``).

A CA directory holds:

* ``ca.pem`` / ``ca.key``: the provisioning root CA (the appliances' trust anchor);
* ``signer.pem`` / ``signer.key``: an archive-signing certificate issued by the root
  (``extendedKeyUsage = codeSigning``) that signs each archive's ``manifest.json``.

Factories, self-hosters, the demo and the tests use it to issue claim certificates and sign
archives; the registry uses the root to sign CSRs. Keys are written 0600, atomically.
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

from agent.errors import ConfigError
from agent.fsutil import PUBLIC_FILE, atomic_write, ensure_dir

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519")

CA_FILES = ("ca.pem", "ca.key", "signer.pem", "signer.key")
CA_LIFETIME = dt.timedelta(days=3650)
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


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A loaded CA directory."""

    root_cert: x509.Certificate
    root_key: PrivateKey
    signer_cert: x509.Certificate
    signer_key: PrivateKey

    def issue(
        self,
        *,
        common_name: str,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey,
        not_before: dt.datetime,
        lifetime: dt.timedelta,
        eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
        extra_subject: tuple[x509.NameAttribute[str], ...] = (),
    ) -> x509.Certificate:
        """Issue an end-entity certificate from the root."""
        subject = x509.Name([*extra_subject, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root_cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self.root_key, signature_hash(self.root_key))


def _root_certificate(key: PrivateKey, name: str, now: dt.datetime) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )


def init_ca(
    out: Path,
    *,
    name: str = "edge-agent provisioning CA",
    key_type: KeyType = "ec-p256",
    signer_key_type: KeyType = "ec-p256",
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Create a CA directory; refuses to overwrite an existing CA."""
    ensure_dir(out)
    existing = [f for f in CA_FILES if (out / f).exists()]
    if existing:
        raise ConfigError(
            f"{out} already holds a CA ({', '.join(existing)}); refusing to overwrite it",
            reason="CA_EXISTS",
        )
    now = now or _now()
    root_key = generate_key(key_type)
    root = _root_certificate(root_key, name, now)
    signer_key = generate_key(signer_key_type)
    partial = CertificateAuthority(root, root_key, root, root_key)
    signer = partial.issue(
        common_name=f"{name} archive signer",
        public_key=signer_key.public_key(),
        not_before=now - dt.timedelta(days=1),
        lifetime=SIGNER_LIFETIME,
        eku=ExtendedKeyUsageOID.CODE_SIGNING,
    )
    # Keys first: a CA directory with certificates but no keys is never left behind.
    atomic_write(out / "ca.key", key_to_pem(root_key))
    atomic_write(out / "signer.key", key_to_pem(signer_key))
    atomic_write(out / "signer.pem", cert_to_pem(signer), PUBLIC_FILE)
    atomic_write(out / "ca.pem", cert_to_pem(root), PUBLIC_FILE)
    return CertificateAuthority(root, root_key, signer, signer_key)


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


def load_ca(directory: Path) -> CertificateAuthority:
    """Load a CA directory written by :func:`init_ca`."""
    missing = [f for f in CA_FILES if not (directory / f).is_file()]
    if missing:
        raise ConfigError(
            f"{directory} is not a CA directory (missing {', '.join(missing)}); "
            "create one with 'edge-agent ca init'",
            reason="CA_MISSING",
        )
    return CertificateAuthority(
        root_cert=load_certificate(directory / "ca.pem"),
        root_key=load_private_key(directory / "ca.key"),
        signer_cert=load_certificate(directory / "signer.pem"),
        signer_key=load_private_key(directory / "signer.key"),
    )
