"""The pre-provisioning hook with real executables and a real HTTPS endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.registry.errors import ProvisioningDeniedError
from agent.registry.hook import HookRequest, PreProvisioningHook, call_hook
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.registry import make_csr, write_hook
from tests.integration.registry.conftest import CaDir, HookServer

TEMPLATE_ARN = "arn:aws:iot:eu-west-1:111122223333:provisioningtemplate/fleet"

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "Serial": {"Type": "String"},
        "Site": {"Type": "String", "Default": "lab"},
        "CSR": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Sub": "dev-${Serial}"},
                "AttributePayload": {"site": {"Ref": "Site"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
        },
    },
}


def register(registry: Registry, hook: PreProvisioningHook, serial: str = "1") -> Any:
    return registry.register_thing(
        TEMPLATE,
        {"Serial": serial, "CSR": make_csr(f"dev-{serial}")},
        hook=hook,
        template_arn=TEMPLATE_ARN,
        client_id="client-7",
        claim_certificate_id="d" * 64,
    )


def denied(registry: Registry, hook: PreProvisioningHook) -> ProvisioningDeniedError:
    with pytest.raises(ProvisioningDeniedError) as caught:
        register(registry, hook)
    error = caught.value
    assert error.code == "UnauthorizedException"
    assert error.status_code == 401
    assert registry.storage.count_things() == 0
    return error


def test_allow_sends_the_aws_request_and_records_the_decision(
    registry: Registry, storage: SqliteRegistryStorage, tmp_path: Path
) -> None:
    seen = tmp_path / "request.json"
    hook = write_hook(
        tmp_path,
        "allow",
        f"open({str(seen)!r}, 'w').write(json.dumps(request))\n"
        "print(json.dumps({'allowProvisioning': True}))",
    )
    result = register(registry, PreProvisioningHook(str(hook)))
    request = json.loads(seen.read_text())
    assert set(request) == {
        "claimCertificateId",
        "certificateId",
        "certificatePem",
        "templateArn",
        "clientId",
        "parameters",
    }
    assert request["certificateId"] == result.certificate_id
    assert request["certificatePem"] == result.certificate_pem
    assert request["templateArn"] == TEMPLATE_ARN
    assert request["clientId"] == "client-7"
    assert request["claimCertificateId"] == "d" * 64
    assert request["parameters"]["Serial"] == "1"
    decisions = storage.hook_decisions(result.certificate_id)
    assert [(d.allowed, d.reason, d.template_arn) for d in decisions] == [
        (True, "ALLOWED", TEMPLATE_ARN)
    ]


def test_overrides_are_merged_into_the_parameters(
    registry: Registry, storage: SqliteRegistryStorage, tmp_path: Path
) -> None:
    hook = write_hook(
        tmp_path,
        "override",
        "print(json.dumps({'allowProvisioning': True, "
        "'parameterOverrides': {'Site': 'plant-' + request['parameters']['Serial']}}))",
    )
    register(registry, PreProvisioningHook(str(hook)), serial="77")
    thing = storage.get_thing("dev-77")
    assert thing is not None
    assert thing.attributes == {"site": "plant-77"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("print(json.dumps({'allowProvisioning': False}))", "HOOK_DENIED"),
        ("print(json.dumps({'allowProvisioning': 'true'}))", "HOOK_DENIED"),
        ("print(json.dumps({'allowProvisioning': 1}))", "HOOK_DENIED"),
        ("print(json.dumps({}))", "HOOK_DENIED"),
        ("print('not json at all')", "HOOK_BAD_RESPONSE"),
        ("print('')", "HOOK_BAD_RESPONSE"),
        ("print(json.dumps([True]))", "HOOK_BAD_RESPONSE"),
        (
            "print(json.dumps({'allowProvisioning': True, 'parameterOverrides': {'a': 1}}))",
            "HOOK_BAD_RESPONSE",
        ),
        (
            "print(json.dumps({'allowProvisioning': True, 'parameterOverrides': ['a']}))",
            "HOOK_BAD_RESPONSE",
        ),
        ("sys.stderr.write('boom\\n'); sys.exit(3)", "HOOK_FAILED"),
        ("raise RuntimeError('crash')", "HOOK_FAILED"),
        ("os.kill(os.getpid(), 9)", "HOOK_FAILED"),
    ],
    ids=[
        "false",
        "string-true",
        "one",
        "missing",
        "garbage",
        "empty",
        "array",
        "override-not-string",
        "overrides-not-map",
        "exit-3",
        "exception",
        "sigkill",
    ],
)
def test_anything_but_true_denies(
    registry: Registry, storage: SqliteRegistryStorage, tmp_path: Path, body: str, reason: str
) -> None:
    hook = write_hook(tmp_path, "hook", body)
    error = denied(registry, PreProvisioningHook(str(hook)))
    assert error.reason == reason
    rows = storage.store.db.execute(
        "SELECT allowed, reason, detail FROM registry_hook_decisions"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, reason)]
    assert rows[0][2]


def test_crash_detail_names_the_exit(registry: Registry, tmp_path: Path) -> None:
    hook = write_hook(tmp_path, "exit", "sys.stderr.write('database down\\n'); sys.exit(3)")
    error = denied(registry, PreProvisioningHook(str(hook)))
    assert "exited with status 3" in error.message
    assert "database down" in error.message
    hook = write_hook(tmp_path, "killed", "os.kill(os.getpid(), 9)")
    assert "signal 9" in denied(registry, PreProvisioningHook(str(hook))).message


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_timeout_denies_and_kills_the_hook_and_its_children(
    registry: Registry, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    hook = write_hook(
        tmp_path,
        "slow",
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)",
    )
    error = denied(registry, PreProvisioningHook(str(hook), timeout=0.5))
    assert error.reason == "HOOK_TIMEOUT"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the hook's process group must be killed"


def test_the_registry_caps_the_hook_budget(
    storage: SqliteRegistryStorage, ca_dir: CaDir, tmp_path: Path
) -> None:
    registry = Registry(
        storage, ca_dir.ca.registry(), region="eu-west-1", account="111122223333", hook_timeout=0.3
    )
    hook = write_hook(tmp_path, "slow", "time.sleep(60)")
    error = denied(registry, PreProvisioningHook(str(hook), timeout=5.0))
    assert error.reason == "HOOK_TIMEOUT"
    assert "0.3 seconds" in error.message


@pytest.mark.parametrize("target", ["relative/hook", "/nonexistent/hook", "http://127.0.0.1:9/"])
def test_unusable_targets_deny(registry: Registry, target: str) -> None:
    assert denied(registry, PreProvisioningHook(target)).reason == "HOOK_FAILED"


def test_a_file_that_is_not_executable_denies(registry: Registry, tmp_path: Path) -> None:
    hook = write_hook(tmp_path, "hook", "print('{}')")
    hook.chmod(0o644)
    assert denied(registry, PreProvisioningHook(str(hook))).reason == "HOOK_FAILED"


# --- HTTPS ---------------------------------------------------------------------------------


def test_https_allow_with_overrides(
    registry: Registry, storage: SqliteRegistryStorage, hook_server: HookServer
) -> None:
    hook = PreProvisioningHook(f"{hook_server.url}/allow", ca_file=hook_server.ca_file)
    result = register(registry, hook, serial="5")
    thing = storage.get_thing("dev-5")
    assert thing is not None
    assert thing.attributes == {"site": "web"}
    assert hook_server.requests[0]["certificateId"] == result.certificate_id
    parameters = hook_server.requests[0]["parameters"]
    assert isinstance(parameters, dict)
    assert parameters == {"Serial": "5", "CSR": parameters["CSR"]}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/deny", "HOOK_DENIED"),
        ("/garbage", "HOOK_BAD_RESPONSE"),
        ("/error", "HOOK_FAILED"),
        ("/duplicate", "HOOK_BAD_RESPONSE"),
        ("/redirect", "HOOK_FAILED"),
    ],
)
def test_https_denials(registry: Registry, hook_server: HookServer, path: str, reason: str) -> None:
    hook = PreProvisioningHook(f"{hook_server.url}{path}", ca_file=hook_server.ca_file)
    assert denied(registry, hook).reason == reason


def test_https_timeout(registry: Registry, hook_server: HookServer) -> None:
    hook = PreProvisioningHook(f"{hook_server.url}/slow", timeout=0.5, ca_file=hook_server.ca_file)
    assert denied(registry, hook).reason == "HOOK_TIMEOUT"


def test_https_untrusted_server_denies(registry: Registry, hook_server: HookServer) -> None:
    # Without the CA the server's certificate does not verify.
    hook = PreProvisioningHook(f"{hook_server.url}/allow")
    error = denied(registry, hook)
    assert error.reason == "HOOK_FAILED"
    assert hook_server.requests == []


def test_call_hook_directly(tmp_path: Path) -> None:
    hook = write_hook(
        tmp_path,
        "echo",
        "print(json.dumps({'allowProvisioning': True, "
        "'parameterOverrides': {'seen': request['clientId']}}))",
    )
    decision = call_hook(
        PreProvisioningHook(str(hook)),
        HookRequest(
            certificate_id="a" * 64,
            certificate_pem="pem",
            template_arn=TEMPLATE_ARN,
            parameters={},
            client_id="c1",
        ),
    )
    assert decision.allowed
    assert decision.parameter_overrides == {"seen": "c1"}


def test_deeply_nested_answer_denies(registry: Registry, tmp_path: Path) -> None:
    hook = write_hook(tmp_path, "deep", "print('[' * 20000 + ']' * 20000)")
    error = denied(registry, PreProvisioningHook(str(hook)))
    assert error.reason == "HOOK_BAD_RESPONSE"
    assert "nests too deeply" in error.message


def test_too_long_answer_denies(registry: Registry, tmp_path: Path) -> None:
    hook = write_hook(
        tmp_path, "long", "print(json.dumps({'allowProvisioning': True, 'x': 'y' * 70000}))"
    )
    error = denied(registry, PreProvisioningHook(str(hook)))
    assert error.reason == "HOOK_BAD_RESPONSE"
    assert "too long" in error.message


def test_overrides_cannot_change_the_certificate_facts(
    registry: Registry, storage: SqliteRegistryStorage, tmp_path: Path
) -> None:
    hook = write_hook(
        tmp_path,
        "sneaky",
        "print(json.dumps({'allowProvisioning': True, 'parameterOverrides': "
        "{'AWS::IoT::Certificate::Id': 'f' * 64, 'Site': 'ok'}}))",
    )
    template = json.loads(json.dumps(TEMPLATE))
    template["Resources"]["thing"]["Properties"]["AttributePayload"]["cert"] = {
        "Ref": "AWS::IoT::Certificate::Id"
    }
    result = registry.register_thing(
        template, {"Serial": "3", "CSR": make_csr("dev-3")}, hook=PreProvisioningHook(str(hook))
    )
    thing = storage.get_thing("dev-3")
    assert thing is not None
    assert thing.attributes == {"site": "ok", "cert": result.certificate_id}


def test_timeout_with_an_escaped_descendant_holding_the_pipes(
    registry: Registry, tmp_path: Path
) -> None:
    pid_file = tmp_path / "escaped.pid"
    hook = write_hook(
        tmp_path,
        "escape",
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '30'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)",
    )
    try:
        error = denied(registry, PreProvisioningHook(str(hook), timeout=0.5))
        assert error.reason == "HOOK_TIMEOUT"
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), 9)


def test_https_redirect_is_not_followed(registry: Registry, hook_server: HookServer) -> None:
    hook = PreProvisioningHook(f"{hook_server.url}/redirect", ca_file=hook_server.ca_file)
    error = denied(registry, hook)
    assert "redirect" in error.message
    assert len(hook_server.requests) == 1  # nothing was sent to the redirect's target


def test_https_deadline_holds_against_a_trickling_answer(
    registry: Registry, hook_server: HookServer
) -> None:
    # Every byte arrives well inside a per-read timeout; only a whole-call deadline stops it.
    hook = PreProvisioningHook(f"{hook_server.url}/drip", timeout=0.6, ca_file=hook_server.ca_file)
    started = time.monotonic()
    assert denied(registry, hook).reason == "HOOK_TIMEOUT"
    assert time.monotonic() - started < 3.0


def test_the_hook_gets_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_DATABASE_PASSWORD", "not-for-hooks")
    hook = write_hook(
        tmp_path,
        "env",
        "print(json.dumps({'allowProvisioning': True, 'parameterOverrides': "
        "{'Site': ','.join(sorted(os.environ)) + '|' + os.getcwd()}}))",
    )
    decision = call_hook(
        PreProvisioningHook(str(hook)),
        HookRequest(certificate_id="a" * 64, certificate_pem="", template_arn="", parameters={}),
    )
    seen, cwd = decision.parameter_overrides["Site"].split("|")
    assert set(seen.split(",")) <= {"PATH", "LANG", "LC_CTYPE"}
    assert "REGISTRY_DATABASE_PASSWORD" not in seen
    assert cwd == "/"


def test_an_endless_answer_is_cut_at_the_cap(registry: Registry, tmp_path: Path) -> None:
    hook = write_hook(tmp_path, "endless", "while True:\n    sys.stdout.write('x' * 65536)")
    started = time.monotonic()
    error = denied(registry, PreProvisioningHook(str(hook), timeout=5.0))
    assert error.reason == "HOOK_BAD_RESPONSE"
    assert "too long" in error.message
    assert time.monotonic() - started < 4.0  # refused at the cap, not at the deadline


def test_a_duplicate_allow_key_denies(registry: Registry, tmp_path: Path) -> None:
    hook = write_hook(
        tmp_path,
        "dup",
        'print(\'{"allowProvisioning": false, "allowProvisioning": true}\')',
    )
    error = denied(registry, PreProvisioningHook(str(hook)))
    assert error.reason == "HOOK_BAD_RESPONSE"
    assert "duplicate key" in error.message
