"""A running ``edge-agent registry serve`` (real mosquitto, plugin, worker, TLS) per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.registry.serve import plugin_path
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.endpoint import EndpointPki, Serve, add_template, serve, write_config


def need_endpoint() -> None:
    """mosquitto and the built plugin, or skip (fail under CI)."""
    try:
        plugin_path()
        missing = "" if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else "x"
    except Exception:  # noqa: BLE001
        missing = "plugin"
    if missing:
        message = "mosquitto or edge_registry_plugin.so missing: run scripts/setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Endpoint:
    pki: EndpointPki
    database: Path
    config: Path
    serve: Serve

    @property
    def port(self) -> int:
        return self.serve.port

    def storage(self) -> SqliteRegistryStorage:
        return SqliteRegistryStorage.open(self.database)


def start_endpoint(directory: Path, **registry: object) -> Endpoint:
    need_endpoint()
    pki = EndpointPki(directory)
    database = directory / "registry.db"
    config = write_config(directory / "agent.toml", pki, database, **registry)
    add_template(database)
    return Endpoint(pki, database, config, serve(config, pki))


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    running = start_endpoint(tmp_path_factory.mktemp("endpoint"))
    try:
        yield running
    finally:
        running.serve.stop()
