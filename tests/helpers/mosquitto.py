"""A real mosquitto broker for tests: mutual TLS, identity as user name, per-appliance ACL.

Certificates are made at test time around the real clock (mosquitto checks them with the
system time). The broker is a direct child of the test process, stopped and restarted on the
same port to simulate outages.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.client import Identity
from agent.registry.ca import cert_to_pem, key_to_pem


def need_mosquitto() -> str:
    """The mosquitto binary, or skip/fail (CI) when it is missing."""
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        message = "mosquitto is not installed (scripts/setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Pki:
    """A test CA with a broker certificate and client identities."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert: x509.Certificate | None = None
    #: Issuing CAs below ``cert`` the brokers also trust (the registry's claim and device
    #: issuers: a device presents only its leaf, so its broker must hold the issuer).
    issuers: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.cert is not None:  # an existing CA (the registry's)
            bundle = [self.cert, *self.issuers]
            self.ca_path.write_bytes(b"".join(cert_to_pem(c) for c in bundle))
            return
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test MQTT CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_path.write_bytes(cert_to_pem(self.cert))

    @property
    def ca_path(self) -> Path:
        """The CA certificate file."""
        return self.directory / "ca.pem"

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        lifetime: dt.timedelta = dt.timedelta(days=2),
        not_before: dt.datetime | None = None,
    ) -> tuple[Path, Path]:
        """Issue a leaf; return (certificate path, key path)."""
        assert self.cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{common_name}.crt"
        key_path = self.directory / f"{common_name}.key"
        cert_path.write_bytes(cert_to_pem(cert))
        key_path.write_bytes(key_to_pem(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    def identity(self, common_name: str) -> Identity:
        """A client identity (certificate, key, and this CA as the server's root)."""
        cert, key = self.issue(common_name)
        return Identity(cert, key, self.ca_path)


@dataclass
class Broker:
    """One mosquitto process with a mutual-TLS listener."""

    directory: Path
    pki: Pki
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    acl: str = "pattern readwrite edge/%u/#\n"

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it accepts connections."""
        binary = need_mosquitto()
        if not self.port:
            self.port = free_port()
        cert, key = (
            (self.directory / "server.crt", self.directory / "server.key")
            if (self.directory / "server.crt").exists()
            else self.pki.issue("server", server=True)
        )
        if cert.parent != self.directory:
            shutil.copy(cert, self.directory / "server.crt")
            shutil.copy(key, self.directory / "server.key")
        (self.directory / "acl").write_text(self.acl)
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    "user root",
                    "per_listener_settings true",
                    # consumers' sessions (and their queued messages) survive a broker restart
                    "persistence true",
                    f"persistence_location {self.directory}/",
                    "autosave_interval 0",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "max_inflight_messages 0",
                    "max_queued_messages 100000",
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous false",
                    f"cafile {self.pki.ca_path}",
                    f"certfile {self.directory / 'server.crt'}",
                    f"keyfile {self.directory / 'server.key'}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    f"acl_file {self.directory / 'acl'}",
                    "",
                ]
            )
        )
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = (self.directory / "mosquitto.log").read_text()
                raise RuntimeError(f"mosquitto exited: {text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        """Stop the broker (its clients see the connection drop)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A test CA."""
    return Pki(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """A running mosquitto with mutual TLS and the per-appliance ACL."""
    directory = tmp_path / "broker"
    directory.mkdir()
    b = Broker(directory, pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Watcher:
    """A paho client (its own thread) that records what it receives.

    Like a fleet consumer it keeps a persistent session (MQTT 3.1.1, clean session off), so
    what arrives while it is reconnecting after a broker restart is queued for it.
    """

    def __init__(self, broker: Broker, identity: Identity, topics: list[str]) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watch-{os.urandom(4).hex()}",
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        context = ssl.create_default_context(cafile=str(identity.root_ca))
        context.load_cert_chain(str(identity.certificate), str(identity.private_key))
        self.client.tls_set_context(context)
        self.topics = topics

        def on_connect(c: paho.Client, *_args: Any) -> None:
            c.subscribe([(t, 1) for t in self.topics])

        def on_subscribe(*_args: Any) -> None:
            self.subscribed.set()

        def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
            with self.lock:
                self.messages.append(message)

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("localhost", broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher could not subscribe"

    def payloads(self, topic: str | None = None) -> list[bytes]:
        """Payloads received so far (optionally on one topic)."""
        with self.lock:
            return [bytes(m.payload) for m in self.messages if topic is None or m.topic == topic]

    def wait_for(self, count: int, topic: str | None = None, timeout: float = 30.0) -> list[bytes]:
        """Wait until ``count`` messages arrived; return their payloads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.payloads(topic)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.payloads(topic)

    def close(self) -> None:
        """Disconnect and stop the thread."""
        self.client.disconnect()
        self.client.loop_stop()
