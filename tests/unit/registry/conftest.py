"""Fixtures for registry tests: a CA, a SQLite registry on tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.registry.ca import CertificateAuthority
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.forge import make_ca

REGION = "eu-west-1"
ACCOUNT = "111122223333"


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("registry-ca") / "ca")


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("other-ca") / "ca", name="someone else's CA")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def storage(db_path: Path) -> Iterator[SqliteRegistryStorage]:
    with SqliteRegistryStorage.open(db_path) as opened:
        yield opened


@pytest.fixture
def registry(storage: SqliteRegistryStorage, ca: CertificateAuthority) -> Registry:
    return Registry(storage, ca.registry(), region=REGION, account=ACCOUNT)
