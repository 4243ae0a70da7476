"""Build good and deliberately bad provisioning archives for tests and benchmarks.

A :class:`Forge` starts from the parts of a genuine archive (claim key and certificate,
signer, manifest) and lets a test change any of them before packing, re-signing and
re-hashing only what a real attacker or a broken factory tool would.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.archive.make import issue_claim_certificate, sign_manifest, zip_entries
from agent.archive.manifest import (
    CERTIFICATE,
    HASHED_NAMES,
    MANIFEST,
    PRIVATE_KEY,
    ROOT_CA,
    SIGNATURE,
    SIGNER,
    device_name_uri,
)
from agent.registry.ca import (
    CertificateAuthority,
    KeyType,
    PrivateKey,
    cert_to_pem,
    generate_key,
    init_ca,
    key_to_pem,
)

#: The reference time of every forged archive: the session's start, in whole minutes, so
#: forged certificates are valid around the clock the code under test reads (and stay so
#: when the suite runs with the clock moved ahead).
NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


def rfc3339(moment: dt.datetime) -> str:
    """``2026-11-23T12:00:00Z``: how the CLI and the manifest write a time."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_ca(directory: Path, name: str = "test provisioning CA") -> CertificateAuthority:
    """A fresh CA on disk (``ca.pem`` etc.), valid around :data:`NOW`."""
    return init_ca(directory, name=name, now=NOW)


@dataclass
class Forge:
    """The editable parts of one archive."""

    ca: CertificateAuthority
    name: str = "dev-1"
    not_before: dt.datetime = NOW
    lifetime: dt.timedelta = dt.timedelta(minutes=5)
    claim_key_type: KeyType = "ec-p256"
    #: The claim certificate's CN ("" for none) and device-name URI ("" for none); None
    #: for both means "as archive make does it".
    cn: str | None = None
    uri: str | None = None
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH
    networking: dict[str, Any] | None = None
    manifest_edits: dict[str, Any] = field(default_factory=dict)
    manifest_drop: tuple[str, ...] = ()
    #: Entry bytes replaced *after* hashing (so the manifest's hashes no longer match).
    tamper: dict[str, bytes] = field(default_factory=dict)
    #: Entry bytes replaced *before* hashing (a consistent, re-signed archive).
    replace: dict[str, bytes] = field(default_factory=dict)
    signer_key: PrivateKey | None = None
    signer_pem: bytes | None = None
    manifest_bytes: bytes | None = None
    signature: bytes | None = None
    claim_key: PrivateKey | None = None

    @property
    def filename(self) -> str:
        """The archive's file name."""
        return f"certificates-omni_{self.name}.zip"

    def parts(self) -> list[tuple[str, bytes]]:
        """All six entries, in order, after every edit."""
        key = self.claim_key or generate_key(self.claim_key_type)
        if self.cn is None and self.uri is None:
            cert = issue_claim_certificate(
                self.ca.factory(),
                self.name,
                key.public_key(),
                self.not_before,
                self.lifetime,
                eku=self.eku,
            )
        else:
            cert = self.ca.claim_issuer.issue(
                common_name=self.cn or None,
                public_key=key.public_key(),
                not_before=self.not_before,
                lifetime=self.lifetime,
                eku=self.eku,
                uris=(self.uri if self.uri is not None else device_name_uri(self.name),)
                if self.uri != ""
                else (),
            )
        files = {
            SIGNER: self.signer_pem
            if self.signer_pem is not None
            else cert_to_pem(self.ca.signer_cert),
            CERTIFICATE: cert_to_pem(cert) + cert_to_pem(self.ca.claim_issuer.cert),
            PRIVATE_KEY: key_to_pem(key),
            ROOT_CA: cert_to_pem(self.ca.root_cert),
        }
        files.update(self.replace)
        manifest: dict[str, Any] = {
            "formatVersion": 1,
            "deviceName": self.name,
            "deviceId": "device-abcdefghijklmnopqrstuvwxyz",
            "arn": "arn:aws:panorama:us-east-1:123456789012:device/"
            "device-abcdefghijklmnopqrstuvwxyz",
            "iotThingName": self.name,
            "createdAt": rfc3339(NOW),
            "iotEndpoint": "localhost:8883",
            "provisioningTemplate": "edge-agent-fleet",
            "files": {n: hashlib.sha256(files[n]).hexdigest() for n in HASHED_NAMES},
        }
        if self.networking is not None:
            manifest["networkingConfiguration"] = self.networking
        manifest.update(self.manifest_edits)
        for key_name in self.manifest_drop:
            manifest.pop(key_name, None)
        data = self.manifest_bytes
        if data is None:
            data = (json.dumps(manifest, indent=2) + "\n").encode()
        signature = self.signature
        if signature is None:
            signature = sign_manifest(self.signer_key or self.ca.signer_key, data)
        files.update(self.tamper)
        return [(MANIFEST, data), (SIGNATURE, signature), *((n, files[n]) for n in HASHED_NAMES)]

    def zip_bytes(self) -> bytes:
        """The packed archive."""
        return zip_entries(self.parts())

    def write(self, directory: Path, filename: str | None = None) -> Path:
        """Write the archive into ``directory``; return its path."""
        path = directory / (filename or self.filename)
        path.write_bytes(self.zip_bytes())
        return path

    def but(self, **changes: Any) -> Forge:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def raw_zip(entries: Sequence[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    """A ZIP written entry by entry with full control of each header (duplicates allowed)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names: that is the point
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for info, data in entries:
                archive.writestr(info, data)
    return buffer.getvalue()


def info(name: str, **attrs: Any) -> zipfile.ZipInfo:
    """A ZipInfo with attributes set (``external_attr``, ``flag_bits``, ``compress_type``)."""
    zinfo = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    zinfo.compress_type = zipfile.ZIP_DEFLATED
    zinfo.create_system = 3
    zinfo.external_attr = 0o100600 << 16
    for key, value in attrs.items():
        setattr(zinfo, key, value)
    return zinfo


def rewrite(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace every occurrence of ``old`` (same length) in raw ZIP bytes."""
    assert len(old) == len(new)
    assert old in data
    return data.replace(old, new)


def patch_flags(data: bytes, name: bytes, *, set_bits: int = 0, clear_bits: int = 0) -> bytes:
    """Change the general-purpose flags of entry ``name`` in its local and central headers."""
    out = bytearray(data)
    found = 0
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        pos = 0
        while (pos := out.find(signature, pos)) >= 0:
            if out[pos + name_at : pos + name_at + len(name)] == name:
                flags = int.from_bytes(out[pos + flags_at : pos + flags_at + 2], "little")
                flags = (flags | set_bits) & ~clear_bits
                out[pos + flags_at : pos + flags_at + 2] = flags.to_bytes(2, "little")
                found += 1
            pos += 4
    assert found == 2, f"entry {name!r} not found in both headers"
    return bytes(out)


Mutator = Callable[[bytes], bytes]
