"""Fixtures for bulk and template CLI tests: a config with a real CA, registry DB, bulk root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.registry.ca import init_ca

ROLE = "arn:aws:iam::123456789012:role/Provisioning"
#: ``edge-agent bulk start`` on the input every test writes with its role.
START = ("bulk", "start", "--bucket", "factory", "--key", "devices.jsonl", "--role-arn", ROLE)

#: A realistic bulk template: a CSR signed per line, a thing named from the serial number
#: with attributes and a group from a mapping, and a named policy attached to the cert.
TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Site": {"Type": "String", "Default": "lab"},
        "CSR": {"Type": "String"},
    },
    "Mappings": {"Sites": {"lab": {"Group": "lab-devices"}, "plant": {"Group": "plant-devices"}}},
    "Resources": {
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
        },
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}, "site": {"Ref": "Site"}},
                "ThingGroups": [{"Fn::FindInMap": ["Sites", {"Ref": "Site"}, "Group"]}],
            },
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "EdgePolicy"}},
    },
}


@dataclass
class Env:
    """Paths of one test installation."""

    root: Path
    config: Path
    database: Path
    bulk_root: Path
    state_dir: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``edge-agent --config <config> ARGS`` to completion."""
        out = subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"exit {out.returncode}: {out.stdout} {out.stderr}")
        return out

    def json(self, *args: str) -> Any:
        """Run and parse stdout as JSON."""
        return json.loads(self.run(*args).stdout)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``edge-agent`` without waiting."""
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(self.config), *args], **kwargs
        )


def make_csr(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    init_ca(tmp_path / "ca")
    bulk_root = tmp_path / "bulk-root"
    (bulk_root / "factory").mkdir(parents=True)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    database = state / "registry.db"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
state_dir = "{state}"

[registry]
database = "{database}"
ca_dir = "{tmp_path / "ca"}"
bulk_root = "{bulk_root}"
region = "eu-west-1"
account = "111122223333"
""",
        encoding="utf-8",
    )
    environment = Env(tmp_path, config, database, bulk_root, state)
    policy = tmp_path / "policy.json"
    policy.write_text('{"Version": "2012-10-17", "Statement": []}', encoding="utf-8")
    environment.run("policy", "create", "--name", "EdgePolicy", "--document", str(policy))
    os.environ.pop("STATE_DIRECTORY", None)
    return environment
