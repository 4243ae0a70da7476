"""Fixtures for registry integration tests: a CA directory, a registry, an HTTPS hook server."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.registry.ca import CertificateAuthority, generate_key, key_to_pem, signature_hash
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.forge import make_ca


@dataclass(frozen=True)
class CaDir:
    path: Path
    ca: CertificateAuthority


@pytest.fixture(scope="session")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> CaDir:
    path = tmp_path_factory.mktemp("registry-ca") / "ca"
    return CaDir(path, make_ca(path))


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SqliteRegistryStorage]:
    with SqliteRegistryStorage.open(tmp_path / "registry.db") as opened:
        yield opened


@pytest.fixture
def registry(storage: SqliteRegistryStorage, ca_dir: CaDir) -> Registry:
    return Registry(storage, ca_dir.ca.registry(), region="eu-west-1", account="111122223333")


@dataclass
class HookServer:
    url: str
    ca_file: Path
    requests: list[dict[str, object]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.requests.append(json.loads(self.rfile.read(length)))
        if self.path == "/slow":
            self.server.release.wait(30)
        if self.path == "/drip":
            self._drip()
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/allow")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, body = {
            "/allow": (200, b'{"allowProvisioning": true, "parameterOverrides": {"Site": "web"}}'),
            "/deny": (200, b'{"allowProvisioning": false}'),
            "/garbage": (200, b"<html>oops</html>"),
            "/error": (500, b'{"allowProvisioning": true}'),
            "/slow": (200, b'{"allowProvisioning": true}'),
            "/duplicate": (200, b'{"allowProvisioning": false, "allowProvisioning": true}'),
        }.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self) -> None:
        """Answer one byte at a time, each well inside any socket timeout."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        with contextlib.suppress(OSError):
            while not self.server.release.wait(0.1):
                self.wfile.write(b" ")
                self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        del format, args


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, object]]
    release: threading.Event


def _server_certificate(ca: CertificateAuthority, directory: Path) -> tuple[Path, Path]:
    key = generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.root_key, signature_hash(ca.root_key))
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key_to_pem(key))
    return cert_path, key_path


@pytest.fixture
def hook_server(ca_dir: CaDir, tmp_path: Path) -> Iterator[HookServer]:
    cert_path, key_path = _server_certificate(ca_dir.ca, tmp_path)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.requests = []
    server.release = threading.Event()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HookServer(
            f"https://127.0.0.1:{server.server_address[1]}",
            ca_dir.path / "ca.pem",
            server.requests,
        )
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
