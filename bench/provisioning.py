"""Fleet provisioning through ``registry serve``: complete provisionings per second.

One provisioning is what a device does with the AWS IoT Device SDK v2 (MQTT 3.1.1,
``IotIdentityClient``): a TLS connection with its claim certificate, four subscriptions,
CreateCertificateFromCsr, RegisterThing, disconnect. It runs with 1 and 8 devices at once
against ``edge-agent registry serve`` (mosquitto, plugin, worker) started by this script.
Baseline, in the same run: the registry core alone, in-process (``register_thing`` of a
CSR template, which checks and signs the CSR and writes the thing), one device at a time.
Claim certificates, CSRs and the devices' TLS contexts are made before timing. p50 and p99
are per provisioning. The devices run in this process and share the machine's cores with
mosquitto and the worker.

Run: ``.venv/bin/python bench/provisioning.py [devices-per-run [worker-threads]]``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from awscrt import mqtt
from awsiot import iotidentity, mqtt_connection_builder

from agent.registry.ca import generate_key, init_ca
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from tests.helpers.endpoint import Claim, EndpointPki, add_template, serve, write_config
from tests.helpers.registry import example_template, make_csr

QOS = mqtt.QoS.AT_LEAST_ONCE
TIMEOUT = 20.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class _Reader:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def packet(self) -> tuple[int, bytes]:
        first = self._take(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._take(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._take(length)


def _answer(sock: ssl.SSLSocket, reader: _Reader) -> tuple[str, bytes]:
    """The next PUBLISH from the broker (acknowledged), skipping acks."""
    while True:
        first, body = reader.packet()
        if first >> 4 != 3:
            continue
        size = int.from_bytes(body[:2], "big")
        topic = body[2 : 2 + size].decode()
        rest = body[2 + size :]
        if (first >> 1) & 3:
            sock.sendall(_packet(0x40, rest[:2]))
            rest = rest[2:]
        return topic, rest


def provision_raw(port: int, context: ssl.SSLContext, csr: str, serial: str) -> float:
    """One complete provisioning with a minimal MQTT 3.1.1 client; its duration in seconds.

    The same packets as the SDK's fleet-provisioning sample: CONNECT, a SUBSCRIBE of the four
    response topics, the two QoS 1 requests (each answered before the next), DISCONNECT.
    """
    started = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        reader = _Reader(sock)
        sock.sendall(_packet(0x10, _str("MQTT") + b"\x04\x02\x00\x1e" + _str(f"bench-{serial}")))
        reader.packet()  # CONNACK
        csr_topic = "$aws/certificates/create-from-csr/json"
        reg_topic = "$aws/provisioning-templates/edge-fleet/provision/json"
        topics = [f"{t}/{o}" for t in (csr_topic, reg_topic) for o in ("accepted", "rejected")]
        sock.sendall(_packet(0x82, b"\x00\x01" + b"".join(_str(t) + b"\x01" for t in topics)))
        body = json.dumps({"certificateSigningRequest": csr}).encode()
        sock.sendall(_packet(0x32, _str(csr_topic) + b"\x00\x02" + body))
        topic, payload = _answer(sock, reader)
        if not topic.endswith("/accepted"):
            raise RuntimeError(payload.decode())
        token = json.loads(payload)["certificateOwnershipToken"]
        body = json.dumps(
            {"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}
        ).encode()
        sock.sendall(_packet(0x32, _str(reg_topic) + b"\x00\x03" + body))
        topic, payload = _answer(sock, reader)
        if not topic.endswith("/accepted"):
            raise RuntimeError(payload.decode())
        sock.sendall(b"\xe0\x00")
    finally:
        sock.close()
    return time.perf_counter() - started


def provision(port: int, ca_file: str, claim: Claim, csr: str, serial: str) -> float:
    """One complete provisioning with the AWS IoT Device SDK; its duration in seconds."""
    started = time.perf_counter()
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=port,
        cert_filepath=str(claim.cert),
        pri_key_filepath=str(claim.key),
        ca_filepath=ca_file,
        client_id=f"bench-{serial}",
        clean_session=False,
        keep_alive_secs=30,
    )
    connection.connect().result(TIMEOUT)
    identity = iotidentity.IotIdentityClient(connection)
    created: concurrent.futures.Future[Any] = concurrent.futures.Future()
    registered: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def fail(target: concurrent.futures.Future[Any]) -> Any:
        return lambda error: target.set_exception(RuntimeError(error.error_code))

    csr_sub = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
    reg_sub = iotidentity.RegisterThingSubscriptionRequest(template_name="edge-fleet")
    subscriptions = [
        identity.subscribe_to_create_certificate_from_csr_accepted(
            csr_sub, QOS, created.set_result
        )[0],
        identity.subscribe_to_create_certificate_from_csr_rejected(csr_sub, QOS, fail(created))[0],
        identity.subscribe_to_register_thing_accepted(reg_sub, QOS, registered.set_result)[0],
        identity.subscribe_to_register_thing_rejected(reg_sub, QOS, fail(registered))[0],
    ]
    for sub in subscriptions:
        sub.result(TIMEOUT)
    identity.publish_create_certificate_from_csr(
        iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), QOS
    )
    token = created.result(TIMEOUT).certificate_ownership_token
    identity.publish_register_thing(
        iotidentity.RegisterThingRequest(
            template_name="edge-fleet",
            certificate_ownership_token=token,
            parameters={"SerialNumber": serial},
        ),
        QOS,
    )
    registered.result(TIMEOUT)
    connection.disconnect().result(TIMEOUT)
    return time.perf_counter() - started


def endpoint_run(
    device: Callable[[Claim, str, str], float],
    work: list[tuple[Claim, str, str]],
    concurrency: int,
) -> tuple[float, list[float]]:
    """Provision every device of ``work`` with ``concurrency`` at once; (seconds, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    items = iter(work)

    def device_loop() -> None:
        while True:
            with lock:
                item = next(items, None)
            if item is None:
                return
            took = device(*item)
            with lock:
                latencies.append(took)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(device_loop) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - started, latencies


def _client_context(ca_file: str, claim: Claim) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(str(claim.cert), str(claim.key))
    return context


def core_run(directory: Path, csrs: list[str]) -> tuple[float, list[float]]:
    """The registry core alone: RegisterThing with a CSR template, in-process."""
    ca = init_ca(directory / "core-ca")
    template = example_template()
    template["Resources"]["certificate"]["Properties"] = {
        "CertificateSigningRequest": {"Ref": "Csr"},
        "Status": "ACTIVE",
    }
    template["Parameters"]["Csr"] = {"Type": "String"}
    del template["Parameters"]["AWS::IoT::Certificate::Id"]
    with SqliteRegistryStorage.open(directory / "core.db") as storage:
        registry = Registry(storage, ca.registry(), region="eu-west-1", account="111122223333")
        registry.create_policy("EdgeAppliancePolicy", {"Version": "2012-10-17", "Statement": []})
        latencies = []
        started = time.perf_counter()
        for i, csr in enumerate(csrs):
            t0 = time.perf_counter()
            registry.register_thing(template, {"SerialNumber": f"core{i}", "Csr": csr})
            latencies.append(time.perf_counter() - t0)
        return time.perf_counter() - started, latencies


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _figures(name: str, seconds: float, latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    rate = len(latencies) / seconds
    print(
        f"{name:<28} {len(latencies):>5} in {seconds:6.2f} s  {rate:8.1f}/s  "
        f"p50 {statistics.median(ordered) * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms"
    )
    return {"name": name, "rate": rate, "p50": statistics.median(ordered), "p99": p99}


def main() -> None:
    """Run the benchmark and print the figures."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    sdk_count = max(16, count // 10)
    with tempfile.TemporaryDirectory(prefix="bench-provisioning-") as tmp:
        directory = Path(tmp)
        pki = EndpointPki(directory)
        database = directory / "registry.db"
        config = write_config(directory / "agent.toml", pki, database)
        add_template(database)
        print(f"preparing {2 * count} claim certificates and CSRs ...")
        work = []
        for i in range(2 * count + sdk_count):
            claim = pki.claim(f"bench{i}")
            work.append((claim, make_csr(claim.name, key=generate_key("ec-p256")), f"b{i}"))
        core_csrs = [make_csr(f"core{i}") for i in range(count)]
        sdk_work = [work.pop() for _ in range(sdk_count)]
        # A device loads its claim certificate once, at boot: the contexts are made here.
        contexts = {claim.name: _client_context(str(pki.ca_file), claim) for claim, _, _ in work}
        running = serve(config, pki, "--threads", sys.argv[2] if len(sys.argv) > 2 else "4")
        try:
            ca_file = str(pki.ca_file)

            def raw(claim: Claim, csr: str, serial: str) -> float:
                return provision_raw(running.port, contexts[claim.name], csr, serial)

            def sdk(claim: Claim, csr: str, serial: str) -> float:
                return provision(running.port, ca_file, claim, csr, serial)

            raw(*work.pop())  # warm-up
            one = _figures("registry serve, 1 device", *endpoint_run(
                raw, work[: count // 2], 1
            ))  # fmt: skip
            pids = {
                "worker": running.process.pid,
                "mosquitto": _children(running.process.pid)[0],
                "devices": os.getpid(),
            }
            before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            eight = _figures("registry serve, 8 devices", *endpoint_run(
                raw, work[count // 2 : count // 2 + count], 8
            ))  # fmt: skip
            used = {name: _cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            print(
                "  CPU per provisioning: "
                + ", ".join(
                    f"{name} {seconds / count * 1000:.2f} ms" for name, seconds in used.items()
                )
            )
            _figures("  the same with the SDK, 8", *endpoint_run(sdk, sdk_work, 8))
        finally:
            running.stop()
        core = _figures("registry core in-process", *core_run(directory, core_csrs))
        print(
            f"ratio to the core: 1 device {one['rate'] / core['rate']:.2f}, "
            f"8 devices {eight['rate'] / core['rate']:.2f}; "
            f"target 300/s with 8 devices: {'met' if eight['rate'] >= 300 else 'NOT met'}"
        )
        print(json.dumps({"one": one, "eight": eight, "core": core}))


if __name__ == "__main__":
    main()
