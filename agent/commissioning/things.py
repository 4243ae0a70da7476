"""Managed things (``CreateManagedThing``): creation, idempotency, lifecycle, storage.

A thing is created ``UNASSOCIATED`` from a validated request whose
``AuthenticationMaterial`` parsed as its ``AuthenticationMaterialType``; a radio backend
then moves it ``PRE_ASSOCIATED`` (the code is handed to the radio), ``DISCOVERED`` (the
device joined) and ``ACTIVATED`` (it is set up). A failure moves it to ``FAILED`` with a
reason and a message; a failed thing may be tried again (``PRE_ASSOCIATED``). Every change is
committed to SQLite before the notifier hears of it, together with a row in
``managed_thing_changes`` that stays until the change is in the MQTT outbox
(:mod:`agent.commissioning.reporting`).

``ClientToken``: the same token with the same body returns the first answer again; the same
token with another body is a ``ConflictException``. One device (same IEEE, DSK, SSID or DPP
key hash) is managed once.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import re
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final

from agent.commissioning.notify import CommissioningNotifier, JournalNotifier, ThingEvent
from agent.commissioning.qr.base import REDACTED, QrPayload
from agent.errors import (
    ConfigError,
    ConflictError,
    FieldProblem,
    ResourceNotFoundError,
    ValidationError,
)
from agent.store import Store

COMPONENT = "commissioning"
MIGRATIONS: Final = (
    """
    CREATE TABLE managed_things (
        id            TEXT PRIMARY KEY,
        arn           TEXT NOT NULL UNIQUE,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL,
        status        TEXT NOT NULL,
        role          TEXT NOT NULL,
        material_type TEXT NOT NULL,
        format        TEXT NOT NULL,
        device_key    TEXT NOT NULL UNIQUE,
        request       TEXT NOT NULL,
        failure_reason  TEXT,
        failure_message TEXT
    );
    CREATE TABLE managed_thing_tokens (
        client_token TEXT PRIMARY KEY,
        body_hash    TEXT NOT NULL,
        thing_id     TEXT NOT NULL,
        response     TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE managed_thing_changes (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,
        body TEXT NOT NULL
    );
    """,
)
#: Unreported changes kept at most (the oldest go first when nothing reports them).
MAX_PENDING_CHANGES = 10_000

UNASSOCIATED = "UNASSOCIATED"
PRE_ASSOCIATED = "PRE_ASSOCIATED"
DISCOVERED = "DISCOVERED"
ACTIVATED = "ACTIVATED"
FAILED = "FAILED"
STATUSES = (UNASSOCIATED, PRE_ASSOCIATED, DISCOVERED, ACTIVATED, FAILED)
_NEXT: Final = {
    UNASSOCIATED: {PRE_ASSOCIATED, FAILED},
    PRE_ASSOCIATED: {DISCOVERED, FAILED},
    DISCOVERED: {ACTIVATED, FAILED},
    ACTIVATED: set[str](),
    FAILED: {PRE_ASSOCIATED},
}
ARN_PATTERN = re.compile(
    r"arn:aws:iotmanagedintegrations:[0-9a-zA-Z-]+:[0-9]+:managed-thing/([0-9a-zA-Z:_-])+"
)
_REGION = re.compile(r"[0-9a-zA-Z-]+")
_ACCOUNT = re.compile(r"[0-9]+")
CREATED_STATUS = 201


@dataclass(frozen=True, slots=True)
class CreateResult:
    """The answer to a create: HTTP status 201 and the seed's ``{Arn, CreatedAt, Id}``."""

    status_code: int
    body: dict[str, Any]
    _: KW_ONLY
    replayed: bool


def device_key(payload: QrPayload) -> str:
    """What identifies the device behind a code (never a secret itself)."""
    f = payload.fields
    if payload.authentication_material_type == "ZIGBEE_QR_BAR_CODE":
        return f"zigbee:{f['ieee']}"
    if payload.authentication_material_type == "ZWAVE_QR_BAR_CODE":
        # The DSK is secret: key on its hash.
        return "zwave:" + hashlib.sha256(f["dsk"].encode()).hexdigest()[:32]
    if payload.format == "dpp":
        return f"dpp:{f['pkhash']}"
    return "wifi:" + hashlib.sha256(f["ssid"].encode()).hexdigest()[:32]


def _body_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ManagedThings:
    """The managed things of this appliance, in the agent's SQLite store."""

    def __init__(
        self,
        store: Store,
        *,
        region: str,
        account: str,
        notifier: CommissioningNotifier | None = None,
        repair_zigbee_crc: bool = False,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if not _REGION.fullmatch(region) or not _ACCOUNT.fullmatch(account):
            raise ConfigError(
                "registry.region and registry.account must make a valid ARN",
                fields=[FieldProblem("registry.region", "letters, digits and '-'")],
            )
        self._store = store
        self._arn_prefix = f"arn:aws:iotmanagedintegrations:{region}:{account}:managed-thing/"
        self._notifier = notifier or JournalNotifier()
        self._repair = repair_zigbee_crc
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        store.migrate(COMPONENT, MIGRATIONS)

    def _now(self) -> float:
        return self._clock().timestamp()

    def create(self, body: Any) -> CreateResult:
        """Create a managed thing from a ``CreateManagedThing`` body.

        Raises:
            ValidationError: a field is invalid or the material is not a valid code of its
                type.
            ConflictError: the client token was used with another body, or the device is
                already managed.
        """
        # the request rules and the QR parsers load with the first request (an appliance
        # that never commissions does not hold them)
        from agent.commissioning.schema import validate_create_request  # noqa: PLC0415

        request, payload = validate_create_request(body, repair_zigbee_crc=self._repair)
        token = request.get("ClientToken")
        digest = _body_hash(request)
        with self._store.transaction() as db:
            if token is not None:
                row = db.execute(
                    "SELECT body_hash, response FROM managed_thing_tokens WHERE client_token = ?",
                    (token,),
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != digest:
                        raise ConflictError(
                            "this ClientToken was used with different parameters",
                            reason="CLIENT_TOKEN_CONFLICT",
                            fields=[FieldProblem("ClientToken", "used with another request")],
                        )
                    return CreateResult(CREATED_STATUS, json.loads(row["response"]), replayed=True)
            thing_id = uuid.uuid4().hex
            now = self._now()
            response: dict[str, Any] = {
                "Arn": self._arn_prefix + thing_id,
                "CreatedAt": now,
                "Id": thing_id,
            }
            try:
                db.execute(
                    "INSERT INTO managed_things (id, arn, created_at, updated_at, status, role,"
                    " material_type, format, device_key, request) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        thing_id,
                        response["Arn"],
                        now,
                        now,
                        UNASSOCIATED,
                        request["Role"],
                        request["AuthenticationMaterialType"],
                        payload.format,
                        device_key(payload),
                        json.dumps(request),
                    ),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(
                    "this device is already a managed thing",
                    reason="DEVICE_ALREADY_MANAGED",
                    fields=[FieldProblem("AuthenticationMaterial", "device already managed")],
                ) from None
            if token is not None:
                db.execute(
                    "INSERT INTO managed_thing_tokens VALUES (?,?,?,?)",
                    (token, digest, thing_id, json.dumps(response)),
                )
            event = ThingEvent(thing_id, response["Arn"], UNASSOCIATED, None, now)
            _record_change(db, event)
        self._notifier.thing_changed(event)
        return CreateResult(CREATED_STATUS, response, replayed=False)

    def _row(self, thing_id: str) -> sqlite3.Row:
        row = self._store.db.execute(
            "SELECT * FROM managed_things WHERE id = ?", (thing_id,)
        ).fetchone()
        if row is None:
            raise ResourceNotFoundError(
                "no managed thing has this id", fields=[FieldProblem("Identifier", "not found")]
            )
        return row  # type: ignore[no-any-return] # sqlite3.Row from the row factory

    def describe(self, thing_id: str, *, show_secrets: bool = False) -> dict[str, Any]:
        """The thing with its request and decoded code (secrets redacted unless asked)."""
        out = _describe(self._row(thing_id), show_secrets=show_secrets)
        out["Device"] = self.payload(thing_id).to_dict(show_secrets=show_secrets)
        return out

    def status(self, thing_id: str) -> str:
        """A thing's ``ProvisioningStatus``."""
        return str(self._row(thing_id)["status"])

    def payload(self, thing_id: str) -> QrPayload:
        """The parsed code of a thing (for its radio backend)."""
        request = json.loads(self._row(thing_id)["request"])
        from agent.commissioning.qr import parse  # noqa: PLC0415 - see create

        return parse(request["AuthenticationMaterial"], repair_zigbee_crc=self._repair)

    def list(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Every thing (summaries), oldest first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise ValidationError(
                f"status must be one of {', '.join(STATUSES)}",
                fields=[FieldProblem("ProvisioningStatus", "unknown status")],
            )
        rows = self._store.db.execute(
            "SELECT * FROM managed_things WHERE ? IS NULL OR status = ? ORDER BY created_at, id",
            (status, status),
        ).fetchall()
        return [_summary(row) for row in rows]

    def delete(self, thing_id: str) -> None:
        """Forget a thing (and its client tokens)."""
        with self._store.transaction() as db:
            cursor = db.execute("DELETE FROM managed_things WHERE id = ?", (thing_id,))
            if cursor.rowcount == 0:
                raise ResourceNotFoundError(
                    "no managed thing has this id",
                    fields=[FieldProblem("Identifier", "not found")],
                )
            db.execute("DELETE FROM managed_thing_tokens WHERE thing_id = ?", (thing_id,))

    def transition(
        self, thing_id: str, status: str, *, reason: str | None = None, message: str | None = None
    ) -> ThingEvent:
        """Move a thing to ``status`` (``FAILED`` needs a reason); commit, then notify.

        A reason given with another status (``LOW_SECURITY_INCLUSION``) is reported on the
        event only.

        Raises:
            ResourceNotFoundError: no such thing.
            ConflictError: the lifecycle does not allow this move.
        """
        if status == FAILED and not reason:
            raise ValueError("a failure needs its reason")
        now = self._now()
        with self._store.transaction() as db:
            row = db.execute(
                "SELECT arn, status FROM managed_things WHERE id = ?", (thing_id,)
            ).fetchone()
            if row is None:
                raise ResourceNotFoundError(
                    "no managed thing has this id",
                    fields=[FieldProblem("Identifier", "not found")],
                )
            previous = row["status"]
            if status not in _NEXT[previous]:
                raise ConflictError(
                    f"a {previous} thing cannot become {status}",
                    reason="INVALID_STATUS_TRANSITION",
                )
            db.execute(
                "UPDATE managed_things SET status = ?, updated_at = ?, failure_reason = ?,"
                " failure_message = ? WHERE id = ?",
                (
                    status,
                    now,
                    reason if status == FAILED else None,
                    message if status == FAILED else None,
                    thing_id,
                ),
            )
            event = ThingEvent(thing_id, row["arn"], status, previous, now, reason, message)
            _record_change(db, event)
        self._notifier.thing_changed(event)
        return event

    def counts(self) -> dict[str, int]:
        """How many things have each status."""
        rows = self._store.db.execute(
            "SELECT status, COUNT(*) AS n FROM managed_things GROUP BY status ORDER BY status"
        ).fetchall()
        return {str(row["status"]): int(row["n"]) for row in rows}

    def pending_count(self) -> int:
        """Changes not yet handed to the MQTT outbox."""
        return int(
            self._store.db.execute("SELECT COUNT(*) FROM managed_thing_changes").fetchone()[0]
        )

    def pending_changes(self, limit: int = 500) -> builtins.list[tuple[int, dict[str, Any]]]:
        """Changes not yet handed to the MQTT outbox, oldest first: (change id, event body)."""
        rows = self._store.db.execute(
            "SELECT seq, body FROM managed_thing_changes ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(row["seq"]), json.loads(row["body"])) for row in rows]

    def changes_reported(self, change_ids: builtins.list[int]) -> None:
        """Forget changes the outbox holds durably now."""
        with self._store.transaction() as db:
            db.executemany(
                "DELETE FROM managed_thing_changes WHERE seq = ?", [(i,) for i in change_ids]
            )


def _record_change(db: sqlite3.Connection, event: ThingEvent) -> None:
    """Queue a change for MQTT in the transaction that makes it (so none is ever lost)."""
    cursor = db.execute(
        "INSERT INTO managed_thing_changes (body) VALUES (?)", (json.dumps(event.body()),)
    )
    db.execute(
        "DELETE FROM managed_thing_changes WHERE seq <= ?",
        ((cursor.lastrowid or 0) - MAX_PENDING_CHANGES,),
    )


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    out = {
        "Id": row["id"],
        "Arn": row["arn"],
        "CreatedAt": row["created_at"],
        "UpdatedAt": row["updated_at"],
        "ProvisioningStatus": row["status"],
        "Role": row["role"],
        "AuthenticationMaterialType": row["material_type"],
        "Format": row["format"],
    }
    if row["failure_reason"]:
        out["FailureReason"] = row["failure_reason"]
        out["FailureMessage"] = row["failure_message"]
    return out


def _describe(row: sqlite3.Row, *, show_secrets: bool) -> dict[str, Any]:
    request = json.loads(row["request"])
    if not show_secrets:
        request["AuthenticationMaterial"] = REDACTED
    request.pop("ClientToken", None)
    return {**_summary(row), **request}
