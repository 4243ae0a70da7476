"""The operations answered on ``<prefix>cmd/<Operation>``.

* ``DescribeDevice``: the Panorama device view of this appliance: ``Name``, ``DeviceId``,
  ``Arn``, ``IotThingName``, ``Status`` (the seed's provisioning status),
  ``NetworkingConfiguration`` as applied (the committed network plan, or null) and the
  certificate in force (``NotAfter``, SHA-256 ``Fingerprint``, ``Subject``).
* ``StartThingRegistrationTask``: the seed's request; the task is recorded, then run in a
  background thread; the reply is ``{"taskId"}`` at once.
* ``DescribeThingRegistrationTask``: ``{"taskId"}`` → the task's description.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.archive.install import current_credentials
from agent.errors import AgentError, FieldProblem, InvalidRequestError, ResourceNotFoundError
from agent.mqtt.commands import Operation
from agent.registry.bulk import BulkTasks
from agent.store import Store

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
