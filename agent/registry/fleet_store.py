"""Fleet-provisioning state in the registry database: ownership tokens and claim use.

Everything a worker needs to serve any step of any device lives here, so several workers
(and a restarted one) can share the load:

* ``fleet_tokens``: one row per ``certificateOwnershipToken``, keyed by the token's SHA-256
  (the token itself is never stored), bound to the certificate it was issued for and to the
  SHA-256 fingerprint of the claim certificate that asked for it, with its expiry. After a
  successful RegisterThing it holds the reply, so a device that lost the answer and retries
  with the same token gets the same answer and nothing is registered twice.
* ``fleet_csr_requests``: which certificate was issued for a (claim, CSR) pair, so a device
  that retries CreateCertificateFromCsr gets the same certificate, not a second one.
* ``fleet_claims``: how many successful registrations each claim certificate made.

Tables are written inside the registry's own transactions (component ``fleet`` of the
registry's :class:`~agent.store.Store`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from dataclasses import dataclass

from agent.store import Store

COMPONENT = "fleet"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE fleet_tokens (
        token_sha256   TEXT PRIMARY KEY,
        certificate_id TEXT NOT NULL,
        claim_sha256   TEXT NOT NULL,
        expires_at     TEXT NOT NULL,
        template_name  TEXT,
        result         TEXT
    );
    CREATE TABLE fleet_csr_requests (
        claim_sha256   TEXT NOT NULL,
        csr_sha256     TEXT NOT NULL,
        certificate_id TEXT NOT NULL,
        PRIMARY KEY (claim_sha256, csr_sha256)
    );
    CREATE TABLE fleet_claims (
        claim_sha256  TEXT PRIMARY KEY,
        registrations INTEGER NOT NULL,
        last_thing    TEXT
    );
    """,
)


def digest(value: str) -> str:
    """SHA-256 of a UTF-8 string, 64 hex."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored ownership token (without the token)."""

    certificate_id: str
    claim_sha256: str
    expires_at: dt.datetime
    template_name: str | None
    result: str | None


def migrate(store: Store) -> None:
    """Create or upgrade the tables."""
    if store.version(COMPONENT) != len(MIGRATIONS):
        store.migrate(COMPONENT, MIGRATIONS)


def find_csr(db: sqlite3.Connection, claim_sha256: str, csr_sha256: str) -> str | None:
    """The certificate already issued for this claim and CSR, if any."""
    row = db.execute(
        "SELECT certificate_id FROM fleet_csr_requests WHERE claim_sha256 = ? AND csr_sha256 = ?",
        (claim_sha256, csr_sha256),
    ).fetchone()
    return str(row[0]) if row else None


def record_csr(db: sqlite3.Connection, claim_sha256: str, csr_sha256: str, cert_id: str) -> None:
    """Remember the certificate issued for this claim and CSR."""
    db.execute(
        "INSERT INTO fleet_csr_requests(claim_sha256, csr_sha256, certificate_id) VALUES (?,?,?)",
        (claim_sha256, csr_sha256, cert_id),
    )


def add_token(
    db: sqlite3.Connection,
    token: str,
    *,
    certificate_id: str,
    claim_sha256: str,
    expires_at: dt.datetime,
) -> None:
    """Store a new ownership token (by its hash)."""
    db.execute(
        "INSERT INTO fleet_tokens(token_sha256, certificate_id, claim_sha256, expires_at) "
        "VALUES (?, ?, ?, ?)",
        (digest(token), certificate_id, claim_sha256, _ts(expires_at)),
    )


def get_token(db: sqlite3.Connection, token: str) -> TokenRecord | None:
    """The stored token, if it exists."""
    row = db.execute(
        "SELECT certificate_id, claim_sha256, expires_at, template_name, result "
        "FROM fleet_tokens WHERE token_sha256 = ?",
        (digest(token),),
    ).fetchone()
    if row is None:
        return None
    return TokenRecord(
        str(row[0]),
        str(row[1]),
        dt.datetime.fromisoformat(str(row[2])),
        None if row[3] is None else str(row[3]),
        None if row[4] is None else str(row[4]),
    )


def spend_token(db: sqlite3.Connection, token: str, template_name: str, result: str) -> None:
    """Record the successful registration made with a token."""
    db.execute(
        "UPDATE fleet_tokens SET template_name = ?, result = ? WHERE token_sha256 = ?",
        (template_name, result, digest(token)),
    )


def claim_registrations(db: sqlite3.Connection, claim_sha256: str) -> int:
    """How many successful registrations the claim certificate made."""
    row = db.execute(
        "SELECT registrations FROM fleet_claims WHERE claim_sha256 = ?", (claim_sha256,)
    ).fetchone()
    return int(row[0]) if row else 0


def count_registration(db: sqlite3.Connection, claim_sha256: str, thing_name: str) -> None:
    """Count one more successful registration for the claim certificate."""
    db.execute(
        "INSERT INTO fleet_claims(claim_sha256, registrations, last_thing) VALUES (?, 1, ?) "
        "ON CONFLICT(claim_sha256) DO UPDATE SET registrations = registrations + 1, "
        "last_thing = excluded.last_thing",
        (claim_sha256, thing_name),
    )
