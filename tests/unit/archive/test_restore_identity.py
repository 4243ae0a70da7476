"""restore_identity: a failed run's claim set gives way to the permanent set it replaced."""

from __future__ import annotations

from pathlib import Path

from agent.archive.install import current_credentials, restore_identity

FP = "ab" * 32


def _layout(state: Path, current: str, previous: str | None) -> Path:
    credentials = state / "credentials"
    for name in (current, previous):
        if name:
            (credentials / "sets" / name).mkdir(parents=True)
    (credentials / "current").symlink_to(f"sets/{current}")
    if previous:
        (credentials / "previous").symlink_to(f"sets/{previous}")
    return credentials


def test_the_permanent_set_comes_back_and_the_claim_set_becomes_previous(tmp_path: Path) -> None:
    claim, permanent = f"20261201T000001Z-{FP[:16]}", "20261130T000000Z-fleet-0123456789abcdef"
    credentials = _layout(tmp_path, claim, permanent)
    assert restore_identity(tmp_path, FP) == permanent
    assert current_credentials(tmp_path) == (credentials / "sets" / permanent).resolve()
    assert (credentials / "previous").resolve().name == claim
    assert restore_identity(tmp_path, FP) is None  # done once; nothing more to do


def test_nothing_changes_on_a_first_provisioning_or_for_another_run(tmp_path: Path) -> None:
    claim = f"20261201T000001Z-{FP[:16]}"
    _layout(tmp_path / "first", claim, None)
    assert restore_identity(tmp_path / "first", FP) is None
    assert current_credentials(tmp_path / "first") is not None
    # the previous set is another claim set, not a permanent one
    _layout(tmp_path / "claims", claim, "20261130T000000Z-0000000000000000")
    assert restore_identity(tmp_path / "claims", FP) is None
    # the set in force is not this run's
    _layout(tmp_path / "other", "20261201T000001Z-fleet-ffffffffffffffff", claim)
    assert restore_identity(tmp_path / "other", FP) is None
