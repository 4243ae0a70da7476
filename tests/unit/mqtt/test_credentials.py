"""The appliance's own credential sets switch exactly as archive installs do."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.archive.install import current_credentials
from agent.mqtt.credentials import install_set


def test_sets_switch_with_previous_kept_even_through_a_symlinked_state_dir(tmp_path: Path) -> None:
    real = tmp_path / "real-state"
    real.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.symlink_to(real)  # systemd DynamicUser= makes the state directory a link
    first = install_set(state, "claim", {"certificate.pem": (b"one", 0o644)})
    second = install_set(
        state, "permanent", {"certificate.pem": (b"two", 0o644), "private.key": (b"k", 0o600)}
    )
    credentials = state / "credentials"
    assert current_credentials(state) == second.resolve()
    assert (credentials / "previous").resolve() == first.resolve()
    assert (credentials / "current" / "certificate.pem").read_bytes() == b"two"
    assert stat.S_IMODE((second / "private.key").stat().st_mode) == 0o600
    assert not [p for p in (credentials / "sets").iterdir() if p.name.startswith(".")]
