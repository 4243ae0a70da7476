"""The registry operations on ``edge-agent run``'s socket: the daemon as a subprocess.

Requests go over the real Unix socket; the registry database is read back after each
refusal to show nothing was written. A bulk task keeps running after its start was
answered, pauses at SIGTERM and finishes after the next start.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import api_request
from agent.errors import StateError
from agent.registry.ca import init_ca
from tests.helpers.registry import make_csr, tampered_csr
from tests.helpers.registry_api import (
    CSR_TEMPLATE,
    contents,
    start_request,
    template_request,
    write_input,
)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def raw_request(path: Path, method: str, target: str, body: bytes) -> tuple[int, Any]:
    """A request whose body is sent as given (not necessarily JSON)."""
    connection = _Unix(path)
    try:
        connection.request(method, target, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@dataclass
class Host:
    """An appliance configured as a registry host."""

    root: Path
    config: Path
    api: Path
    database: Path
    bulk_root: Path
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "STATE_DIRECTORY"}}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(self.config), "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                code, _ = api_request(self.api, "GET", "/status", timeout=1)
            except StateError:
                assert self.process.poll() is None, self.process.communicate()
                assert time.monotonic() < deadline, "the daemon did not answer"
                time.sleep(0.05)
            else:
                assert code == 200
                return

    def stop(self) -> str:
        """SIGTERM, wait for a clean exit; returns the daemon's log (stderr)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        self.process = None
        return err

    def call(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        return api_request(self.api, method, target, timeout=30, body=body)

    def wait_finished(self, task_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 180
        while True:
            code, body = self.call("GET", f"/thing-registration-tasks/{task_id}")
            assert code == 200, body
            if body["status"] not in {"InProgress", "Cancelling"}:
                described: dict[str, Any] = body
                return described
            assert time.monotonic() < deadline, body
            time.sleep(0.1)


def _config(root: Path, *, registry: bool) -> str:
    return f"""
[agent]
state_dir = "{root / "state"}"
runtime_dir = "{root / "run"}"
[api]
socket = "{root / "run" / "api.sock"}"
registry = {"true" if registry else "false"}
[registry]
database = "{root / "registry" / "registry.db"}"
ca_dir = "{root / "ca"}"
bulk_root = "{root / "bulk-root"}"
region = "eu-west-1"
account = "111122223333"
"""


def _host(root: Path, *, registry: bool) -> Host:
    (root / "bulk-root" / "factory").mkdir(parents=True)
    config = root / "agent.toml"
    config.write_text(_config(root, registry=registry), encoding="utf-8")
    return Host(
        root,
        config,
        root / "run" / "api.sock",
        root / "registry" / "registry.db",
        root / "bulk-root",
    )


@pytest.fixture
def registry_host(tmp_path: Path) -> Iterator[Host]:
    init_ca(tmp_path / "ca")
    host = _host(tmp_path, registry=True)
    try:
        yield host
    finally:
        if host.process is not None and host.process.poll() is None:
            host.process.kill()
            host.process.communicate(timeout=30)


def test_registry_routes_are_off_unless_configured(tmp_path: Path) -> None:
    host = _host(tmp_path, registry=False)
    host.start()
    try:
        for method, target in (
            ("POST", "/provisioning-templates"),
            ("POST", "/things"),
            ("POST", "/thing-registration-tasks"),
            ("GET", "/thing-registration-tasks/abc"),
        ):
            code, body = host.call(method, target, {})
            assert code == 404
            assert body["error"]["reason"] == "PATH_NOT_FOUND"
    finally:
        host.stop()
    assert not host.database.exists()


def _refused(host: Host, answer: tuple[int, Any], status: int, code: str, reason: str) -> None:
    got, body = answer
    assert got == status, body
    error = body["error"]
    assert (error["code"], error["statusCode"], error["reason"]) == (code, status, reason)


def test_registry_operations_over_the_socket(registry_host: Host) -> None:
    host = registry_host
    host.start()
    code, created = host.call("POST", "/provisioning-templates", template_request())
    assert code == 200
    assert created["templateName"] == "edge-fleet"
    assert created["defaultVersionId"] == 1
    code, described = host.call("GET", "/provisioning-templates/edge-fleet")
    assert (code, described["templateArn"]) == (200, created["templateArn"])
    code, listed = host.call("GET", "/provisioning-templates")
    assert [t["templateName"] for t in listed["templates"]] == ["edge-fleet"]

    parameters = {"ThingName": "bulb-7", "SerialNumber": "7", "CSR": make_csr("bulb-7")}
    body = {"templateBody": json.dumps(CSR_TEMPLATE), "parameters": parameters}
    code, registered = host.call("POST", "/things", body)
    assert code == 200
    assert registered["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    assert registered["resourceArns"]["thing"].endswith(":thing/bulb-7")

    before = contents(host.database)
    assert (before["provisioning_templates"], before["registry_things"]) == (1, 1)
    invalid = "InvalidRequestException"
    refusals = [
        (raw_request(host.api, "POST", "/things", b"{oops"), 400, invalid, "REQUEST_NOT_JSON"),
        (
            raw_request(host.api, "POST", "/provisioning-templates", b"\x00"),
            400,
            invalid,
            "REQUEST_NOT_JSON",
        ),
        (
            host.call("POST", "/things", {**body, "extra": True}),
            400,
            invalid,
            "FIELD_UNKNOWN",
        ),
        (
            host.call("POST", "/things", {**body, "templateBody": 5}),
            400,
            invalid,
            "FIELD_TYPE_INVALID",
        ),
        (
            host.call(
                "POST",
                "/things",
                {**body, "parameters": {**parameters, "CSR": tampered_csr()}},
            ),
            400,
            invalid,
            "CSR_SIGNATURE_INVALID",
        ),
        (
            host.call("POST", "/provisioning-templates", template_request(enabled="no")),
            400,
            invalid,
            "FIELD_TYPE_INVALID",
        ),
        (
            host.call(
                "POST",
                "/provisioning-templates",
                {**template_request("other"), "templateBody": '{"Resources": []}'},
            ),
            400,
            invalid,
            "TEMPLATE_INVALID",
        ),
        (
            host.call("POST", "/provisioning-templates", template_request()),
            409,
            "ResourceAlreadyExistsException",
            "TEMPLATE_ALREADY_EXISTS",
        ),
        (
            host.call("GET", "/provisioning-templates/nobody"),
            404,
            "ResourceNotFoundException",
            "TEMPLATE_NOT_FOUND",
        ),
        (
            host.call("POST", "/thing-registration-tasks", start_request("missing.jsonl")),
            400,
            invalid,
            "INPUT_FILE_NOT_FOUND",
        ),
        (
            host.call("GET", f"/thing-registration-tasks/{'f' * 32}"),
            404,
            "ResourceNotFoundException",
            "TASK_NOT_FOUND",
        ),
    ]
    for answer, status, code_name, reason in refusals:
        _refused(host, answer, status, code_name, reason)
    assert contents(host.database) == before

    key = write_input(host.bulk_root, 2000)
    code, started = host.call("POST", "/thing-registration-tasks", start_request(key))
    assert code == 200
    finished = host.wait_finished(started["taskId"])
    assert (finished["status"], finished["successCount"], finished["failureCount"]) == (
        "Completed",
        2000,
        0,
    )
    host.stop()
    assert contents(host.database)["registry_things"] == 2001


def test_sigterm_pauses_a_task_and_the_next_start_finishes_it(registry_host: Host) -> None:
    host = registry_host
    lines = 50000
    key = write_input(host.bulk_root, lines)
    host.start()
    code, started = host.call("POST", "/thing-registration-tasks", start_request(key))
    assert code == 200
    task_id = started["taskId"]
    log = host.stop()
    assert "paused for shutdown" in log
    paused = contents(host.database)
    assert paused["bulk_tasks"] == 1
    assert paused["registry_things"] < lines

    host.start()
    finished = host.wait_finished(task_id)
    assert (finished["status"], finished["successCount"], finished["failureCount"]) == (
        "Completed",
        lines,
        0,
    )
    host.stop()
    assert contents(host.database)["registry_things"] == lines
