"""The endpoint's addresses, broker files and forwarded requests, without a broker."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.registry.serve import parse_listen, write_broker_files
from agent.registry.service import BrokerAddress, request_from


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8883") == ("127.0.0.1", 8883)
    assert parse_listen("[::1]:8883") == ("::1", 8883)
    assert parse_listen("0.0.0.0:1") == ("0.0.0.0", 1)  # noqa: S104
    for bad in ("8883", "host:", ":8883", "host:0", "host:65536", "host:x"):
        with pytest.raises(ConfigError) as caught:
            parse_listen(bad)
        assert caught.value.reason == "LISTEN_INVALID"


def test_broker_urls() -> None:
    assert BrokerAddress.parse("unix:///run/x.sock") == BrokerAddress("/run/x.sock")
    tcp = BrokerAddress.parse("mqtts://worker@broker.example:9999")
    assert (tcp.host, tcp.port, tcp.transport, tcp.tls, tcp.username) == (
        "broker.example", 9999, "tcp", True, "worker"
    )  # fmt: skip
    assert BrokerAddress.parse("mqtt://h").port == 1883
    for bad in ("http://h", "unix://", "mqtt://", "mqtt://h:99999", "nonsense"):
        with pytest.raises(ConfigError):
            BrokerAddress.parse(bad)


def test_broker_files_are_private(tmp_path: Path) -> None:
    files = write_broker_files(
        tmp_path,
        host="127.0.0.1",
        port=8883,
        server_cert=Path("/etc/s.pem"),
        server_key=Path("/etc/s.key"),
        claim_ca_pem=b"-----BEGIN CERTIFICATE-----\nclaim\n",
        tls_ca_pem=b"-----BEGIN CERTIFICATE-----\nclaim and root\n",
        plugin=Path("/usr/lib/edge-agent/edge_registry_plugin.so"),
    )
    config = files.config.read_text()
    for line in (
        "per_listener_settings false",
        "allow_anonymous false",
        "plugin /usr/lib/edge-agent/edge_registry_plugin.so",
        f"plugin_opt_claim_cafile {tmp_path / 'claim-ca.pem'}",
        f"listener 0 {files.socket}",
        "listener 8883 127.0.0.1",
        "require_certificate true",
        f"cafile {tmp_path / 'tls-ca.pem'}",
    ):
        assert line in config.splitlines()
    # who is a claim client (the plugin) and what TLS verifies with (mosquitto) differ
    assert (tmp_path / "claim-ca.pem").read_bytes().endswith(b"claim\n")
    assert (tmp_path / "tls-ca.pem").read_bytes().endswith(b"claim and root\n")
    password = (tmp_path / "registry.pw").read_text().strip()
    assert password == files.password
    assert len(password) >= 32
    assert password not in config
    # mosquitto's OpenSSL: no session tickets, TLS 1.2 or newer
    openssl_conf = files.openssl_conf.read_text().splitlines()
    for line in ("NumTickets = 0", "Options = -SessionTicket", "MinProtocol = TLSv1.2"):
        assert line in openssl_conf
    for name in ("registry.pw", "mosquitto.conf", "claim-ca.pem", "tls-ca.pem", "openssl.cnf"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_forwarded_requests_need_every_property() -> None:
    full = [
        ("edge-conn", "c1"),
        ("edge-topic", "$aws/certificates/create/json"),
        ("edge-claim-sha256", "ab" * 32),
        ("edge-claim-pem", "PEM"),
        ("edge-client-id", "a/#+"),
    ]
    forwarded = request_from(full, b"{}")
    assert forwarded is not None
    conn, request = forwarded
    assert conn == "c1"
    assert (request.topic, request.payload, request.client_id) == (
        "$aws/certificates/create/json", b"{}", "a/#+"
    )  # fmt: skip
    assert request_from([], b"{}") is None
    for missing in range(4):
        assert request_from(full[:missing] + full[missing + 1 :], b"{}") is None
