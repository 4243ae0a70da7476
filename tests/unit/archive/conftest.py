"""Fixtures for archive tests: two CAs, a policy, a clock and a state directory."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from agent.archive.clock import FixedClock
from agent.archive.install import provision_from_file
from agent.archive.verify import Policy
from agent.registry.ca import CertificateAuthority
from tests.helpers.forge import NOW, Forge, make_ca


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("other") / "ca", name="someone else's CA")


@pytest.fixture(scope="session")
def policy(ca: CertificateAuthority) -> Policy:
    return Policy(trust_anchors=(ca.root_cert,))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW + dt.timedelta(seconds=30))


@pytest.fixture
def forge(ca: CertificateAuthority) -> Forge:
    return Forge(ca)


@pytest.fixture(scope="session")
def _provisioned_template(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority, policy: Policy
) -> Path:
    """A state directory that already holds the credentials of device ``dev-0``."""
    root = tmp_path_factory.mktemp("provisioned")
    archive = Forge(ca, name="dev-0").write(root)
    state = root / "state"
    provision_from_file(archive, policy, FixedClock(NOW + dt.timedelta(seconds=5)), state)
    return state


@pytest.fixture
def state_dir(_provisioned_template: Path, tmp_path: Path) -> Path:
    """A private copy of a provisioned state directory."""
    target = tmp_path / "state"
    shutil.copytree(_provisioned_template, target, symlinks=True)
    return target


def snapshot(root: Path) -> dict[str, tuple[int, str, bytes]]:
    """Every path under ``root`` with its mode, kind and content (or link target)."""
    out: dict[str, tuple[int, str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                out[rel] = (st.st_mode, "link", str(path.readlink()).encode())
            elif path.is_dir():
                out[rel] = (st.st_mode, "dir", b"")
            else:
                out[rel] = (st.st_mode, "file", path.read_bytes())
    return out
