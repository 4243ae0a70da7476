"""A whole SUCCEEDED run of ``edge-agent run`` inside a network namespace (root only).

The appliance namespace has eth0/eth1 (veth ends) with a gateway peer on each (the netconf
lab). ``registry serve`` (the provisioning endpoint) and the operational mosquitto run inside
the appliance namespace too, on its own loopback, so the daemon reaches them only from
there. The stick's archive sets static addresses on Ethernet0 and Ethernet1; the netlink
backend applies them as a trial, the probe reaches both gateways, the trial is committed,
fleet provisioning registers the thing and the run ends SUCCEEDED, reported over MQTT and on
the stick.

With chrony as the time backend (a chronyd inside the namespace, never touching the clock)
and the appliance's clock before the build-time floor: a source that answers (a chronyd
server on the gateway peer) synchronises and the run goes on; one that never answers ends
the run ERROR ``CLOCK_NOT_SYNCHRONIZED`` within ``[ntp] sync_timeout_seconds``.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import api_request
from agent.errors import StateError
from tests.helpers.appliance import Fleet, read_stick, stick_image
from tests.helpers.env import need_binary
from tests.helpers.netns import inside
from tests.helpers.network import static_ip
from tests.integration.endpoint.conftest import need_endpoint
from tests.integration.netconf.conftest import Lab, lab, sh, wait_for  # noqa: F401 - fixture

pytestmark = [pytest.mark.netns, pytest.mark.mqtt, pytest.mark.slow]

NTP_SERVER = "198.18.1.123"


NETWORK: dict[str, Any] = {
    "Ethernet0": static_ip("198.18.1.30", gateway="198.18.1.1"),
    "Ethernet1": static_ip("198.18.2.30", gateway="198.18.2.1"),
}


@pytest.fixture
def fleet(lab: Lab) -> Iterator[Fleet]:  # noqa: F811 - the fixture
    """The endpoint and the operational broker, listening inside the appliance namespace."""
    need_endpoint()
    running = Fleet(lab.tmp / "fleet")
    running.directory.mkdir()
    with inside(lab.ns):
        running.start()
    try:
        yield running
    finally:
        running.stop()


class Agent:
    """``edge-agent run`` inside the lab's appliance namespace."""

    def __init__(self, lab: Lab, fleet: Fleet) -> None:  # noqa: F811
        self.lab = lab
        self.socket = lab.tmp / "run" / "agent.sock"
        self.sticks = lab.tmp / "sticks"
        self.sticks.mkdir()
        self.process: Any = None
        self.environment: dict[str, str] = {}
        lab.write_config(
            archive={"trust_anchor": str(fleet.trust_anchor), "require_synchronized_clock": False},
            network={"probe_timeout_seconds": 5},
            usb={"source": "directory", "directory": str(self.sticks), "debounce_seconds": 0},
            api={"socket": str(self.socket)},
            mqtt={
                "connect_timeout_seconds": 3,
                "fleet_step_timeout_seconds": 10,
                "reconnect_initial_seconds": 0.2,
                "reconnect_max_seconds": 1,
            },
        )

    def start(self) -> None:
        argv = self.lab.agent_argv("run")
        if self.environment:  # ip netns exec NS env K=V python -m agent ...
            at = argv.index(sys.executable)
            argv[at:at] = ["env", *(f"{k}={v}" for k, v in self.environment.items())]
        self.process = self.lab.start(argv, "agent")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.lab.log("agent")
            try:
                api_request(self.socket, "GET", "/status", timeout=2)
            except StateError:
                time.sleep(0.05)
            else:
                return
        raise AssertionError(self.lab.log("agent"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)

    def provisioning(self) -> dict[str, Any]:
        code, body = api_request(self.socket, "GET", "/status", timeout=5)
        assert code == 200, body
        status: dict[str, Any] = body["provisioning"]
        return status

    def run_stick(self, fleet: Fleet, network: dict[str, Any]) -> tuple[dict[str, Any], Path]:
        """Insert a stick with a new archive; the finished run (service idle) and the image."""
        status = self.provisioning()
        before = {r["Id"] for r in (status["currentRun"], status["lastRun"]) if r}
        device, data = fleet.archive(networking=network)
        image = stick_image(
            self.lab.tmp / f"{device}.img", {f"certificates-omni_{device}.zip": data}
        )
        target = self.sticks / image.name
        image.rename(target)

        def finished() -> dict[str, Any] | None:
            status = self.provisioning()
            last = status["lastRun"]
            if status["currentRun"] is None and last and last["Id"] not in before:
                return dict(last)
            return None

        run: dict[str, Any] = wait_for(finished, 90, "the run to end")
        return run, target


def _things(fleet: Fleet) -> int:
    with sqlite3.connect(fleet.directory / "registry.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM registry_things").fetchone()[0])


def _result(image: Path) -> dict[str, Any]:
    raw = wait_for(lambda: read_stick(image), 15, "result.json on the stick")
    result: dict[str, Any] = json.loads(raw)
    return result


def _addresses(lab: Lab, ifname: str) -> list[str]:  # noqa: F811
    return [a["addr"] for a in lab.inspect()["view"][ifname]["inet"]]


def test_static_ethernet0_and_ethernet1_committed_then_succeeded(
    lab: Lab,  # noqa: F811
    fleet: Fleet,
) -> None:
    agent = Agent(lab, fleet)
    agent.start()
    things = _things(fleet)
    run, image = agent.run_stick(fleet, NETWORK)
    assert run["Status"] == "SUCCEEDED", f"{run}\n{lab.log('agent')[-4000:]}"
    assert list(run["Result"]["timings"]) == [
        "validate",
        "install",
        "network",
        "time-check",
        "fleet",
    ]
    assert _addresses(lab, "eth0") == ["198.18.1.30"]
    assert _addresses(lab, "eth1") == ["198.18.2.30"]
    assert lab.inspect()["default_gateway"][1] in ("eth0", "eth1")
    assert [h["outcome"] for h in lab.history()] == ["committed"]
    assert lab.marker_row() is None
    assert _things(fleet) == things + 1
    outcome = fleet.wait_event(run["Id"], "RUN_OUTCOME")
    assert outcome["body"] == {"runId": run["Id"], "status": "SUCCEEDED"}
    result = _result(image)
    assert (result["status"], result["thingName"]) == ("SUCCEEDED", run["IotThingName"])
    assert agent.provisioning()["operationalLink"] is True
    agent.stop()


def _chrony(lab: Lab, *, server: bool) -> Path:  # noqa: F811
    """A chronyd in the appliance namespace (``-x``: never sets the clock) that the agent
    reconfigures; with ``server``, an NTP server on the gateway peer at NTP_SERVER."""
    need_binary("chronyd")
    need_binary("chronyc")
    sock_dir = lab.tmp / "chrony"
    sock_dir.mkdir(mode=0o700)
    sources = lab.tmp / "sources.d"
    sources.mkdir()
    client = lab.tmp / "chrony-client.conf"
    client.write_text(
        f"port 0\ncmdport 0\nbindcmdaddress {sock_dir / 'chronyd.sock'}\n"
        f"pidfile {sock_dir / 'client.pid'}\nsourcedir {sources}\nuser root\n"
    )
    if server:
        sh("ip", "-n", lab.peer, "addr", "add", f"{NTP_SERVER}/24", "dev", "gw0")
        conf = lab.tmp / "chrony-server.conf"
        conf.write_text(
            f"bindaddress {NTP_SERVER}\nlocal stratum 8\nallow 198.18.0.0/15\ncmdport 0\n"
            f"bindcmdaddress /\npidfile {lab.tmp / 'server.pid'}\nuser root\n"
        )
        lab.start(lab.in_peer("chronyd", "-x", "-d", "-f", str(conf)), "chrony-server")
    lab.start(lab.in_ns("chronyd", "-x", "-d", "-f", str(client)), "chrony-client")
    wait_for((sock_dir / "chronyd.sock").exists, 10, "chronyd's command socket")
    floor = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)  # the clock is not trusted by itself
    lab.write_config(
        archive={"build_time_floor": floor.isoformat(timespec="seconds")},
        ntp={
            "backend": "chrony",
            "chrony_sources_dir": str(sources),
            "chronyc_command": ["chronyc", "-h", str(sock_dir / "chronyd.sock")],
            "chrony_source_options": "iburst minpoll 0 maxpoll 0",
            "sync_timeout_seconds": 4,
        },
    )
    return sources


def _with_ntp() -> dict[str, Any]:
    return {"Ethernet0": NETWORK["Ethernet0"], "Ntp": {"NtpServers": [NTP_SERVER]}}


def test_ntp_that_answers_synchronises_and_the_run_succeeds(
    lab: Lab,  # noqa: F811
    fleet: Fleet,
) -> None:
    agent = Agent(lab, fleet)
    sources = _chrony(lab, server=True)
    agent.start()
    run, _ = agent.run_stick(fleet, _with_ntp())
    assert run["Status"] == "SUCCEEDED", f"{run}\n{lab.log('agent')[-4000:]}"
    assert f"server {NTP_SERVER} iburst" in (sources / "edge-agent.sources").read_text()
    assert "NTP synchronised" in lab.log("agent")
    agent.stop()


def test_ntp_that_never_answers_ends_error_within_its_budget(
    lab: Lab,  # noqa: F811
    fleet: Fleet,
) -> None:
    agent = Agent(lab, fleet)
    agent.start()
    first, _ = agent.run_stick(fleet, {"Ethernet0": NETWORK["Ethernet0"]})
    assert first["Status"] == "SUCCEEDED", first  # the appliance has its identity now
    agent.stop()
    _chrony(lab, server=False)
    agent.start()
    run, image = agent.run_stick(fleet, _with_ntp())
    assert (run["Status"], run["Reason"], run["Step"]) == (
        "ERROR",
        "CLOCK_NOT_SYNCHRONIZED",
        "time-check",
    ), f"{run}\n{lab.log('agent')[-4000:]}"
    timings = run["Result"]["timings"]
    waited = timings["network"] + timings["time-check"]
    assert 3.9 <= waited < 15, timings  # one bounded wait of [ntp] sync_timeout_seconds
    event = fleet.wait_event(run["Id"], "RUN_OUTCOME")
    assert event["body"]["error"]["reason"] == "CLOCK_NOT_SYNCHRONIZED"
    assert _result(image)["reason"] == "CLOCK_NOT_SYNCHRONIZED"
    assert lab.marker_row() is None  # the network trial was committed, not left open
    agent.stop()


@pytest.mark.parametrize("point", ["network.applied", "network.committed"])
def test_kill_9_in_the_network_step_then_restart_in_the_namespace(
    point: str,
    lab: Lab,  # noqa: F811
    fleet: Fleet,
) -> None:
    """The trial a crash left is reverted exactly at the restart (no revert failures), the
    resumed run applies and commits the network once, and the run ends SUCCEEDED."""
    agent = Agent(lab, fleet)
    agent.environment = {"EDGE_AGENT_CRASH_AT": point}
    agent.start()
    before = lab.inspect()
    things = _things(fleet)
    device, data = fleet.archive(networking=NETWORK)
    image = stick_image(lab.tmp / f"{device}.img", {f"certificates-omni_{device}.zip": data})
    image.rename(agent.sticks / image.name)
    assert agent.process.wait(timeout=60) == -9, lab.log("agent")[-3000:]
    crashed = lab.inspect()
    if point == "network.applied":  # the trial was in place when the process died
        assert lab.marker_row() is not None
        assert crashed["exact"] != before["exact"]
    agent.environment = {}
    agent.start()
    recovery = agent.provisioning()["networkRecovery"]
    if point == "network.applied":
        assert (recovery["action"], recovery["failures"]) == ("reverted", [])
    else:
        assert recovery["action"] == "reapplied"

    def finished() -> dict[str, Any] | None:
        status = agent.provisioning()
        last = status["lastRun"]
        return dict(last) if status["currentRun"] is None and last else None

    run = wait_for(finished, 60, "the resumed run to end")
    assert run["Status"] == "SUCCEEDED", f"{run}\n{lab.log('agent')[-4000:]}"
    assert _addresses(lab, "eth0") == ["198.18.1.30"]
    assert _addresses(lab, "eth1") == ["198.18.2.30"]
    outcomes = [h["outcome"] for h in lab.history()]
    if point == "network.applied":
        assert outcomes == ["recovered", "committed"]
        assert lab.history()[0]["reason"] == "TRIAL_INTERRUPTED"
    else:
        assert outcomes == ["committed", "committed"]
    assert lab.marker_row() is None
    assert _things(fleet) == things + 1
    events = [e for e in fleet.events(run["Id"]) if e["type"] == "RUN_OUTCOME"]
    assert len(events) <= 1
    assert fleet.wait_event(run["Id"], "RUN_OUTCOME")["body"]["status"] == "SUCCEEDED"
    agent.stop()
