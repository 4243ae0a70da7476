"""The provisioning-template store (seed: CreateProvisioningTemplate) with versions.

A template has a name, a type fixed at creation (``FLEET_PROVISIONING`` or ``JITP``), an
``enabled`` flag, a role ARN, an optional pre-provisioning hook (fleet provisioning only),
tags, and numbered versions of its body, one of which is the default. Every request is
validated field by field with the seed's lengths and patterns; a rejected request changes
nothing. Rules kept from AWS IoT:

* version ids count up from 1 and are never reused, even after a delete;
* the default version cannot be deleted (``DeleteConflictException`` 409); delete the
  template, or make another version the default first;
* a template holds at most ``max_versions`` versions (``VersionsLimitExceededException``
  409), and the store at most ``max_templates`` templates (``LimitExceededException`` 410).

Tables live in the ``templates`` component of the agent's SQLite :class:`~agent.store.Store`.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import (
    ConflictError,
    FieldProblem,
    InvalidRequestError,
    LimitExceededError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
)
from agent.registry import fieldcheck as fc
from agent.registry.template_fields import (
    TEMPLATE_NAME_RE,
    check_hook,
    check_tags,
    check_template_name,
    decode_token,
    encode_token,
    page_size,
)
from agent.store import Store

COMPONENT = "templates"

TEMPLATE_TYPES = ("FLEET_PROVISIONING", "JITP")
MAX_TEMPLATE_BODY = 10240
MAX_DESCRIPTION = 500
DEFAULT_MAX_TEMPLATES = 256
DEFAULT_MAX_VERSIONS = 5

_MIGRATIONS = [
    """
    CREATE TABLE provisioning_templates (
        name                  TEXT PRIMARY KEY,
        arn                   TEXT NOT NULL,
        description           TEXT NOT NULL,
        type                  TEXT NOT NULL,
        enabled               INTEGER NOT NULL,
        provisioning_role_arn TEXT NOT NULL,
        pre_provisioning_hook TEXT,
        tags                  TEXT NOT NULL,
        default_version_id    INTEGER NOT NULL,
        last_version_id       INTEGER NOT NULL,
        creation_date         TEXT NOT NULL,
        last_modified_date    TEXT NOT NULL
    );
    CREATE TABLE provisioning_template_versions (
        template_name TEXT NOT NULL
            REFERENCES provisioning_templates(name) ON DELETE CASCADE,
        version_id    INTEGER NOT NULL,
        body          TEXT NOT NULL,
        creation_date TEXT NOT NULL,
        PRIMARY KEY (template_name, version_id)
    );
    """,
]

#: Checks a template body for a template type; raises InvalidRequestError when invalid.
BodyValidator = Callable[[str, str], None]


class VersionsLimitExceededError(ConflictError):
    """The template already has the maximum number of versions."""

    code = "VersionsLimitExceededException"
    status_code = 409
    default_reason = "VERSIONS_LIMIT_EXCEEDED"


class DeleteConflictError(ConflictError):
    """The version cannot be deleted (it is the template's default version)."""

    code = "DeleteConflictException"
    status_code = 409
    default_reason = "DELETE_CONFLICT"


def utc_now() -> str:
    """The current time as an RFC 3339 UTC string with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_body_validator() -> BodyValidator:
    """The template engine's check with the type rules (:func:`validate_template_body`)."""
    from agent.registry.template.types import validate_template_body  # noqa: PLC0415 - heavy

    return validate_template_body


class TemplateStore:
    """Provisioning templates and their versions in SQLite.

    Args:
        store: the agent's state store (tables of the ``templates`` component).
        region: AWS-style region used in template ARNs.
        account: account id used in template ARNs.
        body_validator: checks a body for a type (defaults to a JSON-object check; the
            registry passes the template engine's parser).
        max_templates: the most templates the store holds.
        max_versions: the most versions one template holds.
        clock: returns the current time as an RFC 3339 string (tests pass a fixed clock).
    """

    def __init__(
        self,
        store: Store,
        *,
        region: str = "us-east-1",
        account: str = "123456789012",
        body_validator: BodyValidator | None = None,
        max_templates: int = DEFAULT_MAX_TEMPLATES,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self._store = store
        self._region = region
        self._account = account
        self._validate_body = body_validator or default_body_validator()
        self._max_templates = max_templates
        self._max_versions = max_versions
        self._clock = clock
        if store.version(COMPONENT) != len(_MIGRATIONS):  # readers never wait for a writer
            store.migrate(COMPONENT, _MIGRATIONS)

    # --- helpers -------------------------------------------------------------------------

    def template_arn(self, name: str) -> str:
        """The ARN of template ``name``."""
        return f"arn:aws:iot:{self._region}:{self._account}:provisioningtemplate/{name}"

    def _check_body(self, body: str | None, template_type: str | None) -> None:
        if body is None or template_type is None:
            return
        self._validate_body(body, template_type)

    @staticmethod
    def _row(db: sqlite3.Connection, name: str) -> sqlite3.Row:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM provisioning_templates WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise ResourceNotFoundError(
                f"there is no provisioning template named {name!r}",
                reason="TEMPLATE_NOT_FOUND",
            )
        return row

    # --- templates -----------------------------------------------------------------------

    def validate_create(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a CreateProvisioningTemplate request without storing it.

        Returns:
            The normalised request (defaults filled in).

        Raises:
            InvalidRequestError: any field is invalid (every problem listed).
        """
        if not isinstance(request, Mapping):
            raise InvalidRequestError(
                "the CreateProvisioningTemplate request must be a JSON object",
                reason=fc.WRONG_TYPE,
            )
        problems: list[fc.Problem] = []
        fc.check_unknown(
            request,
            (
                "templateName",
                "description",
                "templateBody",
                "enabled",
                "provisioningRoleArn",
                "preProvisioningHook",
                "tags",
                "type",
            ),
            problems,
        )
        name = fc.check_string(
            request,
            "templateName",
            problems,
            required=True,
            min_len=1,
            max_len=36,
            pattern=TEMPLATE_NAME_RE,
        )
        description = fc.check_string(
            request,
            "description",
            problems,
            required=False,
            max_len=MAX_DESCRIPTION,
            no_other_chars=True,
        )
        body = fc.check_string(
            request, "templateBody", problems, required=True, max_len=MAX_TEMPLATE_BODY
        )
        enabled = fc.check_bool(request, "enabled", problems)
        role = fc.check_string(
            request, "provisioningRoleArn", problems, required=True, min_len=20, max_len=2048
        )
        hook = check_hook(request, problems)
        tags = check_tags(request, problems)
        template_type = fc.check_enum(
            request, "type", TEMPLATE_TYPES, problems, default="FLEET_PROVISIONING"
        )
        if hook is not None and template_type == "JITP":
            problems.append(
                fc.Problem(
                    "preProvisioningHook",
                    "HOOK_NOT_SUPPORTED",
                    "is only supported for templates of type FLEET_PROVISIONING",
                )
            )
        fc.raise_problems(problems, "CreateProvisioningTemplate")
        self._check_body(body, template_type)
        return {
            "templateName": name,
            "description": description or "",
            "templateBody": body,
            "enabled": bool(enabled),
            "provisioningRoleArn": role,
            "preProvisioningHook": hook,
            "tags": tags,
            "type": template_type,
        }

    def create(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """CreateProvisioningTemplate: store a template and its version 1 (the default).

        Returns:
            ``{templateArn, templateName, defaultVersionId}``.

        Raises:
            InvalidRequestError: a field is invalid.
            ResourceAlreadyExistsError: a template with that name exists.
            LimitExceededError: the store already holds ``max_templates`` templates.
        """
        req = self.validate_create(request)
        name = req["templateName"]
        now = self._clock()
        with self._store.transaction() as db:
            if db.execute(
                "SELECT 1 FROM provisioning_templates WHERE name = ?", (name,)
            ).fetchone():
                raise ResourceAlreadyExistsError(
                    f"a provisioning template named {name!r} already exists",
                    reason="TEMPLATE_ALREADY_EXISTS",
                )
            (count,) = db.execute("SELECT COUNT(*) FROM provisioning_templates").fetchone()
            if count >= self._max_templates:
                raise LimitExceededError(
                    f"the store already holds {count} provisioning templates, the limit",
                    reason="TEMPLATES_LIMIT_EXCEEDED",
                )
            db.execute(
                "INSERT INTO provisioning_templates(name, arn, description, type, enabled, "
                "provisioning_role_arn, pre_provisioning_hook, tags, default_version_id, "
                "last_version_id, creation_date, last_modified_date) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, 1, ?, ?)",
                (
                    name,
                    self.template_arn(name),
                    req["description"],
                    req["type"],
                    int(req["enabled"]),
                    req["provisioningRoleArn"],
                    json.dumps(req["preProvisioningHook"]) if req["preProvisioningHook"] else None,
                    json.dumps(req["tags"]),
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO provisioning_template_versions VALUES (?, 1, ?, ?)",
                (name, req["templateBody"], now),
            )
        return {"templateArn": self.template_arn(name), "templateName": name, "defaultVersionId": 1}

    def describe(self, name: str) -> dict[str, Any]:
        """DescribeProvisioningTemplate: the template with its default version's body.

        Raises:
            ResourceNotFoundError: no such template.
        """
        name = check_template_name(name)
        db = self._store.db
        row = self._row(db, name)
        (body,) = db.execute(
            "SELECT body FROM provisioning_template_versions "
            "WHERE template_name = ? AND version_id = ?",
            (name, row["default_version_id"]),
        ).fetchone()
        out: dict[str, Any] = {
            "templateArn": row["arn"],
            "templateName": name,
            "description": row["description"],
            "creationDate": row["creation_date"],
            "lastModifiedDate": row["last_modified_date"],
            "defaultVersionId": row["default_version_id"],
            "templateBody": body,
            "enabled": bool(row["enabled"]),
            "provisioningRoleArn": row["provisioning_role_arn"],
            "type": row["type"],
            "tags": json.loads(row["tags"]),
        }
        if row["pre_provisioning_hook"]:
            out["preProvisioningHook"] = json.loads(row["pre_provisioning_hook"])
        return out

    def list(
        self, *, max_results: int | None = None, next_token: str | None = None
    ) -> dict[str, Any]:
        """ListProvisioningTemplates: summaries in name order, paged.

        Raises:
            InvalidRequestError: ``max_results`` out of 1..250 or a bad ``next_token``.
        """
        limit = page_size(max_results)
        after = decode_token(next_token)
        rows = self._store.db.execute(
            "SELECT * FROM provisioning_templates WHERE name > ? ORDER BY name LIMIT ?",
            (after, limit + 1),
        ).fetchall()
        out: dict[str, Any] = {
            "templates": [
                {
                    "templateArn": r["arn"],
                    "templateName": r["name"],
                    "description": r["description"],
                    "creationDate": r["creation_date"],
                    "lastModifiedDate": r["last_modified_date"],
                    "enabled": bool(r["enabled"]),
                    "type": r["type"],
                }
                for r in rows[:limit]
            ]
        }
        if len(rows) > limit:
            out["nextToken"] = encode_token(rows[limit - 1]["name"])
        return out

    def update(self, name: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """UpdateProvisioningTemplate: description, enabled, default version, role, hook.

        The type never changes. ``defaultVersionId`` must name an existing version.

        Raises:
            InvalidRequestError: a field is invalid, or the hook is set on a JITP template.
            ResourceNotFoundError: no such template or version.
        """
        name = check_template_name(name)
        problems: list[fc.Problem] = []
        fc.check_unknown(
            request,
            (
                "description",
                "enabled",
                "defaultVersionId",
                "provisioningRoleArn",
                "preProvisioningHook",
                "removePreProvisioningHook",
            ),
            problems,
        )
        description = fc.check_string(
            request,
            "description",
            problems,
            required=False,
            max_len=MAX_DESCRIPTION,
            no_other_chars=True,
        )
        enabled = fc.check_bool(request, "enabled", problems)
        default = fc.check_int(request, "defaultVersionId", problems, required=False, low=1)
        role = fc.check_string(
            request, "provisioningRoleArn", problems, required=False, min_len=20, max_len=2048
        )
        hook = check_hook(request, problems)
        remove_hook = fc.check_bool(request, "removePreProvisioningHook", problems)
        if hook is not None and remove_hook:
            problems.append(
                fc.Problem(
                    "removePreProvisioningHook",
                    fc.ENUM,
                    "cannot be true when preProvisioningHook is given",
                )
            )
        fc.raise_problems(problems, "UpdateProvisioningTemplate")
        with self._store.transaction() as db:
            row = self._row(db, name)
            if hook is not None and row["type"] != "FLEET_PROVISIONING":
                raise InvalidRequestError(
                    "a pre-provisioning hook is only supported for FLEET_PROVISIONING templates",
                    reason="HOOK_NOT_SUPPORTED",
                    fields=[FieldProblem("preProvisioningHook", "not allowed for JITP")],
                )
            if default is not None:
                self._version_row(db, name, default)
            db.execute(
                "UPDATE provisioning_templates SET "
                "description = coalesce(?, description), enabled = coalesce(?, enabled), "
                "default_version_id = coalesce(?, default_version_id), "
                "provisioning_role_arn = coalesce(?, provisioning_role_arn), "
                "pre_provisioning_hook = CASE WHEN ? THEN NULL "
                "  ELSE coalesce(?, pre_provisioning_hook) END, "
                "last_modified_date = ? WHERE name = ?",
                (
                    description,
                    None if enabled is None else int(enabled),
                    default,
                    role,
                    int(bool(remove_hook)),
                    json.dumps(hook) if hook else None,
                    self._clock(),
                    name,
                ),
            )
        return {}

    def set_default_version(self, name: str, version_id: int) -> dict[str, Any]:
        """Make ``version_id`` the default version (UpdateProvisioningTemplate).

        Raises:
            ResourceNotFoundError: no such template or version.
        """
        return self.update(name, {"defaultVersionId": version_id})

    def delete(self, name: str) -> dict[str, Any]:
        """DeleteProvisioningTemplate: remove the template and all its versions.

        Raises:
            ResourceNotFoundError: no such template.
        """
        name = check_template_name(name)
        with self._store.transaction() as db:
            self._row(db, name)
            db.execute("DELETE FROM provisioning_templates WHERE name = ?", (name,))
        return {}

    # --- versions ------------------------------------------------------------------------

    @staticmethod
    def _version_row(db: sqlite3.Connection, name: str, version_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM provisioning_template_versions "
            "WHERE template_name = ? AND version_id = ?",
            (name, version_id),
        ).fetchone()
        if row is None:
            raise ResourceNotFoundError(
                f"provisioning template {name!r} has no version {version_id}",
                reason="TEMPLATE_VERSION_NOT_FOUND",
            )
        return row

    def create_version(
        self, name: str, template_body: Any, *, set_as_default: bool = False
    ) -> dict[str, Any]:
        """CreateProvisioningTemplateVersion.

        Returns:
            ``{templateArn, templateName, versionId, isDefaultVersion}``.

        Raises:
            InvalidRequestError: the body is invalid for the template's type.
            ResourceNotFoundError: no such template.
            VersionsLimitExceededError: the template has ``max_versions`` versions.
        """
        name = check_template_name(name)
        problems: list[fc.Problem] = []
        body = fc.check_string(
            {"templateBody": template_body},
            "templateBody",
            problems,
            required=True,
            max_len=MAX_TEMPLATE_BODY,
        )
        fc.raise_problems(problems, "CreateProvisioningTemplateVersion")
        row = self._row(self._store.db, name)
        self._check_body(body, row["type"])
        now = self._clock()
        with self._store.transaction() as db:
            row = self._row(db, name)
            (count,) = db.execute(
                "SELECT COUNT(*) FROM provisioning_template_versions WHERE template_name = ?",
                (name,),
            ).fetchone()
            if count >= self._max_versions:
                raise VersionsLimitExceededError(
                    f"provisioning template {name!r} already has {count} versions, the "
                    "limit; delete a version that is not the default first",
                )
            version_id = int(row["last_version_id"]) + 1
            db.execute(
                "INSERT INTO provisioning_template_versions VALUES (?, ?, ?, ?)",
                (name, version_id, body, now),
            )
            db.execute(
                "UPDATE provisioning_templates SET last_version_id = ?, "
                "default_version_id = CASE WHEN ? THEN ? ELSE default_version_id END, "
                "last_modified_date = ? WHERE name = ?",
                (version_id, int(set_as_default), version_id, now, name),
            )
        return {
            "templateArn": self.template_arn(name),
            "templateName": name,
            "versionId": version_id,
            "isDefaultVersion": set_as_default,
        }

    def list_versions(
        self, name: str, *, max_results: int | None = None, next_token: str | None = None
    ) -> dict[str, Any]:
        """ListProvisioningTemplateVersions, in version order, paged.

        Raises:
            ResourceNotFoundError: no such template.
        """
        name = check_template_name(name)
        limit = page_size(max_results)
        after = decode_token(next_token)
        db = self._store.db
        row = self._row(db, name)
        start = int(after) if after.isdigit() else 0
        rows = db.execute(
            "SELECT version_id, creation_date FROM provisioning_template_versions "
            "WHERE template_name = ? AND version_id > ? ORDER BY version_id LIMIT ?",
            (name, start, limit + 1),
        ).fetchall()
        out: dict[str, Any] = {
            "versions": [
                {
                    "versionId": r["version_id"],
                    "creationDate": r["creation_date"],
                    "isDefaultVersion": r["version_id"] == row["default_version_id"],
                }
                for r in rows[:limit]
            ]
        }
        if len(rows) > limit:
            out["nextToken"] = encode_token(str(rows[limit - 1]["version_id"]))
        return out

    def describe_version(self, name: str, version_id: int) -> dict[str, Any]:
        """DescribeProvisioningTemplateVersion.

        Raises:
            ResourceNotFoundError: no such template or version.
        """
        name = check_template_name(name)
        db = self._store.db
        row = self._row(db, name)
        version = self._version_row(db, name, version_id)
        return {
            "versionId": version_id,
            "creationDate": version["creation_date"],
            "templateBody": version["body"],
            "isDefaultVersion": version_id == row["default_version_id"],
        }

    def delete_version(self, name: str, version_id: int) -> dict[str, Any]:
        """DeleteProvisioningTemplateVersion (never the default version).

        Raises:
            ResourceNotFoundError: no such template or version.
            DeleteConflictError: the version is the template's default.
        """
        name = check_template_name(name)
        with self._store.transaction() as db:
            row = self._row(db, name)
            self._version_row(db, name, version_id)
            if version_id == row["default_version_id"]:
                raise DeleteConflictError(
                    f"version {version_id} is the default version of provisioning template "
                    f"{name!r}; make another version the default or delete the template",
                    reason="DEFAULT_VERSION_UNDELETABLE",
                )
            db.execute(
                "DELETE FROM provisioning_template_versions "
                "WHERE template_name = ? AND version_id = ?",
                (name, version_id),
            )
            db.execute(
                "UPDATE provisioning_templates SET last_modified_date = ? WHERE name = ?",
                (self._clock(), name),
            )
        return {}
