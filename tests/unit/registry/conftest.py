"""Fixtures for registry tests: a CA, a SQLite registry on tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.registry.ca import CertificateAuthority, init_ca
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.forge import make_ca
from tests.helpers.registry_api import Host, make_config

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


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA directory (``ca init``) for the local API's registry routes."""
    directory = tmp_path_factory.mktemp("api-ca") / "ca"
    init_ca(directory)
    return directory


@pytest.fixture
def host(tmp_path: Path, ca_dir: Path) -> Host:
    """The registry routes' host on a configuration under tmp_path."""
    return Host(make_config(tmp_path, ca_dir))
