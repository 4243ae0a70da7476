"""How the template store and bulk registration plug into the registry.

* :func:`template_body_validator`: the template store's body check,
  :func:`agent.registry.template.validate_template_body` (the engine accepts the body and
  it suits its type, one rule set for create and update). Problems keep the engine's JSON
  paths, prefixed with ``templateBody.``.
* :func:`bulk_registrar_factory`: each bulk line is prepared by the registry outside any
  transaction (CSR signing, evaluation) and committed inside the bulk task's open
  transaction, so registrations and task progress commit together.
* :func:`open_registry_store`, :func:`template_store`, :func:`bulk_tasks`: the objects the
  CLI (``edge-agent template|bulk ...``) and the local API both run their requests on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.fsutil import ensure_dir
from agent.registry.bulk import BulkTasks, Registrar, RegistrarFactory
from agent.registry.register import PreparedRegistration, Registry
from agent.registry.storage import SqliteRegistryStorage, SqliteRegistryTransaction
from agent.registry.template import Template, parse_template, validate_template_body
from agent.registry.templates_store import BodyValidator, TemplateStore
from agent.store import Store


def registry_db_path(config: AgentConfig) -> Path:
    """The database shared by the registry, the template store and bulk tasks."""
    return config.registry.database


def template_body_validator(config: AgentConfig) -> BodyValidator:
    """The body validator for :class:`~agent.registry.templates_store.TemplateStore`."""
    del config
    return validate_template_body


class RegistryLineRegistrar:
    """Bulk lines through the registry: prepared outside the write lock, then committed.

    :meth:`prepare` checks the parameters, signs a CSR and evaluates the template without
    holding the database's write lock (other writers, such as the fleet-provisioning
    service, are not held up by the CPU-heavy part); :meth:`commit` writes the registration
    inside the bulk task's open transaction, so it commits with the task's progress.
    """

    def __init__(self, registry: Registry, template: Template) -> None:
        self._registry = registry
        self._template = template

    def prepare(self, parameters: dict[str, Any]) -> PreparedRegistration:
        """Check and evaluate one line (RegisterThing without its writes)."""
        return self._registry.prepare(self._template, parameters)

    def commit(self, db: sqlite3.Connection, prepared: PreparedRegistration) -> Mapping[str, Any]:
        """Write one prepared line inside the open transaction ``db``."""
        transaction = SqliteRegistryTransaction(db)
        return self._registry.commit(prepared, transaction=transaction).to_dict()


def registrar_factory(registry: Registry) -> RegistrarFactory:
    """Per-line registrars running the registry's RegisterThing in the bulk transaction."""

    def build(template_body: str) -> Registrar:
        return RegistryLineRegistrar(registry, parse_template(template_body))

    return build


def bulk_registrar_factory(config: AgentConfig, store: Store) -> RegistrarFactory:
    """The registrar factory for bulk tasks on ``store`` (the registry's database)."""
    storage = SqliteRegistryStorage(store)
    return registrar_factory(Registry.from_config(config.registry, storage=storage))


def open_registry_store(config: AgentConfig) -> Store:
    """Open (creating its directory if needed) the registry's database."""
    path = registry_db_path(config)
    ensure_dir(path.parent)
    return Store(path)


def template_store(config: AgentConfig, store: Store) -> TemplateStore:
    """The provisioning-template store on ``store``, with the engine's body check."""
    return TemplateStore(
        store,
        region=config.registry.region,
        account=config.registry.account,
        body_validator=template_body_validator(config),
    )


def bulk_reports_dir(config: AgentConfig) -> Path:
    """Where task reports go: ``bulk-reports/`` beside the registry database."""
    return config.registry.database.parent / "bulk-reports"


def bulk_tasks(config: AgentConfig, store: Store) -> BulkTasks:
    """Thing registration tasks on ``store``, registering through the registry."""

    def registrar(body: str) -> Registrar:
        # built on first use: describe, cancel and reports never touch the registry tables
        return bulk_registrar_factory(config, store)(body)

    return BulkTasks(
        store,
        bulk_root=config.registry.bulk_root,
        # registry output stays beside the registry's own files, whatever [agent] says
        reports_dir=bulk_reports_dir(config),
        registrar_factory=registrar,
        # RegisterThing checks everything before its first write: a refused line wrote nothing
        line_savepoints=False,
    )
