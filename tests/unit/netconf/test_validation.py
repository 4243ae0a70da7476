"""Every invalid configuration is refused with its reason and field path, and changes nothing.

The table goes through the real command line (``edge-agent net apply``) with the dry-run
backend over a root that already holds a committed configuration, then checks that the
rendered files and the state database are byte-for-byte what they were.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.helpers.network import static_ip

E0 = "NetworkingConfiguration.Ethernet0"
E1 = "NetworkingConfiguration.Ethernet1"
S0 = f"{E0}.StaticIpConnectionInfo"
S1 = f"{E1}.StaticIpConnectionInfo"
UNSPECIFIED = "0.0.0.0"  # noqa: S104 - an address in a payload, not a bind address


# (id, payload, [(field path, message fragment), ...], extra CLI args)
CASES: list[tuple[str, Any, list[tuple[str, str]], list[str]]] = [
    (
        "mask-not-contiguous",
        {"Ethernet0": static_ip(mask="255.0.255.0")},
        [(f"{S0}.Mask", "contiguous")],
        [],
    ),
    ("mask-too-long", {"Ethernet0": static_ip(mask="33")}, [(f"{S0}.Mask", "prefix length")], []),
    ("mask-zero", {"Ethernet0": static_ip(mask="0")}, [(f"{S0}.Mask", "prefix length")], []),
    ("mask-words", {"Ethernet0": static_ip(mask="class C")}, [(f"{S0}.Mask", "netmask")], []),
    (
        "address-with-port",
        {"Ethernet0": static_ip(ip="198.18.1.10:8080")},
        [(f"{S0}.IpAddress", ":port")],
        [],
    ),
    (
        "gateway-with-port",
        {"Ethernet0": static_ip(gateway="198.18.1.1:80")},
        [(f"{S0}.DefaultGateway", ":port")],
        [],
    ),
    (
        "gateway-name",
        {"Ethernet0": static_ip(gateway="router.lan")},
        [(f"{S0}.DefaultGateway", "IPv4")],
        [],
    ),
    (
        "gateway-other-subnet",
        {"Ethernet0": static_ip(gateway="198.18.2.1")},
        [(f"{S0}.DefaultGateway", "not in the port's subnet")],
        [],
    ),
    (
        "gateway-is-address",
        {"Ethernet0": static_ip(gateway="198.18.1.10")},
        [(f"{S0}.DefaultGateway", "differ")],
        [],
    ),
    (
        "gateway-network-address",
        {"Ethernet0": static_ip(gateway="198.18.1.0")},
        [(f"{S0}.DefaultGateway", "network or broadcast")],
        [],
    ),
    (
        "gateway-broadcast",
        {"Ethernet0": static_ip(gateway="198.18.1.255")},
        [(f"{S0}.DefaultGateway", "network or broadcast")],
        [],
    ),
    (
        "address-network",
        {"Ethernet0": static_ip(ip="198.18.1.0")},
        [(f"{S0}.IpAddress", "not a host address")],
        [],
    ),
    (
        "address-broadcast",
        {"Ethernet0": static_ip(ip="198.18.1.255")},
        [(f"{S0}.IpAddress", "not a host address")],
        [],
    ),
    (
        "address-unspecified",
        {"Ethernet0": static_ip(ip=UNSPECIFIED)},
        [(f"{S0}.IpAddress", UNSPECIFIED)],
        [],
    ),
    (
        "address-loopback",
        {"Ethernet0": static_ip(ip="127.0.0.5", gateway="127.0.0.1")},
        [(f"{S0}.IpAddress", "loopback")],
        [],
    ),
    (
        "address-multicast",
        {"Ethernet0": static_ip(ip="224.0.0.5", gateway="224.0.0.1")},
        [(f"{S0}.IpAddress", "unicast")],
        [],
    ),
    (
        "dns-name",
        {"Ethernet0": static_ip(dns=["dns.example.com"])},
        [(f"{S0}.Dns[0]", "IP address")],
        [],
    ),
    (
        "dns-with-port",
        {"Ethernet0": static_ip(dns=["198.18.1.53", "198.18.1.54:53"])},
        [(f"{S0}.Dns[1]", "IP address")],
        [],
    ),
    (
        "subnets-overlap",
        {"Ethernet0": static_ip(), "Ethernet1": static_ip("198.18.1.130", "/25", "198.18.1.129")},
        [(f"{S1}.IpAddress", "overlaps Ethernet0")],
        [],
    ),
    (
        "same-subnet-both-ports",
        {"Ethernet0": static_ip(), "Ethernet1": static_ip("198.18.1.11")},
        [(f"{S1}.IpAddress", "overlaps")],
        [],
    ),
    (
        "seed-connection-type",
        {"Ethernet0": {"ConnectionType": "PPPOE"}},
        [(f"{E0}.ConnectionType", "STATIC_IP, DHCP")],
        [],
    ),
    (
        "seed-static-info-missing",
        {"Ethernet0": {"ConnectionType": "STATIC_IP"}},
        [(f"{S0}", "required")],
        [],
    ),
    (
        "seed-unknown-field",
        {"Ethernet2": {"ConnectionType": "DHCP"}},
        [("NetworkingConfiguration.Ethernet2", "unknown")],
        [],
    ),
    (
        "seed-too-many-ntp",
        {"Ntp": {"NtpServers": [f"ntp{i}.example.com" for i in range(6)]}},
        [("NetworkingConfiguration.Ntp.NtpServers", "at most 5")],
        [],
    ),
    (
        "seed-ntp-upper-case",
        {"Ntp": {"NtpServers": ["POOL.NTP.ORG"]}},
        [("NetworkingConfiguration.Ntp.NtpServers[0]", "lower-case")],
        [],
    ),
    ("seed-dns-not-list", {"Ethernet0": static_ip(dns="198.18.1.53")}, [(f"{S0}.Dns", "list")], []),
    ("not-an-object", ["Ethernet0"], [("NetworkingConfiguration", "object")], []),
    (
        "board-without-ethernet1",
        {"Ethernet1": {"ConnectionType": "DHCP"}},
        [(E1, "has no Ethernet1")],
        ["--board", "single-port"],
    ),
    (
        "everything-at-once",
        {
            "Ethernet0": static_ip(ip="198.18.1.10:1", mask="255.255.0.255", dns=["x"]),
            "Ethernet1": static_ip("198.18.2.10", "24", "198.18.3.1"),
        },
        [
            (f"{S0}.IpAddress", ":port"),
            (f"{S0}.Mask", "netmask"),
            (f"{S0}.Dns[0]", "IP address"),
            (f"{S1}.DefaultGateway", "not in the port's subnet"),
        ],
        [],
    ),
]

GOOD = {
    "Ethernet0": static_ip(),
    "Ethernet1": {"ConnectionType": "DHCP"},
    "Ntp": {"NtpServers": ["pool.ntp.org"]},
}


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _db_dump(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


@pytest.fixture
def applied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A config whose dry-run root already holds a committed configuration."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[network]\nbackend = "dry-run"\ndry_run_root = "{tmp_path / "root"}"\n'
    )
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    assert main(["--config", str(config), "net", "apply", str(good)]) == 0
    capsys.readouterr()
    return config, tmp_path


def test_table_has_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("payload", "expected", "extra"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_configuration_is_refused_and_changes_nothing(
    applied: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    payload: Any,
    expected: list[tuple[str, str]],
    extra: list[str],
) -> None:
    config, tmp = applied
    root, db = tmp / "root", tmp / "state" / "state.db"
    tree, dump = _tree(root), _db_dump(db)
    path = tmp / "bad.json"
    path.write_text(json.dumps(payload))
    for command in ("plan", "apply"):
        code = main(["--config", str(config), "net", command, str(path), *extra])
        out = json.loads(capsys.readouterr().out)
        assert code == 1
        error = out["error"]
        assert error["code"] == "ValidationException"
        assert error["statusCode"] == 400
        assert error["reason"] == "NETWORK_CONFIGURATION_INVALID"
        fields = {f["path"]: f["message"] for f in error["fields"]}
        for field_path, fragment in expected:
            assert field_path in fields, fields
            assert fragment in fields[field_path]
    assert _tree(root) == tree
    assert _db_dump(db) == dump


def test_not_json_is_refused(
    applied: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, tmp = applied
    path = tmp / "bad.json"
    path.write_text("{not json")
    assert main(["--config", str(config), "net", "apply", str(path)]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["reason"] == "NETWORK_CONFIGURATION_INVALID"
    assert error["fields"][0]["path"] == "NetworkingConfiguration"


def test_timesyncd_refuses_ntp_ports(
    applied: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, tmp = applied
    config.write_text(
        config.read_text()
        + f'[ntp]\nbackend = "timesyncd"\ntimesyncd_dropin_dir = "{tmp / "ts"}"\n'
        + "timesyncd_restart_command = []\n"
    )
    config.write_text(config.read_text().replace('backend = "dry-run"', 'backend = "netlink"'))
    path = tmp / "ntp.json"
    path.write_text(json.dumps({"Ntp": {"NtpServers": ["pool.ntp.org", "198.18.1.123:11123"]}}))
    dump = _db_dump(tmp / "state" / "state.db")
    assert main(["--config", str(config), "net", "apply", str(path)]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["fields"] == [
        {
            "path": "NetworkingConfiguration.Ntp.NtpServers[1]",
            "message": "systemd-timesyncd cannot use an NTP server on a port other than 123",
        }
    ]
    assert not (tmp / "ts").exists()
    assert _db_dump(tmp / "state" / "state.db") == dump


def test_missing_file_is_an_invalid_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["net", "plan", str(tmp_path / "nope.json"), "--backend", "dry-run"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["code"], error["reason"]) == ("InvalidRequestException", "FILE_UNREADABLE")
