"""The Debian package, built once for this directory's tests (``tests/helpers/debpkg.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.debpkg import Package, build_package, prepare_overlay


@pytest.fixture(scope="package")
def package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    """The package built from this checkout, with its tree and control files unpacked."""
    return build_package(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="package")
def overlay(package: Package, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package over / (private mount namespaces), its postinst run."""
    return prepare_overlay(package, tmp_path_factory.mktemp("overlay"))
