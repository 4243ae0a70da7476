"""The installed set: re-checkable signature, and a state directory that is a symlink."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.archive.clock import FixedClock
from agent.archive.install import current_credentials, provision_from_file
from agent.archive.verify import Policy, verify_signed_manifest
from agent.errors import SignatureError
from tests.helpers.forge import NOW, Forge


def test_the_installed_manifest_is_the_signed_bytes_and_rechecks(
    forge: Forge, policy: Policy, clock: FixedClock, tmp_path: Path
) -> None:
    archive = forge.write(tmp_path)
    verified, result = provision_from_file(archive, policy, clock, tmp_path / "state")
    entries = verified.contents.entries
    folder = result.credential_dir
    for name in ("manifest.json", "manifest.sig", "signer.pem"):
        assert (folder / name).read_bytes() == entries[name], name
    manifest = verify_signed_manifest(
        (folder / "manifest.json").read_bytes(),
        (folder / "manifest.sig").read_bytes(),
        (folder / "signer.pem").read_bytes(),
        policy,
        NOW + dt.timedelta(days=1),
    )
    assert manifest.device_name == "dev-1"
    altered = (folder / "manifest.json").read_bytes().replace(b"dev-1", b"dev-2")
    with pytest.raises(SignatureError) as caught:
        verify_signed_manifest(
            altered,
            (folder / "manifest.sig").read_bytes(),
            (folder / "signer.pem").read_bytes(),
            policy,
            NOW,
        )
    assert caught.value.reason == "SIGNATURE_INVALID"


def test_previous_is_written_when_the_state_directory_is_a_symlink(
    forge: Forge, policy: Policy, tmp_path: Path
) -> None:
    real = tmp_path / "private" / "edge-agent"
    real.mkdir(parents=True)
    state = tmp_path / "state"
    state.symlink_to(real, target_is_directory=True)
    first = forge.but(name="dev-a").write(tmp_path)
    second = forge.but(name="dev-b").write(tmp_path)
    _, one = provision_from_file(first, policy, FixedClock(NOW + dt.timedelta(seconds=5)), state)
    _, two = provision_from_file(second, policy, FixedClock(NOW + dt.timedelta(seconds=6)), state)
    credentials = state / "credentials"
    assert (credentials / "previous").is_symlink()
    assert (credentials / "previous").resolve() == one.credential_dir.resolve()
    assert current_credentials(state) == two.credential_dir.resolve()
    assert two.previous_dir == one.credential_dir.resolve()
    assert one.credential_dir.resolve().is_dir()  # kept for rollback, not pruned
