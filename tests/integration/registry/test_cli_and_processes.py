"""The CLI as a subprocess, the demo step, and several processes sharing one registry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.registry.demo import run_demo_step
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.registry import example_template, make_csr, write_hook
from tests.integration.registry.conftest import CaDir

CSR_TEMPLATE: dict[str, Any] = {
    "Parameters": {"Serial": {"Type": "String"}, "CSR": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["-", ["cli", {"Ref": "Serial"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "CliPolicy"}},
    },
}


def run_cli(config: Path, *args: str) -> tuple[int, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture
def config(tmp_path: Path, ca_dir: CaDir) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [registry]
            region = "ap-south-1"
            account = "999988887777"
            ca_dir = "{ca_dir.path}"
            database = "{tmp_path / "registry.db"}"
            """
        )
    )
    return path


def test_register_thing_cli(config: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(json.dumps(CSR_TEMPLATE))
    document = tmp_path / "policy.json"
    document.write_text('{"Version": "2012-10-17", "Statement": []}')
    code, out = run_cli(
        config, "policy", "create", "--name", "CliPolicy", "--document", str(document)
    )
    assert code == 0
    assert out["policyArn"] == "arn:aws:iot:ap-south-1:999988887777:policy/CliPolicy"
    params = json.dumps({"Serial": "7", "CSR": make_csr("cli-7")})
    code, out = run_cli(
        config, "register-thing", "--template-body", str(template), "--parameters", params
    )
    assert code == 0, out
    assert out["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    assert out["resourceArns"]["thing"] == "arn:aws:iot:ap-south-1:999988887777:thing/cli-7"
    assert out["resourceArns"]["certificate"].startswith(
        "arn:aws:iot:ap-south-1:999988887777:cert/"
    )
    with SqliteRegistryStorage.open(tmp_path / "registry.db") as storage:
        assert storage.get_thing("cli-7") is not None

    code, described = run_cli(config, "describe-thing", "cli-7", "--json")
    assert code == 0
    assert described["thingArn"] == out["resourceArns"]["thing"]
    assert described["certificates"][0]["certificateArn"] == out["resourceArns"]["certificate"]
    assert described["certificates"][0]["policies"] == ["CliPolicy"]
    assert described["certificates"][0]["status"] == "ACTIVE"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), "describe-thing", "cli-7"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "CliPolicy" in proc.stdout
    code, missing = run_cli(config, "describe-thing", "nobody", "--json")
    assert code == 1
    assert missing["error"]["code"] == "ResourceNotFoundException"


def test_register_thing_cli_parameters_from_a_file(config: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    body = json.loads(json.dumps(CSR_TEMPLATE))
    del body["Resources"]["policy"]
    template.write_text(json.dumps(body))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"Serial": "8", "CSR": make_csr("cli-8")}))
    code, out = run_cli(
        config, "register-thing", "--template-body", str(template), "--parameters", f"@{params}"
    )
    assert code == 0, out
    assert set(out["resourceArns"]) == {"thing", "certificate"}


def test_register_thing_cli_errors(config: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {}}}})
    )
    code, out = run_cli(config, "register-thing", "--template-body", str(template))
    assert code == 1
    assert out["error"]["code"] == "InvalidRequestException"
    assert out["error"]["reason"] == "TEMPLATE_INVALID"
    assert out["error"]["fields"][0]["path"] == "Resources.t.Properties.ThingName"

    template.write_text(json.dumps(CSR_TEMPLATE))
    code, out = run_cli(
        config, "register-thing", "--template-body", str(template), "--parameters", "{nope"
    )
    assert code == 1
    assert out["error"]["fields"][0]["path"] == "parameters"

    code, out = run_cli(config, "register-thing", "--template-body", str(tmp_path / "missing.json"))
    assert code == 1
    assert out["error"]["fields"][0]["path"] == "templateBody"


def test_register_thing_cli_hook_denial(config: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    body = json.loads(json.dumps(CSR_TEMPLATE))
    del body["Resources"]["policy"]
    template.write_text(json.dumps(body))
    hook = write_hook(tmp_path, "deny", "print(json.dumps({'allowProvisioning': False}))")
    params = json.dumps({"Serial": "9", "CSR": make_csr("cli-9")})
    code, out = run_cli(
        config,
        "register-thing",
        "--template-body",
        str(template),
        "--parameters",
        params,
        "--hook",
        str(hook),
    )
    assert code == 1
    assert out["error"]["code"] == "UnauthorizedException"
    assert out["error"]["reason"] == "HOOK_DENIED"


def test_register_thing_cli_without_a_ca(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[registry]\nca_dir = "{tmp_path / "no-ca"}"\ndatabase = "{tmp_path / "r.db"}"\n'
    )
    template = tmp_path / "template.json"
    template.write_text(json.dumps(CSR_TEMPLATE))
    params = json.dumps({"Serial": "1", "CSR": make_csr()})
    code, out = run_cli(
        config, "register-thing", "--template-body", str(template), "--parameters", params
    )
    assert code == 2
    assert out["error"]["reason"] == "CA_MISSING"


def test_demo_step(tmp_path: Path) -> None:
    lines: list[str] = []
    run_demo_step(tmp_path / "ca", tmp_path / "work", lines.append)
    assert any("CSR checked and signed" in line for line in lines)
    thing_lines = [line for line in lines if line.startswith("registry: thing -> ")]
    assert len(thing_lines) == 1
    thing_name = thing_lines[0].rsplit("/", 1)[1]
    assert (tmp_path / "work" / "device.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    assert (tmp_path / "work" / "device.key").stat().st_mode & 0o777 == 0o600
    with SqliteRegistryStorage.open(tmp_path / "work" / "registry.db") as storage:
        thing = storage.get_thing(thing_name)
        assert thing is not None
        assert thing.thing_groups == tuple(
            example_template()["Resources"]["thing"]["Properties"]["ThingGroups"]
        )
        (certificate_id,) = storage.thing_principals(thing_name)
        assert storage.certificate_policies(certificate_id) == ("EdgeAppliancePolicy",)


WORKER = """
import sys
from pathlib import Path
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import parse_template

db, worker = Path(sys.argv[1]), sys.argv[2]
template = parse_template({
    "Parameters": {"Name": {"Type": "String"}},
    "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {
        "ThingName": {"Ref": "Name"}, "ThingGroups": ["shared"],
        "AttributePayload": {"last": {"Ref": "Name"}}},
        "OverrideSettings": {"AttributePayload": "REPLACE"}}},
})
with SqliteRegistryStorage.open(db) as storage:
    registry = Registry(storage, None, region="r", account="a")
    for i in range(0, 200, 20):
        batch = [{"Name": f"p{worker}-{j}"} for j in range(i, i + 20)]
        batch.append({"Name": "shared-thing"})
        outcomes = registry.register_batch(template, batch)
        assert all(not isinstance(o, Exception) for o in outcomes), outcomes
"""


def test_processes_share_one_registry(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    SqliteRegistryStorage.open(db).close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [
        subprocess.Popen([sys.executable, str(script), str(db), str(n)], cwd=Path.cwd())
        for n in range(4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    with SqliteRegistryStorage.open(db) as storage:
        assert storage.count_things() == 4 * 200 + 1
        shared = storage.get_thing("shared-thing")
        assert shared is not None
        assert shared.version == 1  # identical re-registrations change nothing


def test_a_forged_certificate_country_is_refused_by_the_cli(config: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps(
            {
                "Parameters": {"CSR": {"Type": "String"}},
                "Resources": {
                    "thing": {
                        "Type": "AWS::IoT::Thing",
                        "Properties": {
                            "ThingName": "forged-1",
                            "AttributePayload": {
                                "country": {"Ref": "AWS::IoT::Certificate::Country"}
                            },
                        },
                    },
                    "certificate": {
                        "Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
                    },
                },
            }
        )
    )
    csr = make_csr("forged-1", extra=())
    forged = json.dumps({"CSR": csr, "AWS::IoT::Certificate::Country": "XX"})
    code, out = run_cli(
        config, "register-thing", "--template-body", str(template), "--parameters", forged
    )
    assert code == 1
    assert out["error"]["reason"] == "CERTIFICATE_PARAMETER_NOT_ALLOWED"
    code, out = run_cli(
        config,
        "register-thing",
        "--template-body",
        str(template),
        "--parameters",
        json.dumps({"CSR": csr}),
    )
    assert code == 1
    assert out["error"]["reason"] == "CERTIFICATE_FIELD_MISSING"
    assert out["error"]["code"] == "ResourceRegistrationFailureException"
