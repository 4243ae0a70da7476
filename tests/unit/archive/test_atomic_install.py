"""A process killed (SIGKILL) at any step of an install leaves usable credentials."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent.archive.clock import FixedClock
from agent.archive.install import (
    current_credentials,
    discard_unrecorded,
    open_store,
    provision_from_file,
)
from agent.archive.verify import Policy, load_claim_key
from agent.registry.ca import CertificateAuthority, cert_to_pem
from tests.helpers.forge import NOW, Forge
from tests.unit.archive.conftest import snapshot

CHILD = """
import datetime as dt, os, signal, sys
from pathlib import Path
from agent.archive.clock import FixedClock
from agent.archive.install import provision_from_file
from agent.archive.verify import Policy, load_trust_anchors

archive, trust, state, die_at, now = sys.argv[1:]

def on_step(name):
    if name == die_at:
        os.kill(os.getpid(), signal.SIGKILL)

provision_from_file(
    Path(archive), Policy(load_trust_anchors(Path(trust))),
    FixedClock(dt.datetime.fromisoformat(now)), Path(state), on_step=on_step,
)
"""

BEFORE_SWITCH = [
    "wrote certificate.pem",
    "wrote private.key",
    "wrote root-ca.pem",
    "wrote manifest.json",
    "wrote manifest.sig",
    "wrote signer.pem",
    "staged",
]


def _usable(directory: Path, ca: CertificateAuthority) -> str:
    """Assert the set is complete and consistent; return its device name."""
    cert = x509.load_pem_x509_certificate((directory / "certificate.pem").read_bytes())
    key = load_claim_key((directory / "private.key").read_bytes())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    assert cert.issuer == ca.claim_issuer.cert.subject
    assert (directory / "root-ca.pem").read_bytes() == cert_to_pem(ca.root_cert)
    return str(cert.subject.rfc4514_string())


def _kill_at(step: str, archive: Path, trust: Path, state: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(archive),
            str(trust),
            str(state),
            step,
            (NOW + dt.timedelta(seconds=30)).isoformat(),
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


def _killed_after_switch(
    forge: Forge, trust: Path, state: Path, tmp_path: Path
) -> tuple[Path, Path]:
    """Kill an install of a new archive between the switch and the ledger.

    Returns the archive and the credential set then in force.
    """
    archive = forge.write(tmp_path)
    _kill_at("activated", archive, trust, state)
    new = current_credentials(state)
    assert new is not None
    return archive, new


def _fingerprint(credential_set: Path) -> str:
    cert = x509.load_pem_x509_certificate((credential_set / "certificate.pem").read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


@pytest.fixture
def trust(ca: CertificateAuthority, tmp_path: Path) -> Path:
    path = tmp_path / "trust.pem"
    path.write_bytes(cert_to_pem(ca.root_cert))
    return path


@pytest.mark.parametrize("step", BEFORE_SWITCH)
def test_killed_before_switch_keeps_previous_credentials(
    step: str,
    forge: Forge,
    ca: CertificateAuthority,
    policy: Policy,
    state_dir: Path,
    trust: Path,
    tmp_path: Path,
) -> None:
    old = current_credentials(state_dir)
    assert old is not None
    old_files = snapshot(old)
    archive = forge.write(tmp_path)

    _kill_at(step, archive, trust, state_dir)

    assert current_credentials(state_dir) == old
    assert snapshot(old) == old_files
    assert _usable(old, ca) == "CN=dev-0"
    with open_store(state_dir) as store:
        assert store.db.execute("SELECT count(*) FROM archive_ledger").fetchone()[0] == 1
    # The archive was not consumed: installing it again works and cleans up the debris.
    _, result = provision_from_file(
        archive, policy, FixedClock(NOW + dt.timedelta(seconds=40)), state_dir
    )
    assert _usable(result.credential_dir, ca) == "CN=dev-1"
    sets = sorted(p.name for p in (state_dir / "credentials" / "sets").iterdir())
    assert sets == sorted([old.name, result.credential_dir.name])


def test_killed_after_switch_before_commit(
    forge: Forge,
    ca: CertificateAuthority,
    policy: Policy,
    state_dir: Path,
    trust: Path,
    tmp_path: Path,
) -> None:
    old = current_credentials(state_dir)
    assert old is not None

    _, new = _killed_after_switch(forge, trust, state_dir, tmp_path)

    # The new set is complete and in force, the previous one kept beside it.
    assert new != old
    assert _usable(new, ca) == "CN=dev-1"
    assert _usable(old, ca) == "CN=dev-0"
    assert (state_dir / "credentials" / "previous").resolve() == old


def test_killed_after_commit_records_the_archive(
    forge: Forge,
    ca: CertificateAuthority,
    policy: Policy,
    state_dir: Path,
    trust: Path,
    tmp_path: Path,
) -> None:
    archive = forge.write(tmp_path)
    _kill_at("recorded", archive, trust, state_dir)
    new = current_credentials(state_dir)
    assert new is not None
    assert _usable(new, ca) == "CN=dev-1"
    with pytest.raises(Exception, match="single-use") as caught:
        provision_from_file(archive, policy, FixedClock(NOW + dt.timedelta(seconds=40)), state_dir)
    assert getattr(caught.value, "reason", None) == "ARCHIVE_ALREADY_USED"


def test_an_unrecorded_switch_is_undone_by_discard_unrecorded(
    forge: Forge,
    ca: CertificateAuthority,
    policy: Policy,
    state_dir: Path,
    trust: Path,
    tmp_path: Path,
) -> None:
    old = current_credentials(state_dir)
    assert old is not None
    archive, new = _killed_after_switch(forge, trust, state_dir, tmp_path)
    fingerprint = _fingerprint(new)

    done = discard_unrecorded(state_dir, fingerprint)

    assert current_credentials(state_dir) == old
    assert not new.exists()
    assert any("back to" in line for line in done), done
    assert discard_unrecorded(state_dir, fingerprint) == []  # nothing left to undo
    # a recorded archive is never touched
    assert discard_unrecorded(state_dir, _fingerprint(old)) == []
    assert current_credentials(state_dir) == old
    # the archive was not consumed
    _, result = provision_from_file(
        archive, policy, FixedClock(NOW + dt.timedelta(seconds=40)), state_dir
    )
    assert _usable(result.credential_dir, ca) == "CN=dev-1"


def test_discard_unrecorded_on_a_first_install_leaves_no_set(
    forge: Forge, trust: Path, tmp_path: Path
) -> None:
    state = tmp_path / "fresh"
    _, new = _killed_after_switch(forge, trust, state, tmp_path)
    discard_unrecorded(state, _fingerprint(new))
    assert current_credentials(state) is None
    assert not (state / "credentials" / "current").is_symlink()
    assert list((state / "credentials" / "sets").iterdir()) == []
