"""``registry serve`` as a service: SIGTERM, mosquitto dying, two workers with one killed."""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.registry.serve import plugin_path, write_broker_files
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.endpoint import (
    EndpointPki,
    RawDevice,
    add_template,
    free_port,
    start_serve,
    wait_ready,
    write_config,
)
from tests.helpers.registry import make_csr
from tests.integration.endpoint.conftest import need_endpoint, start_endpoint

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
REGISTER = "$aws/provisioning-templates/edge-fleet/provision/json"


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            found.append((int(entry.name), comm))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_sigterm_stops_mosquitto_and_the_worker(tmp_path: Path) -> None:
    endpoint = start_endpoint(tmp_path)
    brokers = [pid for pid, comm in _children(endpoint.serve.process.pid) if comm == "mosquitto"]
    assert len(brokers) == 1
    assert endpoint.serve.ready["listen"] == f"127.0.0.1:{endpoint.port}"
    assert endpoint.serve.stop() == 0
    deadline = time.monotonic() + 5
    while _alive(brokers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(brokers[0])


def test_mosquitto_dying_ends_serve_with_a_clear_message(tmp_path: Path) -> None:
    endpoint = start_endpoint(tmp_path)
    try:
        (broker,) = [
            pid for pid, comm in _children(endpoint.serve.process.pid) if comm == "mosquitto"
        ]
        os.kill(broker, signal.SIGKILL)
        code = endpoint.serve.process.wait(10)
    finally:
        endpoint.serve.stop()
    assert code == 3
    assert "mosquitto exited" in endpoint.serve.stderr


def test_bad_arguments_are_refused_clearly(tmp_path: Path) -> None:
    need_endpoint()
    pki = EndpointPki(tmp_path)
    config = write_config(tmp_path / "agent.toml", pki, tmp_path / "registry.db")
    cases = [
        (["--listen", "nowhere", "--server-cert", str(pki.server_cert), "--server-key", "x"], 2),
        (["--listen", "127.0.0.1:1", "--server-cert", str(tmp_path / "missing.pem"),
          "--server-key", str(pki.server_key)], 2),
        (["--broker", "http://x", "--password-file", str(pki.server_key)], 2),
    ]  # fmt: skip
    for args, code in cases:
        process = start_serve(["--config", str(config), "registry", "serve", *args])
        out, err = process.communicate(timeout=30)
        assert process.returncode == code, err
        assert json.loads(out)["error"]["code"] == "ValidationException"


def _provision(port: int, pki: EndpointPki, serial: str) -> str:
    """One device that retries a request whose answer does not come (a worker died)."""
    claim = pki.claim()
    csr = make_csr(claim.name)
    device = RawDevice(port, claim, pki.ca_file)
    try:
        token = None
        for _ in range(5):
            try:
                topic, payload = device.request(
                    CSR_TOPIC, json.dumps({"certificateSigningRequest": csr}), timeout=2
                )
            except queue.Empty:
                continue
            assert topic.endswith("/accepted"), payload
            token = json.loads(payload)["certificateOwnershipToken"]
            break
        assert token is not None
        body = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}
        for _ in range(5):
            try:
                topic, payload = device.request(REGISTER, json.dumps(body), timeout=2)
            except queue.Empty:
                continue
            assert topic.endswith("/accepted"), payload
            name: str = json.loads(payload)["thingName"]
            return name
        raise AssertionError(f"device {serial} never got an answer")
    finally:
        device.close()


def _operator_broker(tmp_path: Path, pki: EndpointPki) -> tuple[int, Path, subprocess.Popen[bytes]]:
    """mosquitto with the plugin as an operator runs it for --broker mode."""
    port = free_port()
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir(mode=0o700)
    files = write_broker_files(
        broker_dir,
        host="127.0.0.1",
        port=port,
        server_cert=pki.server_cert,
        server_key=pki.server_key,
        claim_ca_pem=pki.ca_file.read_bytes(),
        plugin=plugin_path(),
    )
    broker = subprocess.Popen(["mosquitto", "-c", str(files.config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not files.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return port, broker_dir, broker


def _worker(config: Path, broker_dir: Path) -> subprocess.Popen[str]:
    worker = start_serve(
        ["-v", "--config", str(config), "registry", "serve",
         "--broker", f"unix://{broker_dir / 'registry.sock'}",
         "--password-file", str(broker_dir / "registry.pw")]
    )  # fmt: skip
    wait_ready(worker)
    return worker


def test_devices_are_refused_while_no_worker_serves(tmp_path: Path) -> None:
    need_endpoint()
    pki = EndpointPki(tmp_path)
    database = tmp_path / "registry.db"
    config = write_config(tmp_path / "agent.toml", pki, database)
    add_template(database)
    port, broker_dir, broker = _operator_broker(tmp_path, pki)
    try:
        with pytest.raises(ConnectionError):
            RawDevice(port, pki.claim(), pki.ca_file)
        worker = _worker(config, broker_dir)
        try:
            assert _provision(port, pki, "served") == "edge-served"
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(10) == 0
            worker.communicate()
        with pytest.raises(ConnectionError):
            RawDevice(port, pki.claim(), pki.ca_file)
    finally:
        broker.terminate()
        broker.wait(10)


def test_two_workers_share_the_load_and_survive_one_killed(tmp_path: Path) -> None:
    need_endpoint()
    pki = EndpointPki(tmp_path)
    database = tmp_path / "registry.db"
    config = write_config(tmp_path / "agent.toml", pki, database)
    add_template(database)
    port, broker_dir, broker = _operator_broker(tmp_path, pki)
    workers: list[subprocess.Popen[str]] = []
    try:
        workers.extend(_worker(config, broker_dir) for _ in range(2))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_provision, port, pki, f"w{i}") for i in range(16)]
            for done, _ in enumerate(concurrent.futures.as_completed(futures), start=1):
                if done == 6:
                    workers[0].kill()  # mid-run, requests in flight
            names = sorted(f.result() for f in futures)
        assert names == sorted(f"edge-w{i}" for i in range(16))
        _, killed_log = workers[0].communicate(timeout=10)
        assert "registered thing" in killed_log  # it did share the load before it died
        with SqliteRegistryStorage.open(database) as storage:
            assert storage.count_things() == 16
            for name in names:
                assert len(storage.thing_principals(name)) == 1
            (certs,) = storage.store.db.execute(
                "SELECT count(*) FROM registry_certificates"
            ).fetchone()
            assert certs == 16  # retries never issued a second certificate
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=10)
        broker.terminate()
        broker.wait(10)
