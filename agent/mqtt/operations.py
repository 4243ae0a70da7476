"""The operations answered on ``<prefix>cmd/<Operation>``.

* ``DescribeDevice``: the Panorama device view of this appliance: ``Name``, ``DeviceId``,
  ``Arn``, ``IotThingName``, ``Status`` (the seed's provisioning status),
  ``NetworkingConfiguration`` as applied (the committed network plan, or null) and the
  certificate in force (``NotAfter``, SHA-256 ``Fingerprint``, ``Subject``).
* ``StartThingRegistrationTask``: the seed's request; the task is recorded, then run in a
  background thread; the reply is ``{"taskId"}`` at once.
* ``DescribeThingRegistrationTask``: ``{"taskId"}`` → the task's description.
* ``CreateManagedThing``: the seed's body (as ``POST /managed-things``) → ``{Arn, CreatedAt,
  Id}``; the thing is then commissioned as the daemon commissions every new thing.
* ``GetManagedThing`` (``{"Identifier"}``), ``ListManagedThings``
  (``{"ProvisioningStatus"?}``), ``DeleteManagedThing`` (``{"Identifier"}``): as
  ``GET``/``DELETE /managed-things``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.archive.install import current_credentials
from agent.errors import (
    AgentError,
    FieldProblem,
    InvalidRequestError,
    ResourceNotFoundError,
    ValidationError,
)
from agent.mqtt.commands import Operation
from agent.store import Store

if TYPE_CHECKING:  # the registry's bulk tasks are loaded only where a host runs them
    from agent.commissioning.things import ManagedThings
    from agent.registry.bulk import BulkTasks

_log = logging.getLogger(__name__)


def _no_fields(request: dict[str, Any], allowed: tuple[str, ...], operation: str) -> None:
    unknown = [k for k in request if k not in (*allowed, "ClientToken")]
    if unknown:
        raise InvalidRequestError(
            f"{operation} does not take {', '.join(sorted(unknown))}",
            reason="UNKNOWN_FIELD",
            fields=[FieldProblem(k, "unknown field") for k in sorted(unknown)],
        )


def describe_device(state_dir: Path, store: Store, status: Callable[[], str]) -> Operation:
    """``DescribeDevice`` over the credential set in force."""

    def run(request: dict[str, Any]) -> dict[str, Any]:
        _no_fields(request, (), "DescribeDevice")
        current = current_credentials(state_dir)
        if current is None:
            raise ResourceNotFoundError(
                "no credentials are installed on this appliance", reason="NOT_PROVISIONED"
            )
        manifest = json.loads((current / "manifest.json").read_bytes())
        cert = x509.load_pem_x509_certificate((current / "certificate.pem").read_bytes())
        row = None
        if store.version("netconf"):
            row = store.db.execute("SELECT plan FROM netconf_applied WHERE id = 1").fetchone()
        state = status()
        return {
            "Name": manifest["deviceName"],
            "DeviceId": manifest["deviceId"],
            "Arn": manifest["arn"],
            "IotThingName": manifest["iotThingName"],
            "Status": state,
            "ProvisioningStatus": state,
            "NetworkingConfiguration": json.loads(row[0]) if row else None,
            "Certificate": {
                "NotAfter": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
                "Fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
                "Subject": cert.subject.rfc4514_string(),
            },
        }

    return run


def registration_tasks(
    open_tasks: Callable[[], tuple[BulkTasks, Store]],
) -> dict[str, Operation]:
    """``StartThingRegistrationTask`` and ``DescribeThingRegistrationTask``.

    ``open_tasks`` opens a fresh store connection (each task runs on its own).
    """

    def start(request: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in request.items() if k != "ClientToken"}
        tasks, store = open_tasks()
        try:
            task_id = tasks.start(body)["taskId"]
        finally:
            store.close()
        threading.Thread(target=_run, args=(open_tasks, task_id), daemon=True).start()
        return {"taskId": task_id}

    def describe(request: dict[str, Any]) -> dict[str, Any]:
        _no_fields(request, ("taskId",), "DescribeThingRegistrationTask")
        task_id = request.get("taskId")
        if not isinstance(task_id, str):
            raise InvalidRequestError(
                "taskId is required (a string)",
                reason="FIELD_VALIDATION_FAILED",
                fields=[FieldProblem("taskId", "required string")],
            )
        tasks, store = open_tasks()
        try:
            return tasks.describe(task_id)
        finally:
            store.close()

    return {"StartThingRegistrationTask": start, "DescribeThingRegistrationTask": describe}


def _run(open_tasks: Callable[[], tuple[BulkTasks, Store]], task_id: str) -> None:
    tasks, store = open_tasks()
    try:
        tasks.run(task_id)
    except AgentError as exc:
        _log.warning("thing registration task %s: %s", task_id, exc)
    finally:
        store.close()


def _identifier(request: dict[str, Any], operation: str) -> str:
    _no_fields(request, ("Identifier",), operation)
    value = request.get("Identifier")
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValidationError(
            "Identifier is required: 1-64 of [a-zA-Z0-9:_-]",
            reason="FIELD_VALIDATION_FAILED",
            fields=[FieldProblem("Identifier", "must match [a-zA-Z0-9:_-]{1,64}")],
        )
    return value


_IDENTIFIER = re.compile(r"[a-zA-Z0-9:_-]{1,64}")


def managed_thing_operations(
    open_things: Callable[[], tuple[ManagedThings, Store]],
    *,
    on_created: Callable[[str], None] | None = None,
) -> dict[str, Operation]:
    """``CreateManagedThing``, ``GetManagedThing``, ``ListManagedThings``, ``DeleteManagedThing``.

    Args:
        open_things: opens the managed things on a fresh store connection (each command
            runs in a worker thread on its own connection).
        on_created: called (from the worker thread) with the id of each new thing.
    """

    def run(action: Callable[[ManagedThings], dict[str, Any]]) -> dict[str, Any]:
        things, store = open_things()
        try:
            return action(things)
        finally:
            store.close()

    def create(request: dict[str, Any]) -> dict[str, Any]:
        result = run(lambda things: {"result": things.create(request)})["result"]
        if not result.replayed and on_created is not None:
            on_created(result.body["Id"])
        body: dict[str, Any] = result.body
        return body

    def get(request: dict[str, Any]) -> dict[str, Any]:
        thing_id = _identifier(request, "GetManagedThing")
        return run(lambda things: things.describe(thing_id))

    def listing(request: dict[str, Any]) -> dict[str, Any]:
        _no_fields(request, ("ProvisioningStatus",), "ListManagedThings")
        status = request.get("ProvisioningStatus")
        if status is not None and not isinstance(status, str):
            raise ValidationError(
                "ProvisioningStatus must be a string",
                reason="FIELD_VALIDATION_FAILED",
                fields=[FieldProblem("ProvisioningStatus", "must be a string")],
            )
        return run(lambda things: {"Items": things.list(status=status)})

    def delete(request: dict[str, Any]) -> dict[str, Any]:
        thing_id = _identifier(request, "DeleteManagedThing")

        def forget(things: ManagedThings) -> dict[str, Any]:
            things.delete(thing_id)
            return {"Id": thing_id, "Deleted": True}

        return run(forget)

    return {
        "CreateManagedThing": create,
        "GetManagedThing": get,
        "ListManagedThings": listing,
        "DeleteManagedThing": delete,
    }
