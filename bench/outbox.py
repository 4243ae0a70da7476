"""Durable outbox throughput beside raw paho-mqtt QoS 1, against a local mosquitto (mTLS).

Run: .venv/bin/python bench/outbox.py [--count 20000] [--window 20] [--runs 3]

* baseline: raw paho-mqtt (its own network thread), QoS 1, the same payloads, the same
  in-flight window, timed from the first publish until the last PUBACK;
* outbox: ``Outbox.publish`` from many concurrent producers (each answered only once its
  event is committed with ``synchronous=FULL``), timed until the last PUBACK is deleted;
* broker away: pure enqueue rate (commit only), then the drain rate once it returns.

Target: outbox >= 0.8 x baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

# the broker and certificates come from the test helpers (run from the repository root)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.mqtt.client import Backoff, Endpoint, Identity, Link, Settings
from agent.mqtt.events import encode, make_event
from agent.mqtt.outbox import Limits, open_outbox
from tests.helpers.mosquitto import Broker, Pki

THING = "bench-hub"
TOPIC = f"edge/{THING}/events"


def payloads(count: int) -> list[bytes]:
    return [
        encode(
            make_event(
                "LOG", {"level": "info", "message": f"reading {i:08d}"}, seq=i + 1, thing_name=THING
            )
        )
        for i in range(count)
    ]


def raw_paho(broker: Broker, identity: Identity, data: list[bytes], window: int) -> float:
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_args: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == len(data):
                done.set()

    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    context = ssl.create_default_context(cafile=str(identity.root_ca))
    context.load_cert_chain(str(identity.certificate), str(identity.private_key))
    client.tls_set_context(context)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect("localhost", broker.port)
    client.loop_start()
    connected.wait(10)
    start = time.perf_counter()
    for payload in data:
        client.publish(TOPIC, payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return len(data) / elapsed


async def _outbox_run(
    broker: Broker, identity: Identity, count: int, window: int, *, away: bool
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = await open_outbox(
            Path(tmp),
            thing_name=THING,
            topic=TOPIC,
            limits=Limits(max_events=count * 2, max_bytes=1 << 30),
            window=window,
        )
        settings = Settings(
            Endpoint("localhost", broker.port),
            identity,
            client_id="bench-outbox",
            inflight_window=window,
            backoff=Backoff(0.02, 0.05),
        )
        link = Link(settings, [outbox.attach])
        task = asyncio.create_task(link.run())
        await asyncio.wait_for(link.connected.wait(), 10)
        if away:
            broker.stop()
        bodies = [{"level": "info", "message": f"reading {i:08d}"} for i in range(count)]
        start = time.perf_counter()
        for chunk in range(0, count, 1000):  # 1000 producers waiting at a time
            await asyncio.gather(*(outbox.submit("LOG", b) for b in bodies[chunk : chunk + 1000]))
        enqueued = time.perf_counter()
        if away:
            broker.start()
            enqueued = time.perf_counter()
        await asyncio.wait_for(outbox.drained(), 300)
        end = time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
        if away:
            return count / (enqueued - start), count / (end - enqueued)
        return count / (end - start), count / (enqueued - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        pki = Pki(Path(tmp) / "pki")
        (Path(tmp) / "broker").mkdir()
        broker = Broker(Path(tmp) / "broker", pki)
        broker.start()
        identity = pki.identity(THING)
        data = payloads(args.count)
        raw: list[float] = []
        durable: list[float] = []
        try:
            for _ in range(args.runs):
                raw.append(raw_paho(broker, identity, data, args.window))
                durable.append(
                    asyncio.run(_outbox_run(broker, identity, args.count, args.window, away=False))[
                        0
                    ]
                )
            enqueue, drain = asyncio.run(
                _outbox_run(broker, identity, args.count, args.window, away=True)
            )
        finally:
            broker.stop()
    raw_median, durable_median = statistics.median(raw), statistics.median(durable)
    size = statistics.mean(len(p) for p in data)
    print(f"{args.count} QoS 1 events of ~{size:.0f} bytes, window {args.window}, mTLS, MQTT 5")
    load = " -> ".join(f"{a:.2f}" for a in (load_before[0], os.getloadavg()[0]))
    print(f"machine load (1 min avg)   : {load} on {os.cpu_count()} CPUs")
    print(f"raw paho-mqtt QoS 1        : {raw_median:9.0f} msg/s   runs {[round(r) for r in raw]}")
    runs = [round(d) for d in durable]
    print(f"durable outbox             : {durable_median:9.0f} ev/s    runs {runs}")
    # each outbox run right after its raw run: the per-run ratio is the robust figure on a
    # machine whose load changes between runs
    ratios = [d / r for d, r in zip(durable, raw, strict=True)]
    per_run = [round(x, 2) for x in ratios]
    median = statistics.median(ratios)
    print(
        f"ratio outbox / raw         : {median:9.2f}   (median of per-run {per_run}; target 0.80)"
    )
    print(f"broker away, enqueue only  : {enqueue:9.0f} ev/s    ({enqueue / raw_median:.2f} x raw)")
    print(f"drain after it returns     : {drain:9.0f} ev/s    ({drain / raw_median:.2f} x raw)")


if __name__ == "__main__":
    main()
