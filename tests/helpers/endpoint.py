"""A running fleet-provisioning endpoint for tests and benchmarks.

:class:`EndpointPki` makes a CA directory (its root is both device and claim issuer), a
server certificate for 127.0.0.1 and claim certificates; :func:`start_serve` runs
``edge-agent registry serve`` as a real process and waits for its ready line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.registry.ca import (
    CertificateAuthority,
    PrivateKey,
    cert_to_pem,
    generate_key,
    init_ca,
    key_to_pem,
    signature_hash,
)
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import validate_template_body
from agent.registry.templates_store import TemplateStore
from agent.store import Store
from tests.helpers.registry import example_template

REPO = Path(__file__).resolve().parents[2]
ROLE_ARN = "arn:aws:iam::123456789012:role/provisioning"


@dataclass(frozen=True)
class Claim:
    """A claim certificate and key on disk."""

    name: str
    cert: Path
    key: Path
    fingerprint: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def server_certificate(
    ca: CertificateAuthority, key: PrivateKey, *, ip: str = "127.0.0.1"
) -> x509.Certificate:
    """A serverAuth certificate for ``localhost`` and ``ip``, issued by the CA root."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.root_key, signature_hash(ca.root_key))
    )


@dataclass
class EndpointPki:
    """A CA directory, a server certificate and a factory of claim certificates."""

    directory: Path
    ca: CertificateAuthority = field(init=False)
    ca_file: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = init_ca(self.directory / "ca", name="endpoint test CA")
        self.ca_file = self.directory / "ca" / "ca.pem"
        key = generate_key("ec-p256")
        self.server_cert = self.directory / "server.pem"
        self.server_key = self.directory / "server.key"
        self.server_cert.write_bytes(cert_to_pem(server_certificate(self.ca, key)))
        self.server_key.write_bytes(key_to_pem(key))
        self.server_key.chmod(0o600)

    def claim(self, name: str | None = None, *, ca: CertificateAuthority | None = None) -> Claim:
        """A new claim certificate (clientAuth, valid now) from ``ca`` (default: the CA)."""
        name = name or f"dev-{secrets.token_hex(4)}"
        issuer = ca or self.ca
        key = generate_key("ec-p256")
        cert = issuer.claim_issuer.issue(
            common_name=name,
            public_key=key.public_key(),
            not_before=_now() - dt.timedelta(minutes=5),
            lifetime=dt.timedelta(days=1),
        )
        cert_path = self.directory / f"{name}-{secrets.token_hex(3)}.pem"
        key_path = cert_path.with_suffix(".key")
        cert_path.write_bytes(cert_to_pem(cert))
        key_path.write_bytes(key_to_pem(key))
        key_path.chmod(0o600)
        return Claim(name, cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex())


def write_config(path: Path, pki: EndpointPki, database: Path, **registry: Any) -> Path:
    """An agent.toml with a ``[registry]`` section for the endpoint."""
    lines = [
        "[registry]",
        f'ca_dir = "{pki.directory / "ca"}"',
        f'database = "{database}"',
        'region = "eu-west-1"',
        'account = "111122223333"',
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in registry.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def add_template(
    database: Path,
    name: str = "edge-fleet",
    *,
    body: dict[str, Any] | None = None,
    enabled: bool = True,
    hook: str | None = None,
) -> None:
    """Create a fleet-provisioning template (and the policy the example names)."""
    with Store(database) as store:
        storage = SqliteRegistryStorage(store)
        registry = Registry(storage, None, region="eu-west-1", account="111122223333")
        registry.create_policy("EdgeAppliancePolicy", {"Version": "2012-10-17", "Statement": []})
        request: dict[str, Any] = {
            "templateName": name,
            "templateBody": json.dumps(body or example_template()),
            "provisioningRoleArn": ROLE_ARN,
            "enabled": enabled,
            "type": "FLEET_PROVISIONING",
        }
        if hook is not None:
            request["preProvisioningHook"] = {"targetArn": hook}
        TemplateStore(
            store, region="eu-west-1", account="111122223333", body_validator=validate_template_body
        ).create(request)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Serve:
    """A running ``edge-agent registry serve``."""

    process: subprocess.Popen[str]
    port: int
    ready: dict[str, Any]
    stderr: str = ""

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (stderr is kept in :attr:`stderr`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, self.stderr = self.process.communicate()
        return self.process.returncode


def start_serve(args: list[str], *, timeout: float = 20.0) -> subprocess.Popen[str]:
    """Start ``edge-agent`` with ``args``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_ready(process: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """The ready line of a serve process; raises with its stderr if it never comes."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            ready: dict[str, Any] = json.loads(line)
            return ready
        if process.poll() is not None:
            break
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"registry serve did not become ready: {err[-2000:]}")


def serve(config: Path, pki: EndpointPki, *extra: str) -> Serve:
    """Run ``registry serve --listen`` on a free port and wait until it is ready."""
    port = free_port()
    process = start_serve(
        [
            "--config",
            str(config),
            "registry",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--server-cert",
            str(pki.server_cert),
            "--server-key",
            str(pki.server_key),
            *extra,
        ]
    )
    return Serve(process, port, wait_ready(process))


class RawDevice:
    """A paho-mqtt claim connection for requests the SDK cannot make (CBOR, bad payloads)."""

    def __init__(
        self,
        port: int,
        claim: Claim,
        ca_file: Path,
        *,
        client_id: str | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else f"raw-{secrets.token_hex(6)}",
            protocol=protocol,
        )
        self.client.tls_set(ca_certs=str(ca_file), certfile=str(claim.cert), keyfile=str(claim.key))
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self._connected = threading.Event()
        self._refused: list[object] = []

        def on_connect(_c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
            if reason.is_failure:
                self._refused.append(reason)
            self._connected.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10) or self._refused:
            self.close()
            raise ConnectionError(f"the claim connection was refused: {self._refused}")

    def subscribe(self, *topics: str) -> None:
        """Subscribe at QoS 1 and wait for each SUBACK."""
        for topic in topics:
            _, mid = self.client.subscribe(topic, 1)
            del mid
        time.sleep(0.1)

    def request(
        self, topic: str, payload: bytes | str, *, timeout: float = 10.0
    ) -> tuple[str, bytes]:
        """Subscribe to the answers of ``topic``, publish, and return the first answer."""
        self.subscribe(topic + "/accepted", topic + "/rejected")
        self.client.publish(topic, payload, 1).wait_for_publish(timeout)
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
