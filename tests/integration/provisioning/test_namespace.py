"""``edge-agent run`` inside a network namespace with the netlink backend (root only).

The appliance namespace has eth0/eth1 and a gateway peer (the netconf lab). A run whose
archive names a gateway that does not answer ends ERROR with the probe's reason and the
network exactly as before; one whose gateway answers commits the network, then meets the
fleet endpoint (unreachable from the namespace) and ends ERROR there, the network kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.archive.make import DeviceRequest, build_archive
from agent.archive.network import parse_network_payload
from agent.daemon import api_request
from agent.errors import StateError
from agent.registry.ca import CertificateAuthority, cert_to_pem, init_ca
from tests.helpers.network import static_ip
from tests.integration.netconf.conftest import Lab, lab  # noqa: F401 - the fixture

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _start(lab: Lab) -> tuple[Path, CertificateAuthority]:  # noqa: F811 - the fixture's type
    ca = init_ca(lab.tmp / "ca", name="netns run CA")
    trust = lab.tmp / "trust.pem"
    trust.write_bytes(cert_to_pem(ca.root_cert))
    socket_path = lab.tmp / "run" / "agent.sock"
    lab.write_config(
        archive={"trust_anchor": str(trust), "require_synchronized_clock": False},
        network={"probe_timeout_seconds": 3},
        usb={"source": "directory", "directory": str(lab.tmp / "sticks")},
        api={"socket": str(socket_path)},
        mqtt={"connect_timeout_seconds": 1, "fleet_step_timeout_seconds": 2},
    )
    lab.start(lab.agent_argv("run"), "agent")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            api_request(socket_path, "GET", "/status", timeout=2)
        except StateError:
            time.sleep(0.05)
        else:
            return socket_path, ca
    raise AssertionError(lab.log("agent"))


def _provision(
    lab: Lab,  # noqa: F811 - the fixture's type
    started: tuple[Path, CertificateAuthority],
    network: dict[str, Any],
) -> dict[str, Any]:
    socket_path, ca = started
    built = build_archive(
        ca.factory(),
        DeviceRequest(
            name="ns-appliance",
            networking=parse_network_payload(network),
            endpoint="127.0.0.1:9",
            template="edge-fleet",
        ),
    )
    path = lab.tmp / built.filename
    path.write_bytes(built.data)
    code, body = api_request(socket_path, "POST", "/devices", body={"ArchivePath": str(path)})
    assert code == 202, body
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, run = api_request(socket_path, "GET", f"/devices/{body['Id']}")
        if run["Status"] in ("SUCCEEDED", "FAILED", "ERROR"):
            return dict(run)
        time.sleep(0.05)
    raise AssertionError(lab.log("agent"))


def test_probe_failure_rolls_back_and_ends_error(lab: Lab) -> None:  # noqa: F811
    before = lab.inspect()
    run = _provision(
        lab, _start(lab), {"Ethernet0": static_ip("198.18.1.30", gateway="198.18.1.99")}
    )
    assert (run["Status"], run["Reason"]) == ("ERROR", "PROBE_GATEWAY_UNREACHABLE"), run
    assert run["Step"] == "network"
    after = lab.inspect()
    assert after["exact"] == before["exact"]
    assert lab.marker_row() is None


def test_committed_network_then_unreachable_endpoint_ends_error(lab: Lab) -> None:  # noqa: F811
    run = _provision(
        lab, _start(lab), {"Ethernet0": static_ip("198.18.1.30", gateway="198.18.1.1")}
    )
    assert (run["Status"], run["Reason"]) == ("ERROR", "MQTT_CONNECT_FAILED"), run
    assert run["Step"] == "fleet"
    assert list(run["Result"]["timings"]) == [
        "validate",
        "install",
        "network",
        "time-check",
        "fleet",
    ]
    addresses = str(lab.inspect()["view"])
    assert "198.18.1.30" in addresses
    assert [h["outcome"] for h in lab.history()] == ["committed"]
