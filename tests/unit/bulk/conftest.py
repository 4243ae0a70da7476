"""Fixtures for the bulk and template tests: a state store and a simple per-line registrar."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidRequestError
from agent.registry.bulk import BulkTasks, Registrar
from agent.store import Store

ROLE = "arn:aws:iam::123456789012:role/Provisioning"


def thing_registrar(template_body: str) -> Registrar:
    """Registers a thing named by the ``ThingName`` parameter into ``test_things``."""
    if template_body == "invalid":
        raise InvalidRequestError("the template is not valid", reason="TEMPLATE_INVALID")

    def register(db: sqlite3.Connection, parameters: dict[str, Any]) -> Mapping[str, Any]:
        name = parameters.get("ThingName")
        if not all(isinstance(v, str) for v in parameters.values()):
            raise InvalidRequestError("parameter values are strings", reason="PARAMETER_INVALID")
        db.execute("INSERT INTO test_attempts(name) VALUES (?)", (name,))
        if name is None:
            raise InvalidRequestError("ThingName is required", reason="PARAMETER_MISSING")
        db.execute("INSERT INTO test_things(name) VALUES (?)", (name,))
        return {"certificatePem": "", "resourceArns": {"thing": f"arn:aws:iot:r:1:thing/{name}"}}

    return register


_TEST_TABLES = """
CREATE TABLE test_things (name TEXT PRIMARY KEY);
CREATE TABLE test_attempts (name TEXT);
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "registry.db") as st:
        st.migrate("test_things", [_TEST_TABLES])
        yield st


@pytest.fixture
def bulk_root(tmp_path: Path) -> Path:
    root = tmp_path / "bulk-root"
    (root / "factory").mkdir(parents=True)
    return root


@pytest.fixture
def make_tasks(store: Store, bulk_root: Path, tmp_path: Path) -> Callable[..., BulkTasks]:
    def make(**options: Any) -> BulkTasks:
        return BulkTasks(
            store,
            bulk_root=bulk_root,
            reports_dir=tmp_path / "reports",
            registrar_factory=thing_registrar,
            **{"batch_lines": 250, **options},
        )

    return make


@pytest.fixture
def tasks(make_tasks: Callable[..., BulkTasks]) -> BulkTasks:
    return make_tasks()
