"""Fleet provisioning through ``registry serve``: complete provisionings per second.

One provisioning is what a device does with the AWS IoT Device SDK v2 (MQTT 3.1.1,
``IotIdentityClient``), with a minimal MQTT client on a blocking TLS socket:

1. a TCP connection and a full TLS handshake (TLS 1.3, mutual: the device's claim
   certificate and key, the server's certificate checked against the root CA and its IP
   address); no session is resumed;
2. CONNECT (clean session off, as the SDK) and its CONNACK;
3. one SUBSCRIBE of the four response topics (``create-from-csr/json/accepted`` and
   ``/rejected``, ``provision/json/accepted`` and ``/rejected``) at QoS 1;
4. CreateCertificateFromCsr: a QoS 1 PUBLISH of a fresh CSR, then wait for its PUBACK and
   the ``/accepted`` answer (PUBACK sent for it);
5. RegisterThing with the ownership token: a QoS 1 PUBLISH, then wait for its PUBACK and
   the ``/accepted`` answer (PUBACK sent for it);
6. DISCONNECT and close.

A packet the device sends right after another (a PUBACK and the next request; the last
PUBACK and DISCONNECT) goes out in the same write, as the SDK's own write queue does.
It runs with 1 and 8 devices at once (one thread each, in this process) against
``edge-agent registry serve`` (mosquitto, plugin, worker) started by this script. Every
device has its own claim certificate and CSR key; certificates, CSRs and the devices' TLS
contexts (a device loads its claim certificate once, at boot) are made before timing.

Baseline, in the same run: the registry core alone, in-process (``register_thing`` of a
CSR template, which checks and signs the CSR and writes the thing durably), one at a time.

Figures: provisionings per second, p50 and p99 per provisioning, and the CPU time each
process used per provisioning (user + system, from ``/proc``: the worker, mosquitto, and
this process, which runs the devices). CPU per provisioning is robust while other work
loads the machine; throughput is not. ``bound`` is what the measured CPU allows on the
machine's idle cores: ``1000 ms * cores / total ms``. A run with the AWS IoT Device SDK
(awscrt) as the device is timed too.

Run: ``.venv/bin/python bench/provisioning.py [devices-per-run [worker-threads]]``.
"""

from __future__ import annotations

import concurrent.futures
import gc
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

# the endpoint and certificates come from the test helpers (run from the repository root)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def _answer(reader: _Reader, want_puback: int) -> tuple[str, bytes, bytes]:
    """The next PUBLISH (after the PUBACK of packet ``want_puback``); topic, payload, its ack.

    The PUBACK the device owes for it is returned, to go out with the device's next packet.
    """
    acked = False
    while True:
        first, body = reader.packet()
        if first >> 4 == 4 and int.from_bytes(body[:2], "big") == want_puback:
            acked = True
            continue
        if first >> 4 != 3:
            continue
        size = int.from_bytes(body[:2], "big")
        topic = body[2 : 2 + size].decode()
        rest = body[2 + size :]
        ack = b""
        if (first >> 1) & 3:
            ack = _packet(0x40, rest[:2])
            rest = rest[2:]
        if not acked:
            first, body = reader.packet()  # mosquitto acks before it delivers the answer
            if first >> 4 != 4:
                raise RuntimeError(f"expected a PUBACK, got packet type {first >> 4}")
        return topic, rest, ack


def provision_raw(port: int, context: ssl.SSLContext, csr: str, serial: str) -> float:
    """One complete provisioning with a minimal MQTT 3.1.1 client; its duration in seconds.

    The same packets as the SDK's fleet-provisioning sample: CONNECT, a SUBSCRIBE of the four
    response topics, the two QoS 1 requests (each acknowledged and answered before the
    next), DISCONNECT.
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
        topic, payload, ack = _answer(reader, 2)
        if not topic.endswith("/accepted"):
            raise RuntimeError(payload.decode())
        token = json.loads(payload)["certificateOwnershipToken"]
        body = json.dumps(
            {"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}
        ).encode()
        sock.sendall(ack + _packet(0x32, _str(reg_topic) + b"\x00\x03" + body))
        topic, payload, ack = _answer(reader, 3)
        if not topic.endswith("/accepted"):
            raise RuntimeError(payload.decode())
        sock.sendall(ack + b"\xe0\x00")
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


def _cpu_run(
    pids: dict[str, int], run: Callable[[], tuple[float, list[float]]]
) -> tuple[float, list[float], dict[str, float]]:
    """``run()`` with the CPU seconds each process used during it."""
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    seconds, latencies = run()
    used = {name: _cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return seconds, latencies, used


def _cpu_line(used: dict[str, float], count: int) -> dict[str, float]:
    per = {name: seconds / count * 1000 for name, seconds in used.items()}
    total = sum(per.values())
    cores = os.cpu_count() or 1
    print(
        "  CPU ms per provisioning: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in per.items())
        + f"; total {total:.2f} -> bound {1000 * cores / total:.0f}/s on {cores} idle cores"
    )
    return {**per, "total": total}


def main() -> None:
    """Run the benchmark and print the figures."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    threads = sys.argv[2] if len(sys.argv) > 2 else "4"
    sdk_count = max(16, count // 10)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-provisioning-") as tmp:
        directory = Path(tmp)
        pki = EndpointPki(directory)
        database = directory / "registry.db"
        config = write_config(directory / "agent.toml", pki, database)
        add_template(database)
        print(f"preparing {count + count // 2 + sdk_count + 1} claim certificates and CSRs ...")
        work = []
        for i in range(count + count // 2 + sdk_count + 1):
            claim = pki.claim(f"bench{i}")
            work.append((claim, make_csr(claim.name, key=generate_key("ec-p256")), f"b{i}"))
        core_csrs = [make_csr(f"core{i}") for i in range(count)]
        sdk_work = [work.pop() for _ in range(sdk_count)]
        # A device loads its claim certificate once, at boot: the contexts are made here.
        contexts = {claim.name: _client_context(str(pki.ca_file), claim) for claim, _, _ in work}
        # One process holds every device's certificates; a real device holds its own. Keep the
        # collector from walking them all again and again while the devices run.
        gc.collect()
        gc.freeze()
        running = serve(config, pki, "--threads", threads)
        try:
            ca_file = str(pki.ca_file)

            def raw(claim: Claim, csr: str, serial: str) -> float:
                return provision_raw(running.port, contexts[claim.name], csr, serial)

            def sdk(claim: Claim, csr: str, serial: str) -> float:
                return provision(running.port, ca_file, claim, csr, serial)

            raw(*work.pop())  # warm-up
            pids = {
                "worker": running.process.pid,
                "mosquitto": _children(running.process.pid)[0],
                "devices": os.getpid(),
            }
            ones = work[: count // 2]
            seconds, latencies, used = _cpu_run(pids, lambda: endpoint_run(raw, ones, 1))
            one = _figures("registry serve, 1 device", seconds, latencies)
            one["cpu_ms"] = _cpu_line(used, len(ones))
            eights = work[count // 2 : count // 2 + count]
            seconds, latencies, used = _cpu_run(pids, lambda: endpoint_run(raw, eights, 8))
            eight = _figures("registry serve, 8 devices", seconds, latencies)
            eight["cpu_ms"] = _cpu_line(used, len(eights))
            _figures("  the same with the SDK, 8", *endpoint_run(sdk, sdk_work, 8))
        finally:
            running.stop()
        core = _figures("registry core in-process", *core_run(directory, core_csrs))
        print(
            f"ratio to the core: 1 device {one['rate'] / core['rate']:.2f}, "
            f"8 devices {eight['rate'] / core['rate']:.2f}; "
            f"target 300/s with 8 devices: {'met' if eight['rate'] >= 300 else 'NOT met'} "
            f"(CPU bound {1000 * (os.cpu_count() or 1) / eight['cpu_ms']['total']:.0f}/s)"
        )
        load = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
        print(f"machine load (1 min avg): {load} on {os.cpu_count()} CPUs")
        print(json.dumps({"one": one, "eight": eight, "core": core}))


if __name__ == "__main__":
    main()
