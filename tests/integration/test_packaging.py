"""The package as a wheel: what ``pip install .`` ships is enough to run the agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.env import need_binary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from the tracked files only (what a clean checkout has)."""
    need_binary("git")
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (t.decode() for t in tracked)):
        if not (REPO / name).is_file():
            continue  # deleted in the working tree, not yet committed
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("edge_agent-*.whl")
    return built


def test_wheel_ships_board_profiles_and_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = sorted(p.name for p in (REPO / "agent" / "boards").glob("*.toml"))
    assert bundled
    for name in bundled:
        assert f"agent/boards/{name}" in names
    assert "agent/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_plans_the_network(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    payload = tmp_path / "net.json"
    payload.write_text(json.dumps({"Ethernet0": {"ConnectionType": "DHCP"}}), encoding="utf-8")
    config = tmp_path / "agent.toml"  # an empty configuration: every default
    config.write_text("", encoding="utf-8")
    # Run from outside the repository with only the installed copy first on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import agent; print(agent.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
    command = [sys.executable, "-m", "agent", "--config", str(config), "net", "plan"]
    for board in ("generic", "single-port"):
        done = subprocess.run(
            [*command, str(payload), "--board", board, "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["board"] == board
