"""``edge-agent demo`` runs the whole job on embedded defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.archive.install import current_credentials
from agent.cli import main


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "status: SUCCEEDED" in out
    assert "ARCHIVE_ALREADY_USED" in out
    assert "BEGIN" not in out  # no key or certificate material on the console
    current = current_credentials(tmp_path / "demo" / "state")
    assert current is not None
    assert stat.S_IMODE((current / "private.key").stat().st_mode) == 0o600
    assert (tmp_path / "demo" / "stick" / "certificates-omni_demo-appliance-1.zip").is_file()
