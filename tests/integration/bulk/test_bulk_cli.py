"""``edge-agent template ...`` and ``edge-agent bulk ...`` as a user runs them."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time

from tests.integration.bulk.conftest import ROLE, START, TEMPLATE, Env

THING_ONLY = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["-", ["edge", {"Ref": "SerialNumber"}]]}},
        }
    },
}


def write_devices(env: Env, count: int, name: str = "devices.jsonl") -> None:
    with (env.bulk_root / "factory" / name).open("w", encoding="utf-8") as out:
        for n in range(1, count + 1):
            out.write(json.dumps({"SerialNumber": f"{n:06d}"}) + "\n")


#: A fleet-provisioning template: its certificate comes from the request, by id.
FLEET = {
    **TEMPLATE,
    "Parameters": {k: v for k, v in TEMPLATE["Parameters"].items() if k != "CSR"},
    "Resources": {
        **TEMPLATE["Resources"],
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}},
        },
    },
}


def test_template_commands(env: Env) -> None:
    csr_body = env.root / "csr.json"
    csr_body.write_text(json.dumps(TEMPLATE), encoding="utf-8")
    refused_type = env.run(
        "template",
        "create",
        "--name",
        "edge-fleet",
        "--body",
        str(csr_body),
        "--role-arn",
        ROLE,
        check=False,
    )
    assert refused_type.returncode == 1
    assert json.loads(refused_type.stdout)["error"]["fields"][0]["path"] == (
        "templateBody.Resources.certificate.Properties.CertificateSigningRequest"
    )
    body = env.root / "t.json"
    body.write_text(json.dumps(FLEET), encoding="utf-8")
    created = env.json(
        "template",
        "create",
        "--name",
        "edge-fleet",
        "--body",
        str(body),
        "--role-arn",
        ROLE,
        "--enabled",
        "--tag",
        "site=lab",
    )
    assert created == {
        "templateArn": "arn:aws:iot:eu-west-1:111122223333:provisioningtemplate/edge-fleet",
        "templateName": "edge-fleet",
        "defaultVersionId": 1,
    }
    again = env.run(
        "template",
        "create",
        "--name",
        "edge-fleet",
        "--body",
        str(body),
        "--role-arn",
        ROLE,
        check=False,
    )
    assert again.returncode == 1
    assert json.loads(again.stdout)["error"]["code"] == "ResourceAlreadyExistsException"

    bad = env.run(
        "template",
        "validate",
        "--name",
        "x.y",
        "--body",
        str(body),
        "--role-arn",
        "short",
        check=False,
    )
    assert bad.returncode == 1
    error = json.loads(bad.stdout)["error"]
    assert [f["path"] for f in error["fields"]] == ["templateName", "provisioningRoleArn"]
    request = {
        "templateName": "other",
        "templateBody": json.dumps(THING_ONLY),
        "provisioningRoleArn": ROLE,
        "type": "JITP",
    }
    valid = env.run("template", "validate", "--request", "-", stdin=json.dumps(request))
    assert json.loads(valid.stdout) == {"valid": True, "templateName": "other", "type": "JITP"}
    assert [t["templateName"] for t in env.json("template", "list", "--json")["templates"]] == [
        "edge-fleet"
    ]

    v2 = env.root / "v2.json"
    v2.write_text(json.dumps(THING_ONLY), encoding="utf-8")
    made = env.json("template", "versions", "create", "edge-fleet", "--body", str(v2))
    assert (made["versionId"], made["isDefaultVersion"]) == (2, False)
    env.json("template", "versions", "set-default", "edge-fleet", "2")
    described = env.json("template", "describe", "edge-fleet")
    assert (described["defaultVersionId"], described["tags"]) == (
        2,
        [{"Key": "site", "Value": "lab"}],
    )
    assert json.loads(described["templateBody"]) == THING_ONLY
    refused = env.run("template", "versions", "delete", "edge-fleet", "2", check=False)
    assert json.loads(refused.stdout)["error"]["code"] == "DeleteConflictException"
    env.json("template", "versions", "delete", "edge-fleet", "1")
    versions = env.json("template", "versions", "list", "edge-fleet")["versions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [(2, True)]

    # bulk from the stored template's default version
    write_devices(env, 50)
    run = env.run(
        *START,
        "--template",
        "edge-fleet",
    )
    assert json.loads(run.stdout)["successCount"] == 50
    progress_lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert progress_lines[-1]["status"] == "Completed"

    env.json("template", "delete", "edge-fleet")
    gone = env.run("template", "describe", "edge-fleet", check=False)
    assert json.loads(gone.stdout)["error"]["code"] == "ResourceNotFoundException"


def test_bulk_start_rejections(env: Env) -> None:
    body = env.root / "t.json"
    body.write_text(json.dumps(THING_ONLY), encoding="utf-8")
    (env.root / "secret.jsonl").write_text('{"SerialNumber": "1"}\n', encoding="utf-8")
    for key, reason in (
        ("../../secret.jsonl", "INPUT_PATH_ESCAPES_ROOT"),
        ("missing.jsonl", "INPUT_FILE_NOT_FOUND"),
    ):
        out = env.run(
            "bulk",
            "start",
            "--bucket",
            "factory",
            "--key",
            key,
            "--role-arn",
            ROLE,
            "--template-body",
            str(body),
            check=False,
        )
        assert out.returncode == 1
        assert json.loads(out.stdout)["error"]["reason"] == reason
    write_devices(env, 3)
    body.write_text('{"Resources": {"thing": {"Type": "AWS::IoT::Thing"}}}', encoding="utf-8")
    out = env.run(
        *START,
        "--template-body",
        str(body),
        check=False,
    )
    error = json.loads(out.stdout)["error"]
    assert (error["code"], error["reason"]) == ("InvalidRequestException", "TEMPLATE_INVALID")
    assert env.json("bulk", "list") == {"taskIds": []}


def test_progress_bar_on_a_terminal(env: Env) -> None:
    body = env.root / "t.json"
    body.write_text(json.dumps(THING_ONLY), encoding="utf-8")
    write_devices(env, 3000)
    master, slave = pty.openpty()
    proc = env.popen(
        *START,
        "--template-body",
        str(body),
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    stdout, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert b"\r[" in screen
    assert b"] 100%  3000 ok  0 failed" in screen
    assert json.loads(stdout)["status"] == "Completed"


def test_cancel_detached_and_running(env: Env) -> None:
    body = env.root / "t.json"
    body.write_text(json.dumps(THING_ONLY), encoding="utf-8")
    # far more lines than run between two batch commits, so the cancel lands mid-run
    write_devices(env, 200_000)
    detached = env.json(
        *START,
        "--template-body",
        str(body),
        "--detach",
    )
    task_id = detached["taskId"]
    assert env.json("bulk", "cancel", task_id)["status"] == "Cancelled"
    assert env.json("bulk", "resume", task_id)["successCount"] == 0

    proc = env.popen(
        *START,
        "--template-body",
        str(body),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    first = json.loads(proc.stderr.readline())  # the first progress line names the task
    running = first["taskId"]
    deadline = time.monotonic() + 120
    while env.json("bulk", "describe", running)["successCount"] == 0:
        assert time.monotonic() < deadline, "no progress"
        assert proc.poll() is None
        time.sleep(0.05)
    asked = env.json("bulk", "cancel", running)
    assert asked["status"] == "Cancelling"
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    final = json.loads(stdout)
    assert final["status"] == "Cancelled"
    assert 0 < final["successCount"] < 200_000
    results = env.run("bulk", "reports", running, "--type", "RESULTS").stdout.splitlines()
    assert [json.loads(r)["lineNumber"] for r in results] == list(
        range(1, final["successCount"] + 1)
    )
    assert env.json("bulk", "list", "--status", "Cancelled")["taskIds"] == [running, task_id]
    failed = env.run("bulk", "cancel", "0" * 32, check=False)
    assert json.loads(failed.stdout)["error"]["code"] == "ResourceNotFoundException"


def test_registry_only_config_writes_beside_the_registry(env: Env) -> None:
    # A registry host configures only [registry]: nothing may land in the agent's state dir.
    agent_state = env.root / "agent-state"
    agent_state.mkdir()
    registry_dir = env.root / "registry"
    registry_dir.mkdir()
    env.config.write_text(
        f"""
[registry]
database = "{registry_dir / "registry.db"}"
ca_dir = "{env.root / "ca"}"
bulk_root = "{env.bulk_root}"
region = "eu-west-1"
account = "111122223333"
""",
        encoding="utf-8",
    )
    body = env.root / "t.json"
    body.write_text(json.dumps(THING_ONLY), encoding="utf-8")
    write_devices(env, 5)
    os.environ["STATE_DIRECTORY"] = str(agent_state)  # where [agent] state_dir would default
    try:
        task = json.loads(env.run(*START, "--template-body", str(body)).stdout)["taskId"]
    finally:
        os.environ.pop("STATE_DIRECTORY", None)
    assert list(agent_state.iterdir()) == []
    reports = registry_dir / "bulk-reports" / task
    assert reports.is_dir()
    lines = env.run("bulk", "reports", task, "--type", "RESULTS").stdout.splitlines()
    assert len(lines) == 5
