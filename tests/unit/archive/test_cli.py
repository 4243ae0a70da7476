"""``edge-agent ca|archive`` end to end, as a technician or factory runs them."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from agent.cli import main
from tests.unit.archive.conftest import snapshot


def _rfc3339(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class _Times:
    """RFC 3339 times around the clock of the running test (``ca init`` uses that clock)."""

    start = now = later = ""


T = _Times()


@pytest.fixture(autouse=True)
def _times_now() -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    T.start = _rfc3339(start)
    T.now = _rfc3339(start + dt.timedelta(seconds=30))
    T.later = _rfc3339(start + dt.timedelta(hours=1))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.fixture
def factory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, body = run(capsys, "ca", "init", "--out", str(tmp_path / "ca"))
    assert code == 0
    assert body["caCertificate"].endswith("ca.pem")
    return tmp_path / "ca"


def make(capsys: pytest.CaptureFixture[str], ca: Path, out: Path, *extra: str) -> dict[str, Any]:
    code, body = run(
        capsys,
        "archive",
        "make",
        "--name",
        "dev-1",
        "--ca",
        str(ca),
        "--out",
        str(out),
        "--not-before",
        T.start,
        *extra,
    )
    assert code == 0, body
    return dict(body)


def test_ca_init_modes_and_refuses_overwrite(
    factory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stat.S_IMODE(factory.stat().st_mode) == 0o700
    for name, mode in (("ca.key", 0o600), ("signer.key", 0o600), ("ca.pem", 0o644)):
        assert stat.S_IMODE((factory / name).stat().st_mode) == mode
    before = snapshot(factory)
    code, body = run(capsys, "ca", "init", "--out", str(factory))
    assert code == 2
    assert body["error"]["reason"] == "CA_EXISTS"
    assert snapshot(factory) == before


def test_make_validate_install(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "net.json"
    net.write_text(
        json.dumps(
            {"Ethernet0": {"ConnectionType": "DHCP"}, "Ntp": {"NtpServers": ["0.pool.ntp.org"]}}
        )
    )
    response = make(
        capsys,
        factory,
        tmp_path / "out",
        "--networking",
        str(net),
        "--tag",
        "site=lyon",
        "--endpoint",
        "broker.local:8883",
    )
    archive = tmp_path / "out" / "certificates-omni_dev-1.zip"
    assert base64.b64decode(response["Certificates"]) == archive.read_bytes()
    assert response["Status"] == "AWAITING_PROVISIONING"

    trust = str(factory / "ca.pem")
    code, summary = run(
        capsys, "archive", "validate", str(archive), "--trust", trust, "--now", T.now, "--json"
    )
    assert code == 0
    assert summary["timeCheck"] == "passed"
    assert summary["networkingConfiguration"]["Ethernet0"] == {"ConnectionType": "DHCP"}
    assert summary["iotEndpoint"] == "broker.local:8883"
    assert len(summary["certificateFingerprint"]) == 64

    state = tmp_path / "state"
    install = ("archive", "install", str(archive), "--trust", trust, "--state-dir", str(state))
    code, result = run(capsys, *install, "--now", T.now)
    assert code == 0
    assert result["status"] == "INSTALLED"
    assert result["certificateFingerprint"] == summary["certificateFingerprint"]

    code, error = run(capsys, *install, "--now", T.now)
    assert code == 1
    assert error["error"]["code"] == "ConflictException"
    assert error["error"]["reason"] == "ARCHIVE_ALREADY_USED"


def test_validate_writes_nothing(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(capsys, factory, tmp_path / "out")
    before = snapshot(tmp_path)
    code, _ = run(
        capsys,
        "archive",
        "validate",
        str(tmp_path / "out" / "certificates-omni_dev-1.zip"),
        "--trust",
        str(factory / "ca.pem"),
        "--now",
        T.now,
    )
    assert code == 0
    assert snapshot(tmp_path) == before


def test_expired_archive_exit_1_with_error_json(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(capsys, factory, tmp_path / "out")
    code, body = run(
        capsys,
        "archive",
        "validate",
        str(tmp_path / "out" / "certificates-omni_dev-1.zip"),
        "--trust",
        str(factory / "ca.pem"),
        "--now",
        T.later,
    )
    assert code == 1
    assert body["error"]["code"] == "ValidationException"
    assert body["error"]["statusCode"] == 400
    assert body["error"]["reason"] == "CERTIFICATE_EXPIRED"
    assert "BEGIN" not in json.dumps(body)


def test_make_rejects_bad_input_with_fields(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "net.json"
    net.write_text(json.dumps({"Ntp": {"NtpServers": ["BAD"]}}))
    code, body = run(
        capsys,
        "archive",
        "make",
        "--name",
        "bad name",
        "--ca",
        str(factory),
        "--out",
        str(tmp_path / "out"),
        "--lifetime",
        "600",
    )
    assert code == 1
    assert {f["path"] for f in body["error"]["fields"]} == {"Name", "lifetime"}
    code, body = run(
        capsys,
        "archive",
        "make",
        "--name",
        "ok",
        "--ca",
        str(factory),
        "--out",
        str(tmp_path / "out"),
        "--networking",
        str(net),
    )
    assert code == 1
    assert body["error"]["reason"] == "NETWORK_CONFIGURATION_INVALID"
    assert body["error"]["fields"][0]["path"] == "NetworkingConfiguration.Ntp.NtpServers[0]"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_usage_and_config_errors_exit_2(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["archive", "validate", "x.zip"])  # --trust is required
    assert caught.value.code == 2
    capsys.readouterr()
    code, body = run(capsys, "archive", "validate", "x.zip", "--trust", str(tmp_path / "none.pem"))
    assert code == 2
    assert body["error"]["reason"] == "TRUST_ANCHOR_MISSING"
    bad = tmp_path / "agent.toml"
    bad.write_text("[archive]\nclock_skew_seconds = 'soon'\nmystery = 1\n")
    code, body = run(
        capsys,
        "--config",
        str(bad),
        "archive",
        "validate",
        "x.zip",
        "--trust",
        str(factory / "ca.pem"),
    )
    assert code == 2
    assert [f["path"] for f in body["error"]["fields"]] == [
        "archive.mystery",
        "archive.clock_skew_seconds",
    ]


def test_python_dash_m_agent(factory: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "archive",
            "validate",
            str(tmp_path / "nothing.zip"),
            "--trust",
            str(factory / "ca.pem"),
            "--now",
            T.now,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["reason"] == "FILE_NAME_INVALID"


def test_ca_init_refuses_a_world_writable_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    code, body = run(capsys, "ca", "init", "--out", str(shared))
    assert code == 2
    assert body["error"]["reason"] == "DIRECTORY_NOT_PRIVATE"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []


def test_ca_init_lists_which_host_keeps_which_file(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, body = run(capsys, "ca", "init", "--out", str(tmp_path / "second"))
    assert code == 0
    assert body["offlineKey"].endswith("ca.key")
    assert "ca.key" not in body["factoryFiles"]
    assert "ca.key" not in body["registryFiles"]
    assert "signer.key" not in body["registryFiles"]
    assert "device-issuer.key" in body["registryFiles"]
    assert "claim-issuer.key" in body["factoryFiles"]


def test_archive_make_needs_only_the_factory_files(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.registry.ca import FACTORY_FILES

    only = tmp_path / "factory-only"
    only.mkdir(mode=0o700)
    for name in FACTORY_FILES:
        (only / name).write_bytes((factory / name).read_bytes())
    make(capsys, only, tmp_path / "out")
    archive = tmp_path / "out" / "certificates-omni_dev-1.zip"
    code, summary = run(
        capsys,
        "archive",
        "validate",
        str(archive),
        "--trust",
        str(factory / "ca.pem"),
        "--now",
        T.now,
        "--json",
    )
    assert code == 0, summary


def test_ca_register_through_the_cli(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from agent.registry.ca import init_ca, signature_hash

    code, body = run(capsys, "ca", "registration-code", "--ca-dir", str(factory))
    assert code == 0
    registration = body["registrationCode"]
    own = init_ca(tmp_path / "own-ca")
    start = dt.datetime.now(dt.UTC)
    proof = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration)]))
        .issuer_name(own.device_issuer.cert.subject)
        .public_key(own.signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=1))
        .not_valid_after(start + dt.timedelta(hours=1))
        .sign(own.device_issuer.key, signature_hash(own.device_issuer.key))
    )
    proof_path = tmp_path / "proof.pem"
    proof_path.write_bytes(proof.public_bytes(serialization.Encoding.PEM))
    argv = (
        "ca",
        "register",
        "--ca-dir",
        str(factory),
        "--ca-certificate",
        str(tmp_path / "own-ca" / "device-issuer.pem"),
        "--verification-certificate",
        str(proof_path),
    )
    code, body = run(capsys, *argv)
    assert code == 0, body
    assert body["status"] == "ACTIVE"
    assert len(body["certificateId"]) == 64
    code, body = run(capsys, *argv)
    assert code == 1
    assert body["error"]["code"] == "ResourceAlreadyExistsException"
    code, body = run(
        capsys,
        "ca",
        "register",
        "--ca-dir",
        str(factory),
        "--ca-certificate",
        str(tmp_path / "missing.pem"),
        "--verification-certificate",
        str(proof_path),
    )
    assert code == 1
    assert body["error"]["reason"] == "CERTIFICATE_UNREADABLE"
