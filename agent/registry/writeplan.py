"""From a checked evaluation to the registry's writes, honouring ``OverrideSettings``.

:func:`plan_certificate` and :func:`plan_thing` compare what a template asks for with what
the registry holds and either refuse (an override ``FAIL`` that differs) or return the record
to write; :func:`write_registration` then writes a checked registration, which nothing there
refuses any more. :class:`~agent.registry.register.Registry` runs every plan before the
first write, so a refused registration writes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Literal, TypeVar

from agent.errors import FieldProblem
from agent.registry.errors import (
    ConflictingResourceUpdateError,
)
from agent.registry.signing import (
    IssuedCertificate,
)
from agent.registry.storage import (
    CertificateRecord,
    PolicyRecord,
    RegistryTransaction,
    ThingRecord,
)
from agent.registry.template import (
    CertificateResource,
    OverrideAction,
    ThingResource,
)

_log = logging.getLogger(__name__)

PARAMETER_KEY_MAX = 2048
PARAMETER_VALUE_MAX = 4096
DEFAULT_OVERRIDE: OverrideAction = "REPLACE"

ArnKind = Literal["thing", "cert", "policy", "provisioningtemplate"]


def write_registration(
    tx: RegistryTransaction,
    certificate: CertificateRecord | None,
    thing: ThingRecord | None,
    policies: list[PolicyRecord],
    *,
    attach: tuple[str | None, str | None, list[str]],
) -> None:
    """Write a checked registration (nothing here refuses it)."""
    if certificate is not None:
        tx.put_certificate(certificate)
    if thing is not None:
        tx.put_thing(thing)
    for record in policies:
        tx.put_policy(record)
    certificate_id, thing_name, policy_names = attach
    if certificate_id is not None:
        if thing_name is not None:
            tx.attach_principal(thing_name, certificate_id)
        for name in policy_names:
            tx.attach_policy(name, certificate_id)


def plan_certificate(
    tx: RegistryTransaction,
    spec: CertificateResource,
    issued: IssuedCertificate,
    now: dt.datetime,
) -> CertificateRecord | None:
    """The certificate record to write, or None when the registry's copy stays as it is.

    Raises:
        ConflictingResourceUpdateError: an override ``FAIL`` and the status differs.
    """
    existing = tx.get_certificate(issued.certificate_id)
    if existing is None:
        return CertificateRecord(
            issued.certificate_id, issued.certificate_pem, spec.status or "ACTIVE", now, now
        )
    status = _override(
        spec.logical_id,
        "Status",
        existing.status,
        spec.status,
        action=spec.overrides.get("Status", DEFAULT_OVERRIDE),
        what=f"certificate {issued.certificate_id}",
    )
    if status == existing.status:
        return None
    return replace(existing, status=status, updated_at=now)


T = TypeVar("T")


def _override(
    logical_id: str,
    prop: str,
    current: T,
    wanted: T | None,
    *,
    action: OverrideAction,
    what: str,
    merge: Callable[[T, T], T] | None = None,
) -> T:
    """The value a property of an existing resource takes under its override setting."""
    if wanted is None or wanted == current or action == "DO_NOTHING":
        return current
    if action == "FAIL":
        raise _conflict(logical_id, prop, what)
    if action == "MERGE" and merge is not None:
        return merge(current, wanted)
    return wanted


def _conflict(logical_id: str, prop: str, what: str) -> ConflictingResourceUpdateError:
    return ConflictingResourceUpdateError(
        f"{what} exists with a different {prop} and OverrideSettings.{prop} is FAIL",
        fields=[
            FieldProblem(
                f"Resources.{logical_id}.OverrideSettings.{prop}",
                "FAIL: the existing value differs",
            )
        ],
    )


def plan_thing(
    tx: RegistryTransaction, spec: ThingResource, now: dt.datetime
) -> ThingRecord | None:
    """The thing record to write (new or updated per ``OverrideSettings``), or None.

    Raises:
        ConflictingResourceUpdateError: an override ``FAIL`` and the existing value differs.
    """
    existing = tx.get_thing(spec.thing_name)
    if existing is None:
        return ThingRecord(
            name=spec.thing_name,
            thing_id=_thing_id(),
            attributes=dict(spec.attributes or {}),
            thing_type_name=spec.thing_type_name,
            thing_groups=_unique(spec.thing_groups or ()),
            billing_group=spec.billing_group,
            version=1,
            created_at=now,
            updated_at=now,
        )
    what = f"thing {spec.thing_name}"
    settings = spec.overrides
    updated = replace(
        existing,
        attributes=_override(
            spec.logical_id,
            "AttributePayload",
            existing.attributes,
            spec.attributes,
            action=settings.get("AttributePayload", DEFAULT_OVERRIDE),
            what=what,
            merge=lambda old, new: {**old, **new},
        ),
        thing_type_name=_override(
            spec.logical_id,
            "ThingTypeName",
            existing.thing_type_name,
            spec.thing_type_name,
            action=settings.get("ThingTypeName", DEFAULT_OVERRIDE),
            what=what,
        ),
        thing_groups=_override(
            spec.logical_id,
            "ThingGroups",
            existing.thing_groups,
            None if spec.thing_groups is None else _unique(spec.thing_groups),
            action=settings.get("ThingGroups", DEFAULT_OVERRIDE),
            what=what,
            merge=lambda old, new: _unique((*old, *new)),
        ),
        billing_group=existing.billing_group or spec.billing_group,
    )
    if updated == existing:
        return None
    return replace(updated, version=existing.version + 1, updated_at=now)


def _thing_id() -> str:
    """A random (version 4) UUID, formatted without the cost of :func:`uuid.uuid4`."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
