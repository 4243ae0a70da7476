"""Shared pieces of the registry API tests: templates, requests, the database's contents."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

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
