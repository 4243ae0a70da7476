"""``registry serve --api-socket``: the registry's HTTP routes beside the MQTT endpoint."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from agent.daemon import api_request
from tests.helpers.endpoint import EndpointPki, serve, write_config
from tests.helpers.registry import make_csr
from tests.helpers.registry_api import CSR_TEMPLATE, start_request, template_request, write_input
from tests.integration.endpoint.conftest import need_endpoint


def test_serve_answers_the_registry_routes_on_its_socket(tmp_path: Path) -> None:
    need_endpoint()
    pki = EndpointPki(tmp_path)
    database = tmp_path / "registry.db"
    bulk_root = tmp_path / "bulk-root"
    config = write_config(tmp_path / "agent.toml", pki, database, bulk_root=str(bulk_root))
    key = write_input(bulk_root, 500)
    socket_path = tmp_path / "run" / "registry-api.sock"
    running = serve(config, pki, "--api-socket", str(socket_path))
    try:
        assert running.ready["api"] == str(socket_path)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
        code, created = api_request(
            socket_path, "POST", "/provisioning-templates", body=template_request()
        )
        assert code == 200, created
        assert created["templateArn"].endswith(":provisioningtemplate/edge-fleet")
        parameters = {"ThingName": "hub-1", "SerialNumber": "1", "CSR": make_csr("hub-1")}
        code, registered = api_request(
            socket_path,
            "POST",
            "/things",
            body={"templateBody": json.dumps(CSR_TEMPLATE), "parameters": parameters},
        )
        assert code == 200, registered
        assert registered["resourceArns"]["thing"].endswith(":thing/hub-1")
        code, body = api_request(socket_path, "POST", "/things", body={"parameters": {}})
        assert (code, body["error"]["reason"]) == (400, "FIELD_REQUIRED")
        code, started = api_request(
            socket_path, "POST", "/thing-registration-tasks", body=start_request(key)
        )
        assert code == 200, started
        target = f"/thing-registration-tasks/{started['taskId']}"
        for _ in range(600):
            code, described = api_request(socket_path, "GET", target)
            if described["status"] != "InProgress":
                break
            time.sleep(0.05)
        assert (described["status"], described["successCount"]) == ("Completed", 500)
    finally:
        assert running.stop() == 0, running.stderr
    assert not socket_path.exists()
