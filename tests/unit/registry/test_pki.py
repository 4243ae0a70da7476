"""The PKI hierarchy: what ``ca init`` makes, and what each host loads."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import RegistrySection
from agent.errors import ConfigError
from agent.fsutil import ensure_dir
from agent.registry.ca import (
    CA_FILES,
    FACTORY_FILES,
    REGISTRY_FILES,
    ROOT_CERT,
    ROOT_KEY,
    init_ca,
    load_device_issuer,
    load_factory_keys,
)
from agent.registry.register import Registry
from agent.registry.signing import CsrSigner
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.registry import make_csr


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _copy(source: Path, target: Path, names: tuple[str, ...]) -> Path:
    ensure_dir(target)
    for name in names:
        shutil.copy2(source / name, target / name)
    return target


def test_init_makes_four_keys_each_with_its_purpose(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    certs = {
        "root": ca.root_cert,
        "signer": ca.signer_cert,
        "claim": ca.claim_issuer.cert,
        "device": ca.device_issuer.cert,
    }
    assert len({_spki(c) for c in certs.values()}) == 4  # four distinct keys
    assert _is_ca(ca.root_cert)
    assert _eku(ca.root_cert) is None
    assert not _is_ca(ca.signer_cert)
    assert _eku(ca.signer_cert) == [ExtendedKeyUsageOID.CODE_SIGNING]
    for issuer in (ca.claim_issuer.cert, ca.device_issuer.cert):
        assert _is_ca(issuer)
        assert _eku(issuer) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert issuer.issuer == ca.root_cert.subject
    assert ca.signer_cert.issuer == ca.root_cert.subject
    for name in CA_FILES:
        mode = stat.S_IMODE((tmp_path / "pki" / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name


def test_the_registry_runs_without_the_root_key(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    registry_dir = _copy(tmp_path / "pki", tmp_path / "registry", REGISTRY_FILES)
    assert not (registry_dir / ROOT_KEY).exists()
    keys = load_device_issuer(registry_dir)
    assert keys.issuer.cert == ca.device_issuer.cert
    assert keys.claim_issuer_cert == ca.claim_issuer.cert
    assert keys.root_cert == ca.root_cert
    issued = CsrSigner(keys).sign(make_csr("dev-1"))
    # Device certificates come from the device issuer, never from the root.
    assert issued.certificate.issuer == ca.device_issuer.cert.subject
    issued.certificate.verify_directly_issued_by(ca.device_issuer.cert)


def test_the_root_keys_directory_alone_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "pki")
    offline = _copy(tmp_path / "pki", tmp_path / "offline", (ROOT_CERT, ROOT_KEY))
    with pytest.raises(ConfigError) as caught:
        load_device_issuer(offline)
    assert caught.value.reason == "CA_ROOT_ONLY"
    assert "root key" in caught.value.message
    section = RegistrySection(ca_dir=offline, database=tmp_path / "r.db")
    with pytest.raises(ConfigError) as again:
        Registry.from_config(section)
    assert again.value.reason == "CA_ROOT_ONLY"


def test_a_registry_directory_missing_the_device_key_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "pki")
    partial = _copy(tmp_path / "pki", tmp_path / "partial", (ROOT_CERT, "device-issuer.pem"))
    with pytest.raises(ConfigError) as caught:
        load_device_issuer(partial)
    assert caught.value.reason == "CA_MISSING"
    assert "device-issuer.key" in caught.value.message


def test_a_mismatched_key_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "pki")
    bad = _copy(tmp_path / "pki", tmp_path / "bad", REGISTRY_FILES)
    shutil.copy2(tmp_path / "pki" / "claim-issuer.key", bad / "device-issuer.key")
    with pytest.raises(ConfigError) as caught:
        load_device_issuer(bad)
    assert caught.value.reason == "CA_INVALID"


def test_the_factory_runs_without_the_root_key(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    factory = _copy(tmp_path / "pki", tmp_path / "factory", FACTORY_FILES)
    keys = load_factory_keys(factory)
    assert keys.signer_cert == ca.signer_cert
    assert keys.claim_issuer.cert == ca.claim_issuer.cert
    (factory / "signer.key").unlink()
    with pytest.raises(ConfigError) as caught:
        load_factory_keys(factory)
    assert caught.value.reason == "CA_MISSING"


def test_registry_from_config_signs_with_the_device_issuer(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    registry_dir = _copy(tmp_path / "pki", tmp_path / "registry", REGISTRY_FILES)
    section = RegistrySection(ca_dir=registry_dir, database=tmp_path / "r.db")
    with SqliteRegistryStorage.open(section.database) as storage:
        registry = Registry.from_config(section, storage=storage)
        issued = registry.sign_csr(make_csr("dev-2"))
    assert issued.certificate.issuer == ca.device_issuer.cert.subject


def test_ca_init_refuses_a_shared_directory_and_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ConfigError) as caught:
        init_ca(shared)
    assert caught.value.reason == "DIRECTORY_NOT_PRIVATE"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []
    # A private directory below it is fine, and only what was created gets 0700.
    init_ca(shared / "a" / "pki")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((shared / "a" / "pki").stat().st_mode) == 0o700


def test_ensure_dir_sets_modes_only_on_what_it_creates(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(0o755)
    ensure_dir(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755
    made = ensure_dir(existing / "x" / "y")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert stat.S_IMODE((existing / "x").stat().st_mode) == 0o700
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        ensure_dir(tmp_path / "file")


def test_issuer_lifetimes_nest_inside_the_root(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = init_ca(tmp_path / "pki", now=now)
    for cert in (ca.signer_cert, ca.claim_issuer.cert, ca.device_issuer.cert):
        assert cert.not_valid_before_utc >= ca.root_cert.not_valid_before_utc
        assert cert.not_valid_after_utc <= ca.root_cert.not_valid_after_utc


def test_claim_certificates_verify_only_from_the_claim_issuer(tmp_path: Path) -> None:
    from agent.archive.make import issue_claim_certificate
    from agent.chains import ChainError
    from agent.registry.ca import generate_key

    ca = init_ca(tmp_path / "pki")
    keys = load_device_issuer(_copy(tmp_path / "pki", tmp_path / "registry", REGISTRY_FILES))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    claim = issue_claim_certificate(
        ca.factory(), "dev-9", generate_key().public_key(), now, dt.timedelta(minutes=5)
    )
    keys.verify_claim_certificate(claim, at=now + dt.timedelta(seconds=1))
    with pytest.raises(ChainError):
        keys.verify_claim_certificate(claim, at=now + dt.timedelta(minutes=10))
    device = CsrSigner(keys).sign(make_csr("dev-9"), now=now).certificate
    with pytest.raises(ChainError):
        keys.verify_claim_certificate(device, at=now + dt.timedelta(seconds=1))
