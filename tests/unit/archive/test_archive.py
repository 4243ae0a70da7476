"""Good archives: every key type, clock policy, single use, install layout."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.archive.clock import FixedClock, SystemClock, kernel_clock_synchronised
from agent.archive.install import current_credentials, install_archive, provision_from_file
from agent.archive.make import DeviceRequest, build_archive, write_archive
from agent.archive.network import parse_network_payload
from agent.archive.verify import Policy, check_window, verify_archive
from agent.errors import AgentError, ArchiveReusedError, CertificateError
from agent.registry.ca import CertificateAuthority, init_ca
from tests.helpers.forge import NOW, Forge, rfc3339
from tests.unit.archive.conftest import snapshot

NETWORK = {
    "Ethernet0": {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": "198.18.1.10",
            "Mask": "255.255.255.0",
            "DefaultGateway": "198.18.1.1",
            "Dns": ["198.18.1.53"],
        },
    },
    "Ethernet1": {"ConnectionType": "DHCP"},
    "Ntp": {"NtpServers": ["0.pool.ntp.org", "198.18.1.123:123"]},
}


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_valid_archive_for_each_key_type(
    forge: Forge, policy: Policy, clock: FixedClock, tmp_path: Path, key_type: str
) -> None:
    path = forge.but(claim_key_type=key_type).write(tmp_path)
    verified = verify_archive(path, policy, clock)
    summary = verified.summary()
    assert summary["deviceName"] == "dev-1"
    assert summary["timeCheck"] == "passed"
    assert summary["notBefore"] == rfc3339(NOW)
    assert summary["notAfter"] == rfc3339(NOW + dt.timedelta(minutes=5))
    cert = x509.load_pem_x509_certificate(verified.contents.entries["certificate.pem"])
    assert (
        summary["certificateFingerprint"]
        == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )


def test_summary_carries_networking_configuration_verbatim(
    forge: Forge, policy: Policy, clock: FixedClock, tmp_path: Path
) -> None:
    verified = verify_archive(forge.but(networking=NETWORK).write(tmp_path), policy, clock)
    assert verified.summary()["networkingConfiguration"] == NETWORK
    assert "PRIVATE KEY" not in str(verified.summary())


def test_ed25519_signer_is_accepted(tmp_path: Path, clock: FixedClock) -> None:
    ca = init_ca(tmp_path / "ca", signer_key_type="ed25519", now=NOW)
    path = Forge(ca).write(tmp_path)
    verified = verify_archive(path, Policy(trust_anchors=(ca.root_cert,)), clock)
    assert verified.time_check == "passed"


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (dt.timedelta(seconds=-59), "passed"),  # inside the default 60 s skew
        (dt.timedelta(minutes=5, seconds=59), "passed"),
        (dt.timedelta(seconds=-61), "CERTIFICATE_NOT_YET_VALID"),
        (dt.timedelta(minutes=6, seconds=1), "CERTIFICATE_EXPIRED"),
    ],
)
def test_window_honours_skew(
    forge: Forge, policy: Policy, tmp_path: Path, offset: dt.timedelta, expected: str
) -> None:
    path = forge.write(tmp_path)
    clock = FixedClock(NOW + offset)
    if expected == "passed":
        assert verify_archive(path, policy, clock).time_check == "passed"
    else:
        with pytest.raises(CertificateError) as caught:
            verify_archive(path, policy, clock)
        assert caught.value.reason == expected


def test_untrusted_clock_defers_the_time_check(
    forge: Forge, policy: Policy, tmp_path: Path
) -> None:
    # A box that booted at 1970: every other check still runs, the window is checked later.
    path = forge.write(tmp_path)
    clock = FixedClock(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), is_trusted=False)
    verified = verify_archive(path, policy, clock)
    assert verified.time_check == "deferred"
    # After NTP sync the run checks the window: too late now.
    with pytest.raises(CertificateError) as caught:
        check_window(verified.certificate, NOW + dt.timedelta(hours=1), dt.timedelta(seconds=60))
    assert caught.value.reason == "CERTIFICATE_EXPIRED"
    check_window(verified.certificate, NOW + dt.timedelta(minutes=1), dt.timedelta(seconds=60))


def test_untrusted_clock_still_checks_everything_else(
    forge: Forge, other_ca: CertificateAuthority, policy: Policy, tmp_path: Path
) -> None:
    clock = FixedClock(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), is_trusted=False)
    path = forge.but(signer_key=other_ca.signer_key).write(tmp_path)
    with pytest.raises(AgentError) as caught:
        verify_archive(path, policy, clock)
    assert caught.value.reason == "SIGNATURE_INVALID"
    path = forge.but(lifetime=dt.timedelta(hours=1)).write(tmp_path)
    with pytest.raises(AgentError) as caught:
        verify_archive(path, policy, clock)
    assert caught.value.reason == "CERTIFICATE_LIFETIME_TOO_LONG"


def test_system_clock_before_floor_is_not_trusted() -> None:
    far_future = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
    assert SystemClock(far_future, require_sync=False).trusted() is False
    assert SystemClock(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), require_sync=False).trusted()
    synced = kernel_clock_synchronised()
    assert SystemClock(dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).trusted() is (synced is True)


def test_install_layout_and_modes(
    forge: Forge, policy: Policy, clock: FixedClock, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    verified, result = provision_from_file(forge.write(tmp_path), policy, clock, state)
    current = current_credentials(state)
    assert current == result.credential_dir.resolve()
    assert current is not None
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "credentials").stat().st_mode) == 0o700
    assert stat.S_IMODE(current.stat().st_mode) == 0o700
    assert stat.S_IMODE((current / "private.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "agent.db").stat().st_mode) == 0o600
    assert (current / "private.key").read_bytes() == verified.contents.entries["private.key"]
    assert (current / "certificate.pem").read_bytes() == verified.contents.entries[
        "certificate.pem"
    ]
    assert result.to_json()["status"] == "INSTALLED"
    assert not [p for p in (state / "credentials" / "sets").iterdir() if p.name.startswith(".")]


def test_second_install_keeps_previous_set(
    forge: Forge, policy: Policy, clock: FixedClock, state_dir: Path, tmp_path: Path
) -> None:
    old = current_credentials(state_dir)
    assert old is not None
    _, result = provision_from_file(forge.write(tmp_path), policy, clock, state_dir)
    assert result.previous_dir == old
    assert (state_dir / "credentials" / "previous").resolve() == old
    assert current_credentials(state_dir) == result.credential_dir.resolve()


def test_archive_is_single_use(
    forge: Forge, policy: Policy, clock: FixedClock, state_dir: Path, tmp_path: Path
) -> None:
    path = forge.write(tmp_path)
    verified, _ = provision_from_file(path, policy, clock, state_dir)
    before = snapshot(state_dir)
    with pytest.raises(ArchiveReusedError) as caught:
        install_archive(verified, state_dir)
    error = caught.value.to_dict()["error"]
    assert error == {
        "code": "ConflictException",
        "statusCode": 409,
        "reason": "ARCHIVE_ALREADY_USED",
        "message": error["message"],
    }
    assert snapshot(state_dir) == before
    # A copy of the archive under another directory is the same archive.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ArchiveReusedError):
        provision_from_file(copy / path.name, policy, clock, state_dir)


def test_make_writes_the_seed_response(ca: CertificateAuthority, tmp_path: Path) -> None:
    request = DeviceRequest(
        name="edge-7",
        networking=parse_network_payload(NETWORK),
        tags={"site": "Lyon"},
        not_before=NOW,
        lifetime=dt.timedelta(seconds=120),
    )
    built = build_archive(ca.factory(), request, region="eu-west-3", account="111122223333")
    path = write_archive(built, tmp_path / "out")
    assert path.name == "certificates-omni_edge-7.zip"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    response = built.response()
    assert response["Status"] == "AWAITING_PROVISIONING"
    assert response["IotThingName"] == "edge-7"
    assert (
        response["Arn"] == f"arn:aws:panorama:eu-west-3:111122223333:device/{response['DeviceId']}"
    )
    assert base64.b64decode(response["Certificates"]) == path.read_bytes()
    verified = verify_archive(path, Policy(trust_anchors=(ca.root_cert,)), FixedClock(NOW))
    assert verified.manifest.networking_configuration == parse_network_payload(NETWORK)
    assert verified.manifest.tags == {"site": "Lyon"}
    assert verified.not_after - verified.not_before == dt.timedelta(seconds=120)


def test_damaged_state_database_refuses_install_and_changes_nothing(
    forge: Forge, policy: Policy, clock: FixedClock, state_dir: Path, tmp_path: Path
) -> None:
    (state_dir / "agent.db").write_bytes(b"\x00garbage" * 512)
    before = snapshot(state_dir)
    with pytest.raises(AgentError) as caught:
        provision_from_file(forge.write(tmp_path), policy, clock, state_dir)
    assert caught.value.reason == "STATE_CORRUPT"
    assert snapshot(state_dir) == before
