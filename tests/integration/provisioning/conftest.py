"""Fixtures of the daemon's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.appliance import Fleet
from tests.integration.endpoint.conftest import need_endpoint


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The provisioning endpoint (``registry serve``), an operational broker and a watcher."""
    need_endpoint()
    running = Fleet(tmp_path_factory.mktemp("fleet"))
    running.start()
    try:
        yield running
    finally:
        running.stop()
