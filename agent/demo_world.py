"""What ``edge-agent demo`` runs around the appliance: brokers, the endpoint, a stick image.

Everything lives under the demo's work directory and is stopped by the demo: one PKI
(:func:`agent.registry.ca.init_ca`) with a TLS server certificate for 127.0.0.1, the
operational mosquitto (mutual TLS, one topic tree per appliance), ``edge-agent registry
serve`` as the fleet-provisioning endpoint with one template, a subscriber on every
appliance's events, and FAT images made with ``mkfs.vfat`` and ``mcopy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import StateError
from agent.registry.ca import (
    CertificateAuthority,
    cert_to_pem,
    generate_key,
    key_to_pem,
    signature_hash,
)

TEMPLATE = "edge-fleet"
_MTOOLS_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "MTOOLS_SKIP_CHECK": "1"}


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def binary(name: str) -> str:
    """The path of a program the demo needs (``scripts/setup`` installs them)."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if found is None:
        raise StateError(f"{name} is not installed: run scripts/setup", reason="DEMO_TOOL_MISSING")
    return found


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


class DemoPki:
    """TLS material made from the demo's CA."""

    def __init__(self, ca: CertificateAuthority, directory: Path) -> None:
        self.ca = ca
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        key = generate_key("ec-p256")
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca.root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca.root_key, signature_hash(ca.root_key))
        )
        self.server_cert = _write(directory / "server.pem", cert_to_pem(server))
        self.server_key = _write(directory / "server.key", key_to_pem(key), 0o600)
        self.root = _write(directory / "root.pem", cert_to_pem(ca.root_cert))
        bundle = [ca.root_cert, ca.claim_issuer.cert, ca.device_issuer.cert]
        self.bundle = _write(directory / "bundle.pem", b"".join(cert_to_pem(c) for c in bundle))
        watcher_key = generate_key("ec-p256")
        watcher = ca.device_issuer.issue(
            common_name="demo-watcher",
            public_key=watcher_key.public_key(),
            not_before=now - dt.timedelta(minutes=5),
            lifetime=dt.timedelta(days=1),
        )
        self.watcher_cert = _write(
            directory / "watcher.pem", cert_to_pem(watcher) + cert_to_pem(ca.device_issuer.cert)
        )
        self.watcher_key = _write(directory / "watcher.key", key_to_pem(watcher_key), 0o600)


class OperationalBroker:
    """mosquitto with mutual TLS; each appliance reads and writes only ``edge/<its CN>/#``."""

    def __init__(self, directory: Path, pki: DemoPki) -> None:
        self.directory = directory
        self.pki = pki
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        acl = self.directory / "acl"
        acl.write_text("pattern readwrite edge/%u/#\n\nuser demo-watcher\ntopic read edge/#\n")
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    "per_listener_settings true",
                    "log_dest stderr",
                    "log_type error",
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous false",
                    f"cafile {self.pki.bundle}",
                    f"certfile {self.pki.server_cert}",
                    f"keyfile {self.pki.server_key}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    f"acl_file {acl}",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            config.write_text(config.read_text() + "user root\n")
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary("mosquitto"), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log
            )
        wait_port(self.port, self.process, timeout, self.directory / "mosquitto.log")

    def stop(self) -> None:
        """Stop it."""
        stop_process(self.process)
        self.process = None


def wait_port(
    port: int, process: subprocess.Popen[Any], timeout: float, log: Path | None = None
) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (or the process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-500:] if log and log.exists() else ""
            raise StateError(f"a demo process exited: {tail}", reason="DEMO_PROCESS_FAILED")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise StateError(f"nothing listens on port {port}", reason="DEMO_PROCESS_FAILED")


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def add_template(database: Path, broker_port: int, *, region: str, account: str) -> None:
    """The fleet-provisioning template the archive names, pointing at the operational broker."""
    from agent.registry.demo import DEMO_POLICY, EXAMPLE_TEMPLATE  # noqa: PLC0415
    from agent.registry.register import Registry  # noqa: PLC0415
    from agent.registry.storage import SqliteRegistryStorage  # noqa: PLC0415
    from agent.registry.template import validate_template_body  # noqa: PLC0415
    from agent.registry.templates_store import TemplateStore  # noqa: PLC0415
    from agent.store import Store  # noqa: PLC0415

    body = dict(EXAMPLE_TEMPLATE)
    body["DeviceConfiguration"] = {"mqttEndpoint": f"localhost:{broker_port}"}
    with Store(database) as store:
        registry = Registry(SqliteRegistryStorage(store), None, region=region, account=account)
        registry.create_policy("EdgeAppliancePolicy", DEMO_POLICY)
        TemplateStore(
            store, region=region, account=account, body_validator=validate_template_body
        ).create(
            {
                "templateName": TEMPLATE,
                "templateBody": json.dumps(body),
                "provisioningRoleArn": f"arn:aws:iam::{account}:role/provisioning",
                "enabled": True,
                "type": "FLEET_PROVISIONING",
            }
        )


class RegistryServe:
    """``edge-agent registry serve --listen 127.0.0.1:<port>`` as a child process."""

    def __init__(self, config: Path, pki: DemoPki, log: Path) -> None:
        self.config = config
        self.pki = pki
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def start(self) -> None:
        """Start it and read its ready line."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "--config",
                    str(self.config),
                    "registry",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--server-cert",
                    str(self.pki.server_cert),
                    "--server-key",
                    str(self.pki.server_key),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        assert self.process.stdout is not None  # noqa: S101 - PIPE was asked for
        line = self.process.stdout.readline()
        if not line:
            stop_process(self.process)
            tail = self.log.read_text(errors="replace")[-800:]
            raise StateError(f"registry serve did not start: {tail}", reason="DEMO_PROCESS_FAILED")
        self.ready = json.loads(line)

    def stop(self) -> None:
        """SIGTERM it."""
        stop_process(self.process)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


class EventWatcher:
    """A subscriber on ``edge/+/events`` of the operational broker (its own task)."""

    def __init__(self, port: int, pki: DemoPki) -> None:
        self.port = port
        self.pki = pki
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Connect and subscribe."""
        self._task = asyncio.create_task(self._run(), name="demo-watcher")
        waiter = asyncio.create_task(self._subscribed.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=10, return_when="FIRST_COMPLETED"
        )
        if waiter not in done:
            waiter.cancel()
            if self._task.done():
                self._task.result()
            raise StateError(
                "the demo subscriber could not subscribe", reason="DEMO_PROCESS_FAILED"
            )

    async def _run(self) -> None:
        context = ssl.create_default_context(cafile=str(self.pki.root))
        context.load_cert_chain(str(self.pki.watcher_cert), str(self.pki.watcher_key))
        async with aiomqtt.Client(
            "localhost", self.port, tls_context=context, identifier="demo-watcher"
        ) as client:
            await client.subscribe("edge/+/events", qos=1)
            self._subscribed.set()
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    self.events.put_nowait(json.loads(message.payload))

    async def wait_for(self, run_id: str, event_type: str, seconds: float) -> dict[str, Any]:
        """The first ``event_type`` event of ``run_id``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(self.events.get(), left)
            except TimeoutError:
                break
            if event.get("type") == event_type and event["body"].get("runId") == run_id:
                return event
        raise StateError(f"no {event_type} event for {run_id}", reason="DEMO_NO_EVENT")

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task


def make_image(path: Path, files: dict[str, bytes], size_kib: int = 2048) -> Path:
    """A FAT image holding ``files`` in its root."""
    subprocess.run(
        [binary("mkfs.vfat"), "-C", str(path), str(size_kib)],
        check=True,
        capture_output=True,
        env=_MTOOLS_ENV,
    )
    staging = path.parent / f".{path.name}.files"
    staging.mkdir(exist_ok=True)
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
            subprocess.run(
                [binary("mcopy"), "-i", str(path), str(staging / name), f"::/{name}"],
                check=True,
                capture_output=True,
                env=_MTOOLS_ENV,
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_image(path: Path, name: str) -> bytes | None:
    """One file from a FAT image (None when it is not there)."""
    done = subprocess.run(
        [binary("mcopy"), "-n", "-i", str(path), f"::/{name}", "-"],
        capture_output=True,
        check=False,
        env=_MTOOLS_ENV,
    )
    return done.stdout if done.returncode == 0 else None
