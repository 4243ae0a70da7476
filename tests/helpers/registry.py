"""Helpers for registry tests and benchmarks: CSRs of every kind, hook executables."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.registry.ca import KeyType, PrivateKey, generate_key, signature_hash
from agent.registry.demo import EXAMPLE_TEMPLATE


def make_csr(
    common_name: str = "device-0001",
    *,
    key: PrivateKey | None = None,
    key_type: KeyType = "ec-p256",
    extra: tuple[tuple[x509.ObjectIdentifier, str], ...] = ((NameOID.COUNTRY_NAME, "DE"),),
) -> str:
    """A PEM CSR signed by a fresh (or the given) key."""
    key = key or generate_key(key_type)
    attributes = [x509.NameAttribute(oid, value) for oid, value in extra]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    return csr.sign(key, signature_hash(key)).public_bytes(Encoding.PEM).decode("ascii")


def weak_rsa_csr(bits: int = 1024) -> str:
    """A CSR with an RSA key that is too small."""
    return make_csr(key=rsa.generate_private_key(public_exponent=65537, key_size=bits))


def curve_csr(curve: ec.EllipticCurve) -> str:
    """A CSR on an arbitrary EC curve."""
    return make_csr(key=ec.generate_private_key(curve))


def tampered_csr() -> str:
    """A CSR whose subject was changed after signing (the signature no longer verifies)."""
    key = generate_key("ec-p256")
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-aaaa")])
    )
    der = bytearray(builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    index = der.find(b"device-aaaa")
    der[index : index + 11] = b"device-bbbb"
    return x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM).decode("ascii")


def write_hook(directory: Path, name: str, body: str) -> Path:
    """An executable Python hook script: ``body`` runs with ``request`` read from stdin."""
    path = directory / name
    path.write_text(
        f"#!{sys.executable}\nimport json, sys, time, os\nrequest = json.load(sys.stdin)\n{body}\n",
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


def example_template() -> dict[str, Any]:
    """A deep copy of the reference notes' example template (section 2.3)."""
    return copy.deepcopy(EXAMPLE_TEMPLATE)
