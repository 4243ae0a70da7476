"""The run's state machine in-process: statuses, reasons, the queued reports, resume rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest

from agent.archive.install import provision_from_file
from agent.archive.make import DeviceRequest, build_archive, write_archive
from agent.archive.network import parse_network_payload
from agent.config import AgentConfig, load_config
from agent.provisioning.run import Provisioner, policy_from_config
from agent.provisioning.store import RunStore, new_run_id
from agent.registry.ca import CertificateAuthority, cert_to_pem, init_ca
from tests.helpers.endpoint import free_port

NETWORK = {
    "Ethernet0": {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": "198.18.10.20",
            "Mask": "255.255.255.0",
            "DefaultGateway": "198.18.10.1",
            "Dns": ["198.18.10.53"],
        },
    },
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return init_ca(tmp_path_factory.mktemp("ca") / "ca", name="run test CA")


def _config(tmp_path: Path, ca: CertificateAuthority, extra: str = "") -> AgentConfig:
    trust = tmp_path / "trust.pem"
    trust.write_bytes(cert_to_pem(ca.root_cert))
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[agent]
state_dir = "{tmp_path / "state"}"
runtime_dir = "{tmp_path / "run"}"
[archive]
trust_anchor = "{trust}"
require_synchronized_clock = false
[network]
backend = "dry-run"
dry_run_root = "{tmp_path / "root"}"
[mqtt]
connect_timeout_seconds = 1
{extra}""",
        encoding="utf-8",
    )
    return load_config(path)


def _archive(tmp_path: Path, ca: CertificateAuthority, name: str) -> Path:
    built = build_archive(
        ca.factory(),
        DeviceRequest(
            name=name,
            networking=parse_network_payload(NETWORK),
            endpoint=f"127.0.0.1:{free_port()}",  # nothing listens: the fleet step fails
            template="edge-fleet",
        ),
    )
    return write_archive(built, tmp_path / "sticks" / name)


def test_an_unreachable_endpoint_ends_error_after_install_and_network(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    config = _config(tmp_path, ca)
    store = RunStore(config.agent.state_dir)
    steps: list[str] = []
    provisioner = Provisioner(config, store, on_step=lambda _run, step: steps.append(step))
    record = store.create(new_run_id(), origin="api", stick_id=None)
    result = asyncio.run(provisioner.run_archive(record, _archive(tmp_path, ca, "dev-1")))
    assert (str(result.status), result.reason) == ("ERROR", "MQTT_CONNECT_FAILED")
    assert steps == ["validate", "install", "network", "time-check", "fleet"]
    assert list(result.timings) == steps
    done = store.get(record.run_id)
    assert (done.status, done.reason, done.device_name) == ("ERROR", "MQTT_CONNECT_FAILED", "dev-1")
    assert done.result is not None
    assert done.result["error"]["statusCode"] == 503
    reports = store.reports()
    assert [r[1] for r in reports] == ["RUN_STATUS"] * 6 + ["RUN_OUTCOME"]
    assert [r[2].get("step") for r in reports[:6]] == [None, *steps]
    assert reports[-1][2]["status"] == "ERROR"
    assert reports[-1][2]["error"]["reason"] == "MQTT_CONNECT_FAILED"
    store.reported([r[0] for r in reports])
    assert store.reports() == []
    store.close()


def test_a_refused_archive_fails_before_anything_is_applied(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    config = _config(tmp_path, ca)
    archive = _archive(tmp_path, ca, "dev-2")
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0x01
    archive.write_bytes(bytes(data))
    store = RunStore(config.agent.state_dir)
    record = store.create(new_run_id(), origin="stick", stick_id="image:a.img")
    result = asyncio.run(Provisioner(config, store).run_archive(record, archive))
    assert str(result.status) == "FAILED"
    assert result.reason
    assert store.get(record.run_id).step == "validate"
    assert not (tmp_path / "root").exists()  # the network was never touched
    assert not (config.agent.state_dir / "credentials").exists()
    store.close()


def test_resume_before_install_ends_run_interrupted_and_after_install_goes_on(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    config = _config(tmp_path, ca)
    store = RunStore(config.agent.state_dir)
    provisioner = Provisioner(config, store)
    early = store.create(new_run_id(), origin="stick", stick_id=None)
    store.step(early.run_id, "validate")
    result = asyncio.run(provisioner.resume(store.get(early.run_id)))
    assert (str(result.status), result.reason) == ("ERROR", "RUN_INTERRUPTED")
    assert store.unfinished() == []

    # a run whose credentials were installed resumes from them (and here meets the
    # unreachable endpoint again)
    first = store.create(new_run_id(), origin="api", stick_id=None)
    asyncio.run(provisioner.run_archive(first, _archive(tmp_path, ca, "dev-3")))
    finished = store.get(first.run_id)
    with store._store.transaction() as db:  # what a crash at "fleet" leaves
        db.execute(
            "UPDATE provisioning_run SET status = 'PENDING', step = 'fleet' WHERE run_id = ?",
            (first.run_id,),
        )
    steps: list[str] = []
    again = Provisioner(config, store, on_step=lambda _run, step: steps.append(step))
    result = asyncio.run(again.resume(store.get(first.run_id)))
    assert steps == ["time-check", "fleet"]  # not validate/install/network again
    assert result.reason == finished.reason == "MQTT_CONNECT_FAILED"
    store.close()


class _SyncingClock:
    """The real time, trusted once ``trusted_after`` checks have been made (never if None)."""

    def __init__(self, trusted_after: int | None) -> None:
        self.trusted_after = trusted_after
        self.checks = 0

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def trusted(self) -> bool:
        self.checks += 1
        return self.trusted_after is not None and self.checks > self.trusted_after


def test_a_clock_that_never_syncs_ends_error_within_its_budget(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    config = _config(tmp_path, ca, "[ntp]\nsync_timeout_seconds = 0.6\n")
    store = RunStore(config.agent.state_dir)
    clock = _SyncingClock(None)
    record = store.create(new_run_id(), origin="api", stick_id=None)
    started = time.monotonic()
    result = asyncio.run(
        Provisioner(config, store, clock=clock).run_archive(record, _archive(tmp_path, ca, "d4"))
    )
    assert (str(result.status), result.reason) == ("ERROR", "CLOCK_NOT_SYNCHRONIZED")
    assert store.get(record.run_id).step == "time-check"
    assert time.monotonic() - started < 30  # bounded by the configured 0.6 s
    store.close()


def test_a_clock_that_syncs_late_lets_the_run_go_on_to_fleet(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    config = _config(tmp_path, ca)
    store = RunStore(config.agent.state_dir)
    clock = _SyncingClock(3)  # untrusted at validation, trusted after a few waits
    steps: list[str] = []
    provisioner = Provisioner(
        config, store, clock=clock, on_step=lambda _run, step: steps.append(step)
    )
    record = store.create(new_run_id(), origin="api", stick_id=None)
    result = asyncio.run(provisioner.run_archive(record, _archive(tmp_path, ca, "d5")))
    assert steps[-1] == "fleet"  # the window passed its deferred check
    assert result.reason == "MQTT_CONNECT_FAILED"
    store.close()


def _expiring_archive(tmp_path: Path, ca: CertificateAuthority, name: str) -> Path:
    """An archive whose claim certificate has about 3 s of its 5-minute window left."""
    now = dt.datetime.now(dt.UTC)
    built = build_archive(
        ca.factory(),
        DeviceRequest(
            name=name,
            endpoint=f"127.0.0.1:{free_port()}",
            template="edge-fleet",
            not_before=now - dt.timedelta(minutes=5) + dt.timedelta(seconds=3),
        ),
    )
    return write_archive(built, tmp_path / "sticks" / name)


def test_too_little_window_left_ends_failed_claim_expired(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    config = _config(tmp_path, ca)
    archive = _expiring_archive(tmp_path, ca, "d6")
    store = RunStore(config.agent.state_dir)
    record = store.create(new_run_id(), origin="api", stick_id=None)
    result = asyncio.run(Provisioner(config, store).run_archive(record, archive))
    assert (str(result.status), result.reason) == ("FAILED", "CLAIM_EXPIRED")
    store.close()


def test_a_registered_exchange_finishes_after_the_claim_window(
    tmp_path: Path, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RegisterThing was answered before a crash and the claim has expired since: the rest is
    # local (fleet.py installs the permanent set), so the run must not end CLAIM_EXPIRED.
    from agent.mqtt import fleet
    from agent.mqtt.client import Endpoint

    config = _config(tmp_path, ca)
    archive = _expiring_archive(tmp_path, ca, "d7")
    store = RunStore(config.agent.state_dir)
    calls: list[float] = []

    async def finished_exchange(
        state_dir: Path, options: fleet.FleetOptions, **_hooks: object
    ) -> fleet.FleetResult:
        calls.append(options.step_timeout)
        return fleet.FleetResult(
            thing_name="edge-d7",
            certificate_id="0" * 64,
            credential_dir=state_dir,
            endpoint=Endpoint("127.0.0.1", 8883),
            device_configuration={},
            resumed_from="registered",
        )

    monkeypatch.setattr(fleet, "provision", finished_exchange)
    monkeypatch.setattr(Provisioner, "_fleet_step", lambda _self, _fp: "registered")
    # what a crash during the fleet step leaves: the archive installed, the run at "fleet"
    policy, clock = policy_from_config(config)
    verified, _ = provision_from_file(archive, policy, clock, config.agent.state_dir)
    record = store.create(new_run_id(), origin="api", stick_id=None)
    store.step(record.run_id, "fleet", fingerprint=verified.fingerprint)
    steps: list[str] = []
    provisioner = Provisioner(config, store, on_step=lambda _run, step: steps.append(step))
    result = asyncio.run(provisioner.resume(store.get(record.run_id)))
    assert calls == [config.mqtt.fleet_step_timeout_seconds]  # not the claim's (gone) window
    assert str(result.status) == "SUCCEEDED", result.reason
    assert steps == ["fleet"]  # no time check of a claim that has done its work
    # without a registered exchange the same archive is refused for its window
    monkeypatch.setattr(Provisioner, "_fleet_step", lambda _self, _fp: "certificate")
    again = store.create(new_run_id(), origin="api", stick_id=None)
    later = _expiring_archive(tmp_path, ca, "d8")
    refused = asyncio.run(Provisioner(config, store).run_archive(again, later))
    assert (str(refused.status), refused.reason) == ("FAILED", "CLAIM_EXPIRED")
    store.close()
