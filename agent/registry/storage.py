"""The registry's storage: things, certificates, policies and their attachments.

Everything the registry keeps goes through one interface, :class:`RegistryStorage`, so a
PostgreSQL implementation can sit beside the embedded SQLite one
(:class:`SqliteRegistryStorage`, component ``registry`` of :class:`agent.store.Store`).

Writes happen inside :meth:`RegistryStorage.transaction`; one transaction may carry many
registrations (bulk registration commits a batch of lines at once). The registry checks a
registration completely before its first write, so a refused one leaves nothing behind;
:meth:`RegistryTransaction.savepoint` undoes a caller's own partial work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self, cast

from agent.store import Store

CertificateStatus = Literal["ACTIVE", "INACTIVE"]


@dataclass(frozen=True, slots=True)
class ThingRecord:
    """A thing in the registry."""

    name: str
    thing_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    thing_type_name: str | None = None
    thing_groups: tuple[str, ...] = ()
    billing_group: str | None = None
    version: int = 1
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A device certificate known to the registry (id = 64-hex SHA-256 fingerprint)."""

    certificate_id: str
    certificate_pem: str
    status: CertificateStatus = "ACTIVE"
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """An IoT policy (its document is JSON text)."""

    name: str
    document: str
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True, slots=True)
class HookDecisionRecord:
    """What the pre-provisioning hook answered for one registration."""

    certificate_id: str
    template_arn: str
    allowed: bool
    reason: str
    detail: str
    decided_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class RegistryReader(Protocol):
    """Read access to the registry."""

    def get_thing(self, name: str) -> ThingRecord | None:
        """The thing called ``name``, or None."""

    def get_certificate(self, certificate_id: str) -> CertificateRecord | None:
        """The certificate with this id, or None."""

    def get_policy(self, name: str) -> PolicyRecord | None:
        """The policy called ``name``, or None."""

    def thing_principals(self, thing_name: str) -> tuple[str, ...]:
        """Ids of the certificates attached to a thing."""

    def certificate_policies(self, certificate_id: str) -> tuple[str, ...]:
        """Names of the policies attached to a certificate."""

    def hook_decisions(self, certificate_id: str) -> tuple[HookDecisionRecord, ...]:
        """The hook decisions recorded for a certificate, oldest first."""

    def count_things(self) -> int:
        """How many things the registry holds."""

    def things_in_group(self, group_name: str) -> tuple[str, ...]:
        """Names of the things in a thing group, sorted."""

    def thing_groups(self) -> tuple[str, ...]:
        """Every thing group some thing belongs to, sorted."""


class RegistryTransaction(RegistryReader, Protocol):
    """One write transaction; it commits when its context ends without an exception."""

    def put_thing(self, thing: ThingRecord) -> None:
        """Create or replace a thing (and its group memberships)."""

    def put_certificate(self, certificate: CertificateRecord) -> None:
        """Create or replace a certificate."""

    def put_policy(self, policy: PolicyRecord) -> None:
        """Create or replace a policy."""

    def attach_principal(self, thing_name: str, certificate_id: str) -> None:
        """Attach a certificate to a thing (idempotent)."""

    def attach_policy(self, policy_name: str, certificate_id: str) -> None:
        """Attach a policy to a certificate (idempotent)."""

    def record_hook_decision(self, decision: HookDecisionRecord) -> None:
        """Keep what the pre-provisioning hook decided."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested unit: on exception everything written inside it is undone."""


class RegistryStorage(RegistryReader, Protocol):
    """The registry's storage backend."""

    def transaction(self) -> AbstractContextManager[RegistryTransaction]:
        """A write transaction (serialised against other writers, threads and processes)."""

    def close(self) -> None:
        """Release the backend."""


COMPONENT = "registry"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE registry_things (
        name            TEXT PRIMARY KEY,
        thing_id        TEXT NOT NULL,
        attributes      TEXT NOT NULL,
        thing_type_name TEXT,
        thing_groups    TEXT NOT NULL,
        billing_group   TEXT,
        version         INTEGER NOT NULL,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL
    );
    CREATE TABLE registry_certificates (
        certificate_id  TEXT PRIMARY KEY,
        certificate_pem TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE')),
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL
    );
    CREATE TABLE registry_policies (
        name       TEXT PRIMARY KEY,
        document   TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE registry_thing_principals (
        thing_name     TEXT NOT NULL REFERENCES registry_things(name),
        certificate_id TEXT NOT NULL REFERENCES registry_certificates(certificate_id),
        PRIMARY KEY (thing_name, certificate_id)
    );
    CREATE TABLE registry_policy_principals (
        policy_name    TEXT NOT NULL REFERENCES registry_policies(name),
        certificate_id TEXT NOT NULL REFERENCES registry_certificates(certificate_id),
        PRIMARY KEY (policy_name, certificate_id)
    );
    CREATE TABLE registry_hook_decisions (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        certificate_id TEXT NOT NULL,
        template_arn   TEXT NOT NULL,
        allowed        INTEGER NOT NULL,
        reason         TEXT NOT NULL,
        detail         TEXT NOT NULL,
        decided_at     TEXT NOT NULL
    );
    CREATE INDEX registry_hook_decisions_cert ON registry_hook_decisions(certificate_id);
    """,
)


_json = json.JSONEncoder(separators=(",", ":")).encode


@functools.lru_cache(maxsize=16)
def _ts(value: dt.datetime) -> str:
    # Cached: the registrations of one batch share one timestamp.
    return value.astimezone(dt.UTC).isoformat()


def _dt(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class _SqliteReader:
    """Reads shared by the storage and its transactions (one connection)."""

    _db: sqlite3.Connection

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    def get_thing(self, name: str) -> ThingRecord | None:
        """The thing called ``name``, or None."""
        row = self._one(
            "SELECT name, thing_id, attributes, thing_type_name, thing_groups, billing_group, "
            "version, created_at, updated_at FROM registry_things WHERE name = ?",
            (name,),
        )
        if row is None:
            return None
        return ThingRecord(
            name=row[0],
            thing_id=row[1],
            attributes=json.loads(row[2]),
            thing_type_name=row[3],
            thing_groups=tuple(json.loads(row[4])),
            billing_group=row[5],
            version=row[6],
            created_at=_dt(row[7]),
            updated_at=_dt(row[8]),
        )

    def get_certificate(self, certificate_id: str) -> CertificateRecord | None:
        """The certificate with this id, or None."""
        row = self._one(
            "SELECT certificate_id, certificate_pem, status, created_at, updated_at "
            "FROM registry_certificates WHERE certificate_id = ?",
            (certificate_id,),
        )
        if row is None:
            return None
        return CertificateRecord(
            certificate_id=row[0],
            certificate_pem=row[1],
            status=cast("CertificateStatus", row[2]),
            created_at=_dt(row[3]),
            updated_at=_dt(row[4]),
        )

    def get_policy(self, name: str) -> PolicyRecord | None:
        """The policy called ``name``, or None."""
        row = self._one(
            "SELECT name, document, created_at FROM registry_policies WHERE name = ?", (name,)
        )
        if row is None:
            return None
        return PolicyRecord(name=row[0], document=row[1], created_at=_dt(row[2]))

    def thing_principals(self, thing_name: str) -> tuple[str, ...]:
        """Ids of the certificates attached to a thing."""
        rows = self._all(
            "SELECT certificate_id FROM registry_thing_principals WHERE thing_name = ? "
            "ORDER BY certificate_id",
            (thing_name,),
        )
        return tuple(r[0] for r in rows)

    def certificate_policies(self, certificate_id: str) -> tuple[str, ...]:
        """Names of the policies attached to a certificate."""
        rows = self._all(
            "SELECT policy_name FROM registry_policy_principals WHERE certificate_id = ? "
            "ORDER BY policy_name",
            (certificate_id,),
        )
        return tuple(r[0] for r in rows)

    def hook_decisions(self, certificate_id: str) -> tuple[HookDecisionRecord, ...]:
        """The hook decisions recorded for a certificate, oldest first."""
        rows = self._all(
            "SELECT certificate_id, template_arn, allowed, reason, detail, decided_at "
            "FROM registry_hook_decisions WHERE certificate_id = ? ORDER BY id",
            (certificate_id,),
        )
        return tuple(
            HookDecisionRecord(r[0], r[1], bool(r[2]), r[3], r[4], _dt(r[5])) for r in rows
        )

    def count_things(self) -> int:
        """How many things the registry holds."""
        return int(self._one("SELECT count(*) FROM registry_things")[0])

    def things_in_group(self, group_name: str) -> tuple[str, ...]:
        """Names of the things in a thing group, sorted."""
        rows = self._all(
            "SELECT t.name FROM registry_things AS t, json_each(t.thing_groups) AS g "
            "WHERE g.value = ? ORDER BY t.name",
            (group_name,),
        )
        return tuple(r[0] for r in rows)

    def thing_groups(self) -> tuple[str, ...]:
        """Every thing group some thing belongs to, sorted."""
        rows = self._all(
            "SELECT DISTINCT g.value FROM registry_things AS t, json_each(t.thing_groups) AS g "
            "ORDER BY g.value"
        )
        return tuple(r[0] for r in rows)


class SqliteRegistryTransaction(_SqliteReader):
    """A write transaction on :class:`SqliteRegistryStorage` (see :class:`RegistryTransaction`).

    ``db`` is the connection inside the open transaction: a component sharing the same
    database (bulk registration's progress) may write its own rows there so they commit
    atomically with the registrations.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._savepoints = itertools.count(1)
        # Policies change only through this transaction while it holds the write lock.
        self._policies: dict[str, PolicyRecord | None] = {}

    def get_policy(self, name: str) -> PolicyRecord | None:
        """The policy called ``name``, or None (cached for the transaction)."""
        try:
            return self._policies[name]
        except KeyError:
            policy = super().get_policy(name)
            self._policies[name] = policy
            return policy

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, inside the open transaction."""
        return self._db

    def put_thing(self, thing: ThingRecord) -> None:
        """Create or replace a thing (and its group memberships)."""
        self._db.execute(
            "INSERT INTO registry_things(name, thing_id, attributes, thing_type_name, "
            "thing_groups, billing_group, version, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "attributes = excluded.attributes, thing_type_name = excluded.thing_type_name, "
            "thing_groups = excluded.thing_groups, billing_group = excluded.billing_group, "
            "version = excluded.version, updated_at = excluded.updated_at",
            (
                thing.name,
                thing.thing_id,
                _json(thing.attributes),
                thing.thing_type_name,
                _json(thing.thing_groups),
                thing.billing_group,
                thing.version,
                _ts(thing.created_at),
                _ts(thing.updated_at),
            ),
        )

    def put_certificate(self, certificate: CertificateRecord) -> None:
        """Create or replace a certificate."""
        self._db.execute(
            "INSERT INTO registry_certificates(certificate_id, certificate_pem, status, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(certificate_id) "
            "DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            (
                certificate.certificate_id,
                certificate.certificate_pem,
                certificate.status,
                _ts(certificate.created_at),
                _ts(certificate.updated_at),
            ),
        )

    def put_policy(self, policy: PolicyRecord) -> None:
        """Create or replace a policy."""
        self._db.execute(
            "INSERT INTO registry_policies(name, document, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET document = excluded.document",
            (policy.name, policy.document, _ts(policy.created_at)),
        )
        self._policies[policy.name] = policy

    def attach_principal(self, thing_name: str, certificate_id: str) -> None:
        """Attach a certificate to a thing (idempotent)."""
        self._db.execute(
            "INSERT OR IGNORE INTO registry_thing_principals(thing_name, certificate_id) "
            "VALUES (?, ?)",
            (thing_name, certificate_id),
        )

    def attach_policy(self, policy_name: str, certificate_id: str) -> None:
        """Attach a policy to a certificate (idempotent)."""
        self._db.execute(
            "INSERT OR IGNORE INTO registry_policy_principals(policy_name, certificate_id) "
            "VALUES (?, ?)",
            (policy_name, certificate_id),
        )

    def record_hook_decision(self, decision: HookDecisionRecord) -> None:
        """Keep what the pre-provisioning hook decided."""
        self._db.execute(
            "INSERT INTO registry_hook_decisions(certificate_id, template_arn, allowed, "
            "reason, detail, decided_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                decision.certificate_id,
                decision.template_arn,
                int(decision.allowed),
                decision.reason,
                decision.detail,
                _ts(decision.decided_at),
            ),
        )

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit: on exception everything written inside it is undone."""
        name = f"registry_sp{next(self._savepoints)}"
        self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._policies.clear()
            self._db.execute(f"ROLLBACK TO {name}")
            self._db.execute(f"RELEASE {name}")
            raise
        self._db.execute(f"RELEASE {name}")


class SqliteRegistryStorage(_SqliteReader):
    """:class:`RegistryStorage` on SQLite (:class:`agent.store.Store`, component ``registry``).

    Threads share the one connection under a lock; processes are serialised by SQLite
    (``BEGIN IMMEDIATE`` in WAL mode, with the store's busy timeout).
    """

    def __init__(self, store: Store, *, owns_store: bool = False) -> None:
        self.store = store
        self._owns_store = owns_store
        self._db = store.db
        self._lock = threading.RLock()
        store.migrate(COMPONENT, MIGRATIONS)

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open (creating if needed) the registry database at ``path``."""
        return cls(Store(path), owns_store=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteRegistryTransaction]:
        """A write transaction, committed durably when the block ends without an exception."""
        with self._lock, self.store.transaction() as db:
            yield SqliteRegistryTransaction(db)

    def close(self) -> None:
        """Close the database if this storage opened it."""
        if self._owns_store:
            self.store.close()
