"""A whole appliance for tests and benchmarks: ``edge-agent run`` as a child process.

:class:`Fleet` runs ``registry serve`` (the provisioning endpoint) and a mosquitto (the
operational broker, which the template's ``mqttEndpoint`` names) on one PKI, with a watcher
subscribed to every appliance's events. :class:`Appliance` is one daemon with the directory
stick source, the dry-run network backend and its own state; :func:`stick_image` makes a
real FAT image holding an archive.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import ec

from agent.archive.make import MAX_LIFETIME, DeviceRequest, build_archive
from agent.archive.network import parse_network_payload
from agent.daemon import api_request
from agent.errors import StateError
from agent.registry.ca import cert_to_pem
from tests.helpers.endpoint import EndpointPki, Serve, add_template, serve, write_config
from tests.helpers.env import need_binary
from tests.helpers.mosquitto import Broker, Pki, Watcher
from tests.helpers.registry import example_template, write_hook

REPO = Path(__file__).resolve().parents[2]
NETWORK: dict[str, Any] = {
    "Ethernet0": {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": "198.18.10.20",
            "Mask": "255.255.255.0",
            "DefaultGateway": "198.18.10.1",
            "Dns": ["198.18.10.53"],
        },
    },
    "Ntp": {"NtpServers": ["198.18.10.123"]},
}
FINAL = ("SUCCEEDED", "FAILED", "ERROR")


@dataclass
class Fleet:
    """The provisioning endpoint, the operational broker and a watcher of all events."""

    directory: Path
    pki: EndpointPki = field(init=False)
    broker: Broker = field(init=False)
    serve: Serve = field(init=False)
    watcher: Watcher = field(init=False)
    trust_anchor: Path = field(init=False)

    def start(self) -> None:
        """Start everything (the endpoint's template ``edge-fleet`` names the broker)."""
        self.pki = EndpointPki(self.directory / "pki")
        broker_pki = Pki(
            self.directory / "broker-pki",
            key=cast("ec.EllipticCurvePrivateKey", self.pki.ca.root_key),
            cert=self.pki.ca.root_cert,
            issuers=(self.pki.ca.claim_issuer.cert, self.pki.ca.device_issuer.cert),
        )
        (self.directory / "op").mkdir()
        self.broker = Broker(
            self.directory / "op",
            broker_pki,
            acl="pattern readwrite edge/%u/#\n\nuser watcher\ntopic read edge/#\n",
        )
        self.broker.start()
        database = self.directory / "registry.db"
        config = write_config(self.directory / "registry.toml", self.pki, database)
        body = example_template()
        body["DeviceConfiguration"] = {"mqttEndpoint": f"localhost:{self.broker.port}"}
        add_template(database, "edge-fleet", body=body)
        # a pre-provisioning hook that takes 3 s: RegisterThing is slow enough to kill during
        slow = write_hook(
            self.directory, "slow", "time.sleep(3); print(json.dumps({'allowProvisioning': True}))"
        )
        add_template(database, "edge-slow", body=body, hook=str(slow))
        self.serve = serve(config, self.pki)
        self.watcher = Watcher(self.broker, broker_pki.identity("watcher"), ["edge/+/events"])
        self.trust_anchor = self.directory / "trust.pem"
        self.trust_anchor.write_bytes(cert_to_pem(self.pki.ca.root_cert))

    def stop(self) -> None:
        """Stop the watcher, the endpoint and the broker."""
        self.watcher.close()
        self.serve.stop()
        self.broker.stop()

    def archive(
        self,
        name: str | None = None,
        *,
        template: str = "edge-fleet",
        port: int | None = None,
        networking: dict[str, Any] | None = None,
        window_left: float | None = None,
    ) -> tuple[str, bytes]:
        """A new archive for this fleet: (device name, zip bytes).

        ``window_left``: seconds of the claim certificate's 5-minute window left now
        (negative: the window ended that long ago).
        """
        serial = secrets.token_hex(4)
        device = name or f"appliance-{serial}"
        not_before = None
        if window_left is not None:
            now = dt.datetime.now(dt.UTC)
            not_before = now - MAX_LIFETIME + dt.timedelta(seconds=window_left)
        built = build_archive(
            self.pki.ca.factory(),
            DeviceRequest(
                name=device,
                networking=parse_network_payload(networking or NETWORK),
                endpoint=f"localhost:{port or self.serve.port}",
                template=template,
                template_parameters={"SerialNumber": serial},
                not_before=not_before,
            ),
        )
        return device, built.data

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Events received so far (optionally of one run)."""
        found = [json.loads(p) for p in self.watcher.payloads()]
        return [e for e in found if run_id is None or e["body"].get("runId") == run_id]

    def wait_event(self, run_id: str, event_type: str, timeout: float = 30) -> dict[str, Any]:
        """The first event of ``event_type`` for ``run_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(run_id):
                if event["type"] == event_type:
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no {event_type} for {run_id} in {self.events()}")


def stick_image(path: Path, files: dict[str, bytes], *, size_kib: int = 2048) -> Path:
    """A FAT image holding ``files`` in its root (mkfs.vfat + mcopy)."""
    mkfs = need_binary("mkfs.vfat")
    mcopy = need_binary("mcopy")
    subprocess.run([mkfs, "-C", str(path), str(size_kib)], check=True, capture_output=True)
    source = path.parent / f".{secrets.token_hex(4)}"
    source.mkdir()
    for name, data in files.items():
        (source / name).write_bytes(data)
        subprocess.run(
            [mcopy, "-i", str(path), str(source / name), f"::/{name}"],
            check=True,
            capture_output=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        )
    shutil.rmtree(source)
    return path


def read_stick(path: Path, name: str = "edge-agent/result.json") -> bytes | None:
    """One file from a FAT image, or None."""
    done = subprocess.run(
        [need_binary("mcopy"), "-n", "-i", str(path), f"::/{name}", "-"],
        capture_output=True,
        check=False,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    return done.stdout if done.returncode == 0 else None


@dataclass
class Appliance:
    """One ``edge-agent run`` with the directory stick source and the dry-run network."""

    directory: Path
    fleet: Fleet
    process: subprocess.Popen[bytes] | None = None
    extra: str = ""
    #: A datagram socket path the daemon's sd_notify messages go to (NOTIFY_SOCKET).
    notify: Path | None = None
    #: Extra environment of the next start (``EDGE_AGENT_CRASH_AT``...).
    environment: dict[str, str] = field(default_factory=dict)
    #: Extra lines of the ``[archive]`` section (``build_time_floor = ...``).
    archive_extra: str = ""

    @property
    def sticks(self) -> Path:
        """The watched directory (an image dropped here is a stick inserted)."""
        return self.directory / "sticks"

    @property
    def state(self) -> Path:
        """The state directory."""
        return self.directory / "state"

    @property
    def socket(self) -> Path:
        """The local API's socket."""
        return self.directory / "run" / "agent.sock"

    @property
    def config(self) -> Path:
        """The configuration file (written by :meth:`start`)."""
        return self.directory / "agent.toml"

    def write_config(self) -> None:
        """The appliance's agent.toml."""
        self.config.write_text(
            f"""
[agent]
state_dir = "{self.state}"
runtime_dir = "{self.directory / "run"}"
[api]
socket = "{self.socket}"
[archive]
trust_anchor = "{self.fleet.trust_anchor}"
require_synchronized_clock = false
{self.archive_extra}
[network]
backend = "dry-run"
dry_run_root = "{self.directory / "root"}"
[usb]
source = "directory"
directory = "{self.sticks}"
debounce_seconds = 0
[mqtt]
connect_timeout_seconds = 3
reconnect_initial_seconds = 0.2
reconnect_max_seconds = 1
fleet_step_timeout_seconds = 10
{self.extra}
""",
            encoding="utf-8",
        )

    def start(self, timeout: float = 20) -> float:
        """Start the daemon; return the seconds until the API answered."""
        self.write_config()
        started = time.monotonic()
        log = (self.directory / "agent.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(self.config), "run"],
            cwd=REPO,
            stdout=log,
            stderr=log,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                **({"NOTIFY_SOCKET": str(self.notify)} if self.notify else {}),
                **self.environment,
            },
            start_new_session=True,
        )
        log.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the agent exited: {self.log()[-3000:]}")
            try:
                self.status()
                return time.monotonic() - started
            except StateError:
                time.sleep(0.05)
        raise AssertionError(f"the agent did not start: {self.log()[-3000:]}")

    def log(self) -> str:
        """The agent's output so far."""
        path = self.directory / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the daemon to exit by itself (a crash point); its return code."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent is still running: {self.log()[-3000:]}") from None
        self.process = None
        return code

    def kill(self) -> None:
        """``kill -9``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def status(self) -> dict[str, Any]:
        """``GET /status``."""
        code, body = api_request(self.socket, "GET", "/status", timeout=5)
        assert code == 200, body
        result: dict[str, Any] = body
        return result

    def request(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        """One local API request."""
        return api_request(self.socket, method, target, timeout=5, body=body)

    def insert(self, image: Path) -> Path:
        """Move ``image`` into the watched directory (one atomic rename)."""
        self.sticks.mkdir(parents=True, exist_ok=True)
        target = self.sticks / image.name
        image.rename(target)
        return target

    def wait_run(
        self, *, after: set[str], timeout: float = 60, final: bool = True
    ) -> dict[str, Any]:
        """The first run not in ``after``: finished with the service idle again (its stick
        written, its LED and link updated), or just started when ``final`` is False."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status()["provisioning"]
            if final and last["currentRun"] is not None:
                time.sleep(0.05)
                continue
            for key in ("currentRun", "lastRun"):
                run = last.get(key)
                if run and run["Id"] not in after and (not final or run["Status"] in FINAL):
                    return dict(run)
            time.sleep(0.05)
        raise AssertionError(f"no new run: {last}\n{self.log()[-3000:]}")

    def wait_idle(self, timeout: float = 30) -> dict[str, Any]:
        """``GET /status``'s provisioning part once no run is working (the run's LED, stick
        write-back and operational link come after its record ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status: dict[str, Any] = self.status()["provisioning"]
            if status["currentRun"] is None:
                return status
            time.sleep(0.05)
        raise AssertionError(f"still working: {self.status()}")

    def run_ids(self) -> set[str]:
        """Ids of the current and last runs."""
        status = self.status()["provisioning"]
        return {r["Id"] for r in (status["currentRun"], status["lastRun"]) if r}
