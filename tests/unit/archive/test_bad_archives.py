"""The corpus of bad archives: each is refused with its own reason and changes nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.archive.clock import FixedClock
from agent.archive.install import provision_from_file
from agent.archive.manifest import ENTRY_NAMES
from agent.archive.reader import Limits
from agent.archive.verify import Policy
from agent.errors import AgentError
from agent.registry.ca import (
    CertificateAuthority,
    Issuer,
    cert_to_pem,
    generate_key,
    key_to_pem,
)
from tests.helpers.forge import NOW, Forge, info, patch_flags, raw_zip, rewrite
from tests.unit.archive.conftest import snapshot

Entry = tuple[str | zipfile.ZipInfo, bytes]


@dataclass(frozen=True)
class Ctx:
    forge: Forge
    other: CertificateAuthority
    dir: Path

    def write(self, data: bytes, name: str = "certificates-omni_dev-1.zip") -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def parts_zip(self, edit: Callable[[list[tuple[str, bytes]]], Sequence[Entry]]) -> Path:
        return self.write(raw_zip(edit(self.forge.parts())))


@dataclass(frozen=True)
class Case:
    id: str
    reason: str
    build: Callable[[Ctx], Path]
    limits: Limits | None = None
    now: dt.datetime | None = None


def _swap_name(parts: list[tuple[str, bytes]], old: str, new: str | zipfile.ZipInfo) -> list[Entry]:
    return [(new if n == old else n, d) for n, d in parts]


def _encrypted_key() -> bytes:
    return generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase"),
    )


def _dsa_key() -> bytes:
    return dsa.generate_private_key(1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _non_utf8_flagged(ctx: Ctx) -> Path:
    parts = ctx.forge.parts()
    data = raw_zip([*parts, ("x\u00e9.pem", b"x")])
    return ctx.write(rewrite(data, "x\u00e9".encode(), b"x\xff\xfe"))


def _legacy_codepage(ctx: Ctx) -> Path:
    name = "\u00e9t\u00e9.pem"
    data = raw_zip([*ctx.forge.parts(), (name, b"x")])
    return ctx.write(patch_flags(data, name.encode(), clear_bits=0x800))


def _corrupt_entry(ctx: Ctx) -> Path:
    data = bytearray(ctx.forge.zip_bytes())
    # Damage the compressed bytes of the first entry (just after its 30-byte header + name).
    start = 30 + len("manifest.json") + 10
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    return ctx.write(bytes(data))


def _claim_signed_manifest(ctx: Ctx) -> Path:
    """The claim certificate (clientAuth, not codeSigning) used as the archive signer."""
    key = generate_key()
    cert = ctx.forge.ca.claim_issuer.issue(
        common_name="dev-1",
        public_key=key.public_key(),
        not_before=NOW,
        lifetime=dt.timedelta(minutes=5),
    )
    return ctx.forge.but(signer_pem=cert_to_pem(cert), signer_key=key).write(ctx.dir)


def _restricted_intermediate(ctx: Ctx, usage: x509.ObjectIdentifier) -> Issuer:
    """An intermediate under the real root whose extendedKeyUsage allows only ``usage``."""
    key = generate_key()
    cert = ctx.forge.ca.root.issue_ca(common_name="restricted", key=key, now=NOW, eku=usage)
    return Issuer(cert, key)


def _signer_under_client_auth_intermediate(ctx: Ctx) -> Path:
    """A codeSigning signer issued by an intermediate restricted to clientAuth."""
    inter = _restricted_intermediate(ctx, ExtendedKeyUsageOID.CLIENT_AUTH)
    key = generate_key()
    signer = inter.issue(
        common_name="signer",
        public_key=key.public_key(),
        not_before=NOW - dt.timedelta(days=1),
        lifetime=dt.timedelta(days=30),
        eku=ExtendedKeyUsageOID.CODE_SIGNING,
    )
    return ctx.forge.but(
        signer_pem=cert_to_pem(signer) + cert_to_pem(inter.cert), signer_key=key
    ).write(ctx.dir)


def _claim_under_code_signing_intermediate(ctx: Ctx) -> Path:
    """A clientAuth claim certificate issued by an intermediate restricted to codeSigning."""
    inter = _restricted_intermediate(ctx, ExtendedKeyUsageOID.CODE_SIGNING)
    ca = dataclasses.replace(ctx.forge.ca, claim_issuer=inter)
    return ctx.forge.but(ca=ca).write(ctx.dir)


def _foreign_signer(ctx: Ctx) -> Path:
    other = ctx.other
    return ctx.forge.but(
        signer_pem=cert_to_pem(other.signer_cert), signer_key=other.signer_key
    ).write(ctx.dir)


def _rsa_signer(ctx: Ctx) -> Path:
    key = generate_key("rsa-2048")
    cert = ctx.forge.ca.claim_issuer.issue(
        common_name="rsa signer",
        public_key=key.public_key(),
        not_before=NOW,
        lifetime=dt.timedelta(days=1),
        eku=ExtendedKeyUsageOID.CODE_SIGNING,
    )
    # A (meaningless) signature: the key type is refused before it is checked.
    return ctx.forge.but(signer_pem=cert_to_pem(cert), signature=b"\x00" * 256).write(ctx.dir)


def _signed_bytes(ctx: Ctx, data: bytes) -> Path:
    return ctx.forge.but(manifest_bytes=data).write(ctx.dir)


def _manifest_altered_after_signing(ctx: Ctx) -> Path:
    parts = ctx.forge.parts()
    manifest = json.loads(parts[0][1])
    manifest["iotEndpoint"] = "attacker.example.com:8883"
    parts[0] = (parts[0][0], json.dumps(manifest).encode())
    return ctx.write(raw_zip(parts))


def _renamed(ctx: Ctx) -> Path:
    return ctx.write(ctx.forge.zip_bytes(), "certificates-omni_dev-2.zip")


def _oversized(ctx: Ctx) -> Path:
    return ctx.write(ctx.forge.zip_bytes() + b"\0" * (1024 * 1024))


CASES: list[Case] = [
    # --- file name -------------------------------------------------------------------
    Case(
        "wrong-prefix",
        "FILE_NAME_INVALID",
        lambda c: c.write(c.forge.zip_bytes(), "certificates_dev-1.zip"),
    ),
    Case(
        "bad-device-name-chars",
        "FILE_NAME_INVALID",
        lambda c: c.write(c.forge.zip_bytes(), "certificates-omni_dev 1.zip"),
    ),
    Case(
        "not-zip-extension",
        "FILE_NAME_INVALID",
        lambda c: c.write(c.forge.zip_bytes(), "certificates-omni_dev-1.tar"),
    ),
    # --- container ---------------------------------------------------------------------
    Case("empty-file", "ARCHIVE_CORRUPT", lambda c: c.write(b"")),
    Case("not-a-zip", "ARCHIVE_CORRUPT", lambda c: c.write(b"hello, this is text\n" * 20)),
    Case(
        "truncated-half",
        "ARCHIVE_CORRUPT",
        lambda c: c.write(c.forge.zip_bytes()[: len(c.forge.zip_bytes()) // 2]),
    ),
    Case(
        "truncated-central-directory",
        "ARCHIVE_CORRUPT",
        lambda c: c.write(c.forge.zip_bytes()[:-30]),
    ),
    Case("damaged-entry-data", "ARCHIVE_CORRUPT", _corrupt_entry),
    Case("too-large-file", "ARCHIVE_TOO_LARGE", _oversized),
    Case(
        "too-large-by-config",
        "ARCHIVE_TOO_LARGE",
        lambda c: c.forge.write(c.dir),
        limits=Limits(max_archive_bytes=1024),
    ),
    # --- entries -----------------------------------------------------------------------
    Case(
        "extra-entry",
        "UNEXPECTED_ENTRY",
        lambda c: c.parts_zip(lambda p: [*p, ("README.txt", b"hi")]),
    ),
    Case(
        "nested-entry",
        "UNEXPECTED_ENTRY",
        lambda c: c.parts_zip(lambda p: _swap_name(p, "root-ca.pem", "certs/root-ca.pem")),
    ),
    Case(
        "missing-private-key",
        "MISSING_ENTRY",
        lambda c: c.parts_zip(lambda p: [x for x in p if x[0] != "private.key"]),
    ),
    Case(
        "missing-signature",
        "MISSING_ENTRY",
        lambda c: c.parts_zip(lambda p: [x for x in p if x[0] != "manifest.sig"]),
    ),
    Case(
        "duplicate-entry",
        "DUPLICATE_ENTRY",
        lambda c: c.parts_zip(lambda p: [*p, ("private.key", b"second copy")]),
    ),
    Case(
        "directory-entry",
        "DIRECTORY_ENTRY",
        lambda c: c.parts_zip(lambda p: [*p, (info("keys/", external_attr=0o40755 << 16), b"")]),
    ),
    Case(
        "symlink-entry",
        "SYMLINK_ENTRY",
        lambda c: c.parts_zip(
            lambda p: _swap_name(
                p, "root-ca.pem", info("root-ca.pem", external_attr=0o120777 << 16)
            )
        ),
    ),
    Case(
        "fifo-entry",
        "SPECIAL_ENTRY",
        lambda c: c.parts_zip(
            lambda p: _swap_name(
                p, "root-ca.pem", info("root-ca.pem", external_attr=0o010644 << 16)
            )
        ),
    ),
    Case(
        "absolute-path",
        "UNSAFE_PATH",
        lambda c: c.write(
            rewrite(raw_zip([(info("_etc/pwn"), b"x"), *c.forge.parts()]), b"_etc/pwn", b"/etc/pwn")
        ),
    ),
    Case(
        "dot-dot-path",
        "UNSAFE_PATH",
        lambda c: c.write(raw_zip([(info("../../etc/cron.d/x"), b"x"), *c.forge.parts()])),
    ),
    Case(
        "backslash-dot-dot-path",
        "UNSAFE_PATH",
        lambda c: c.write(raw_zip([(info("..\\..\\x"), b"x"), *c.forge.parts()])),
    ),
    Case(
        "encrypted-entry",
        "ENCRYPTED_ENTRY",
        lambda c: c.write(patch_flags(c.forge.zip_bytes(), b"private.key", set_bits=0x1)),
    ),
    Case("non-utf8-flagged-name", "NON_UTF8_NAME", _non_utf8_flagged),
    Case("legacy-codepage-name", "NON_UTF8_NAME", _legacy_codepage),
    Case(
        "bzip2-entry",
        "UNSUPPORTED_COMPRESSION",
        lambda c: c.parts_zip(
            lambda p: _swap_name(
                p, "root-ca.pem", info("root-ca.pem", compress_type=zipfile.ZIP_BZIP2)
            )
        ),
    ),
    Case(
        "future-zip-version",
        "UNSUPPORTED_COMPRESSION",
        lambda c: c.parts_zip(
            lambda p: _swap_name(p, "root-ca.pem", info("root-ca.pem", extract_version=99))
        ),
    ),
    Case(
        "entry-too-large",
        "ENTRY_TOO_LARGE",
        lambda c: c.forge.but(tamper={"root-ca.pem": bytes(range(256)) * 1200}).write(c.dir),
    ),
    Case(
        "zip-bomb-ratio",
        "COMPRESSION_RATIO_TOO_HIGH",
        lambda c: c.forge.but(tamper={"root-ca.pem": b"\0" * 200_000}).write(c.dir),
    ),
    Case(
        "total-too-large",
        "TOTAL_SIZE_TOO_LARGE",
        lambda c: c.forge.write(c.dir),
        limits=Limits(max_total_bytes=2048),
    ),
    # --- signature and signer ----------------------------------------------------------
    Case("manifest-altered-after-signing", "SIGNATURE_INVALID", _manifest_altered_after_signing),
    Case(
        "signature-garbage",
        "SIGNATURE_INVALID",
        lambda c: c.forge.but(signature=b"\x30\x06\x02\x01\x01\x02\x01\x01").write(c.dir),
    ),
    Case("signature-empty", "SIGNATURE_INVALID", lambda c: c.forge.but(signature=b"").write(c.dir)),
    Case(
        "signed-by-other-key",
        "SIGNATURE_INVALID",
        lambda c: c.forge.but(signer_key=c.other.signer_key).write(c.dir),
    ),
    Case(
        "signer-pem-garbage",
        "SIGNER_INVALID",
        lambda c: c.forge.but(signer_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n").write(c.dir),
    ),
    Case("signer-from-other-ca", "SIGNER_UNTRUSTED", _foreign_signer),
    Case("signer-without-codesigning", "SIGNER_UNTRUSTED", _claim_signed_manifest),
    Case("signer-rsa-key", "SIGNER_KEY_UNSUPPORTED", _rsa_signer),
    # --- manifest ----------------------------------------------------------------------
    Case("manifest-not-json", "MANIFEST_INVALID", lambda c: _signed_bytes(c, b"{not json")),
    Case("manifest-not-utf8", "MANIFEST_INVALID", lambda c: _signed_bytes(c, b'{"a": "\xff"}')),
    Case("manifest-array", "MANIFEST_INVALID", lambda c: _signed_bytes(c, b"[1, 2]")),
    Case(
        "manifest-duplicate-key",
        "MANIFEST_INVALID",
        lambda c: _signed_bytes(c, b'{"formatVersion": 1, "formatVersion": 1}'),
    ),
    Case(
        "manifest-format-v2",
        "UNSUPPORTED_FORMAT_VERSION",
        lambda c: c.forge.but(manifest_edits={"formatVersion": 2}).write(c.dir),
    ),
    Case(
        "manifest-missing-device-id",
        "MANIFEST_INVALID",
        lambda c: c.forge.but(manifest_drop=("deviceId",)).write(c.dir),
    ),
    Case(
        "manifest-unknown-field",
        "MANIFEST_INVALID",
        lambda c: c.forge.but(manifest_edits={"shell": "rm -rf /"}).write(c.dir),
    ),
    Case(
        "manifest-bad-endpoint",
        "MANIFEST_INVALID",
        lambda c: c.forge.but(manifest_edits={"iotEndpoint": "no port"}).write(c.dir),
    ),
    Case(
        "manifest-six-ntp-servers",
        "MANIFEST_INVALID",
        lambda c: c.forge.but(
            networking={"Ntp": {"NtpServers": [f"{i}.pool.ntp.org" for i in range(6)]}}
        ).write(c.dir),
    ),
    Case(
        "manifest-static-ip-without-info",
        "MANIFEST_INVALID",
        lambda c: c.forge.but(networking={"Ethernet0": {"ConnectionType": "STATIC_IP"}}).write(
            c.dir
        ),
    ),
    *(
        Case(
            f"manifest-thing-name-{label}",
            "MANIFEST_INVALID",
            lambda c, name=name: c.forge.but(manifest_edits={"iotThingName": name}).write(c.dir),  # type: ignore[misc]
        )
        for label, name in (
            ("plus", "hub+1"),
            ("hash", "hub#"),
            ("slash", "site/hub"),
            ("nul", "hub\x00"),
            ("newline", "hub\n"),
        )
    ),
    Case(
        "manifest-files-incomplete",
        "MANIFEST_INVALID",
        lambda c: c.forge.but(manifest_edits={"files": {"signer.pem": "0" * 64}}).write(c.dir),
    ),
    # --- hashes ------------------------------------------------------------------------
    Case(
        "private-key-swapped",
        "HASH_MISMATCH",
        lambda c: c.forge.but(tamper={"private.key": key_to_pem(generate_key())}).write(c.dir),
    ),
    Case(
        "root-ca-swapped",
        "HASH_MISMATCH",
        lambda c: c.forge.but(tamper={"root-ca.pem": cert_to_pem(c.other.root_cert)}).write(c.dir),
    ),
    Case(
        "certificate-swapped",
        "HASH_MISMATCH",
        lambda c: c.forge.but(tamper={"certificate.pem": cert_to_pem(c.other.signer_cert)}).write(
            c.dir
        ),
    ),
    # --- device name -------------------------------------------------------------------
    Case("file-renamed", "DEVICE_NAME_MISMATCH", _renamed),
    Case(
        "certificate-for-other-device",
        "DEVICE_NAME_MISMATCH",
        lambda c: c.forge.but(cn="dev-9").write(c.dir),
    ),
    # --- claim certificate -------------------------------------------------------------
    Case(
        "certificate-garbage",
        "CERTIFICATE_INVALID",
        lambda c: c.forge.but(replace={"certificate.pem": b"not a certificate"}).write(c.dir),
    ),
    Case(
        "lifetime-ten-minutes",
        "CERTIFICATE_LIFETIME_TOO_LONG",
        lambda c: c.forge.but(lifetime=dt.timedelta(minutes=10)).write(c.dir),
    ),
    Case(
        "lifetime-one-year",
        "CERTIFICATE_LIFETIME_TOO_LONG",
        lambda c: c.forge.but(lifetime=dt.timedelta(days=365)).write(c.dir),
    ),
    Case(
        "expired",
        "CERTIFICATE_EXPIRED",
        lambda c: c.forge.write(c.dir),
        now=NOW + dt.timedelta(minutes=7),
    ),
    Case(
        "expired-long-ago",
        "CERTIFICATE_EXPIRED",
        lambda c: c.forge.write(c.dir),
        now=NOW + dt.timedelta(days=30),
    ),
    Case(
        "not-yet-valid",
        "CERTIFICATE_NOT_YET_VALID",
        lambda c: c.forge.write(c.dir),
        now=NOW - dt.timedelta(minutes=5),
    ),
    Case(
        "certificate-from-other-ca",
        "CERTIFICATE_UNTRUSTED",
        lambda c: c.forge.but(
            ca=c.other,
            signer_pem=cert_to_pem(c.forge.ca.signer_cert),
            signer_key=c.forge.ca.signer_key,
        ).write(c.dir),
    ),
    Case(
        "certificate-server-auth-only",
        "CERTIFICATE_UNTRUSTED",
        lambda c: c.forge.but(eku=ExtendedKeyUsageOID.SERVER_AUTH).write(c.dir),
    ),
    Case(
        "signer-under-client-auth-intermediate",
        "SIGNER_UNTRUSTED",
        _signer_under_client_auth_intermediate,
    ),
    Case(
        "claim-under-code-signing-intermediate",
        "CERTIFICATE_UNTRUSTED",
        _claim_under_code_signing_intermediate,
    ),
    Case(
        "claim-without-name-uri",
        "DEVICE_NAME_MISMATCH",
        lambda c: c.forge.but(cn="dev-1", uri="").write(c.dir),
    ),
    Case(
        "claim-uri-for-other-device",
        "DEVICE_NAME_MISMATCH",
        lambda c: c.forge.but(cn="dev-1", uri="urn:edge-agent:device:dev-2").write(c.dir),
    ),
    Case(
        "claim-short-name-without-cn",
        "DEVICE_NAME_MISMATCH",
        lambda c: c.forge.but(cn="").write(c.dir),
    ),
    # --- private key -------------------------------------------------------------------
    Case(
        "key-mismatch-ec",
        "PRIVATE_KEY_MISMATCH",
        lambda c: c.forge.but(replace={"private.key": key_to_pem(generate_key())}).write(c.dir),
    ),
    Case(
        "key-mismatch-rsa",
        "PRIVATE_KEY_MISMATCH",
        lambda c: c.forge.but(
            claim_key_type="rsa-2048", replace={"private.key": key_to_pem(generate_key("rsa-2048"))}
        ).write(c.dir),
    ),
    Case(
        "key-mismatch-ed25519",
        "PRIVATE_KEY_MISMATCH",
        lambda c: c.forge.but(
            claim_key_type="ed25519", replace={"private.key": key_to_pem(generate_key("ed25519"))}
        ).write(c.dir),
    ),
    Case(
        "key-encrypted",
        "PRIVATE_KEY_INVALID",
        lambda c: c.forge.but(replace={"private.key": _encrypted_key()}).write(c.dir),
    ),
    Case(
        "key-garbage",
        "PRIVATE_KEY_INVALID",
        lambda c: c.forge.but(replace={"private.key": b"-----BEGIN PRIVATE KEY-----\nzz\n"}).write(
            c.dir
        ),
    ),
    Case(
        "key-dsa",
        "PRIVATE_KEY_INVALID",
        lambda c: c.forge.but(replace={"private.key": _dsa_key()}).write(c.dir),
    ),
    # --- root CA -----------------------------------------------------------------------
    Case(
        "root-ca-garbage",
        "ROOT_CA_INVALID",
        lambda c: c.forge.but(replace={"root-ca.pem": b"nothing here"}).write(c.dir),
    ),
]


def test_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.reason for c in CASES}) >= 25
    assert set(ENTRY_NAMES) == {
        "manifest.json",
        "manifest.sig",
        "signer.pem",
        "certificate.pem",
        "private.key",
        "root-ca.pem",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_archive_is_refused_and_changes_nothing(
    case: Case,
    forge: Forge,
    other_ca: CertificateAuthority,
    policy: Policy,
    clock: FixedClock,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    work = tmp_path / "stick"
    work.mkdir()
    path = case.build(Ctx(forge, other_ca, work))
    if case.limits is not None:
        policy = Policy(trust_anchors=policy.trust_anchors, limits=case.limits)
    if case.now is not None:
        clock = FixedClock(case.now)
    before = snapshot(state_dir)
    stick_before = snapshot(work)

    with pytest.raises(AgentError) as caught:
        provision_from_file(path, policy, clock, state_dir)

    error = caught.value.to_dict()["error"]
    assert error["reason"] == case.reason, error["message"]
    assert error["statusCode"] == 400
    assert error["code"] == "ValidationException"
    assert error["message"]
    assert snapshot(state_dir) == before
    assert snapshot(work) == stick_before
