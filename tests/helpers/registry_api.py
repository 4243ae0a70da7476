"""Shared pieces of the registry API tests: templates, requests, the database's contents,
and an in-process server (LocalApi with the registry routes on a Unix socket) with a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent.api import LocalApi
from agent.config import AgentConfig, parse_config
from agent.registry.api import RegistryApi
from agent.registry.demo import EXAMPLE_TEMPLATE

ROLE = "arn:aws:iam::123456789012:role/Provisioning"

POLICY_TEXT = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], '
    '"Resource": ["*"]}]}'
)

#: RegisterThing by CSR: a thing named by a parameter, the signed certificate, a policy.
CSR_TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "ThingName": {"Type": "String"},
        "SerialNumber": {"Type": "String"},
        "CSR": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Ref": "ThingName"},
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": POLICY_TEXT}},
    },
}

#: Bulk registration without certificates: one thing per line, named from its serial.
THING_TEMPLATE: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
            },
        }
    },
}


def template_request(name: str = "edge-fleet", **extra: Any) -> dict[str, Any]:
    """A valid CreateProvisioningTemplate request (the reference fleet template)."""
    return {
        "templateName": name,
        "templateBody": json.dumps(EXAMPLE_TEMPLATE),
        "provisioningRoleArn": ROLE,
        "enabled": True,
        **extra,
    }


def write_input(bulk_root: Path, lines: int, *, bucket: str = "factory") -> str:
    """An input file of ``lines`` devices in ``bucket``; returns its key."""
    key = f"devices-{lines}.jsonl"
    directory = bulk_root / bucket
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / key).open("w", encoding="utf-8") as out:
        for i in range(lines):
            out.write(json.dumps({"SerialNumber": f"{i:06d}"}) + "\n")
    return key


def start_request(key: str, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """A StartThingRegistrationTask request for ``factory/<key>``."""
    return {
        "inputFileBucket": "factory",
        "inputFileKey": key,
        "roleArn": ROLE,
        "templateBody": json.dumps(template or THING_TEMPLATE),
    }


TABLES = (
    "provisioning_templates",
    "provisioning_template_versions",
    "registry_things",
    "registry_certificates",
    "registry_policies",
    "registry_thing_principals",
    "registry_policy_principals",
    "bulk_tasks",
)


def contents(database: Path) -> dict[str, int]:
    """Rows per registry table (a table not created yet counts 0), and report directories."""
    counts: dict[str, int] = {}
    if database.exists():
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            present = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            for table in TABLES:
                counts[table] = (
                    db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
                    if table in present
                    else 0
                )
        finally:
            db.close()
    else:
        counts = dict.fromkeys(TABLES, 0)
    reports = database.parent / "bulk-reports"
    counts["report_dirs"] = len(list(reports.iterdir())) if reports.exists() else 0
    return counts


# --- an in-process server and its client ------------------------------------------------

_NO_BODY = object()


def make_config(root: Path, ca_dir: Path, database: str = "registry.db") -> AgentConfig:
    (root / "bulk-root" / "factory").mkdir(parents=True, exist_ok=True)
    return parse_config(
        f"""
[agent]
state_dir = "{root / "state"}"
runtime_dir = "{root / "run"}"
[api]
socket = "{root / "run" / "api.sock"}"
registry = true
[registry]
database = "{root / "state" / database}"
ca_dir = "{ca_dir}"
bulk_root = "{root / "bulk-root"}"
region = "eu-west-1"
account = "111122223333"
"""
    )


@dataclass
class Host:
    """One registry host's configuration (replaceable, as a reload does)."""

    config: AgentConfig

    @property
    def database(self) -> Path:
        return self.config.registry.database

    @property
    def bulk_root(self) -> Path:
        return self.config.registry.bulk_root


class Client:
    """Requests to the local API's socket; answers are (status, JSON body)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def call(
        self, method: str, path: str, body: Any = _NO_BODY, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
        async with self._session.request(
            method,
            f"http://localhost{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def serving(host: Host) -> AsyncIterator[tuple[Client, RegistryApi]]:
    socket_path = host.config.api.socket_path(host.config.agent)
    local = LocalApi(socket_path)
    registry = RegistryApi(lambda: host.config)
    local.add_routes(registry.routes())
    await local.start()
    try:
        await registry.start()
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            yield Client(session), registry
    finally:
        await local.stop()
        await registry.close()


def run(host: Host, scenario: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(host) as (client, _registry):
            await scenario(client)

    asyncio.run(main())


def assert_error(answer: tuple[int, Any], status: int, code: str, reason: str) -> dict[str, Any]:
    got_status, body = answer
    assert got_status == status, body
    error: dict[str, Any] = body["error"]
    assert set(error) <= {"code", "statusCode", "reason", "message", "fields"}
    assert (error["code"], error["statusCode"], error["reason"]) == (code, status, reason), error
    assert error["message"]
    return error


async def wait_finished(client: Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        status, body = await client.call("GET", f"/thing-registration-tasks/{task_id}")
        assert status == 200, body
        if body["status"] not in {"InProgress", "Cancelling"}:
            described: dict[str, Any] = body
            return described
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
