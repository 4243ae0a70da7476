"""The durable outbox against a real mosquitto: flow, outages, kill -9, bounds, ACL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt.client import Backoff, Endpoint, Identity, Link, Settings
from agent.mqtt.outbox import Limits, Outbox, open_outbox
from tests.helpers.mosquitto import Broker, Pki, Watcher
from tests.integration.mqtt.conftest import unique_events, validate

pytestmark = pytest.mark.mqtt


def _settings(broker: Broker, identity: Identity, thing: str) -> Settings:
    return Settings(
        endpoint=Endpoint("localhost", broker.port),
        identity=identity,
        client_id=thing,
        status_topic=f"edge/{thing}/status",
        backoff=Backoff(0.05, 0.5),
    )


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, broker: Broker, identity: Identity, thing: str, **kwargs: Any
) -> AsyncIterator[tuple[Outbox, Link]]:
    outbox = await open_outbox(
        tmp_path / f"state-{thing}", thing_name=thing, topic=f"edge/{thing}/events", **kwargs
    )
    link = Link(_settings(broker, identity, thing), [outbox.attach])
    task = asyncio.create_task(link.run())
    try:
        yield outbox, link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()


def test_events_flow_and_status(tmp_path: Path, broker: Broker, pki: Pki) -> None:
    thing = "hub-flow"
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/#"])

    async def scenario() -> None:
        async with running(tmp_path, broker, pki.identity(thing), thing) as (outbox, link):
            await asyncio.wait_for(link.connected.wait(), 10)
            for i in range(50):
                await outbox.publish("LOG", {"level": "info", "message": f"m{i}"})
            await outbox.publish("RUN_OUTCOME", {"runId": "r1", "status": "SUCCEEDED"})
            await asyncio.wait_for(outbox.drained(), 20)

    try:
        asyncio.run(scenario())
        events = unique_events(watcher.wait_for(51, f"edge/{thing}/events"))
        assert [e["seq"] for e in events] == list(range(1, 52))
        assert events[-1]["type"] == "RUN_OUTCOME"
        assert {e["thingName"] for e in events} == {thing}
        statuses = [
            validate("status.schema.json", p) for p in watcher.payloads(f"edge/{thing}/status")
        ]
        assert statuses[0]["state"] == "online"
    finally:
        watcher.close()


def test_last_will_marks_offline(tmp_path: Path, broker: Broker, pki: Pki) -> None:
    thing = "hub-will"
    driver = _driver(tmp_path, broker, pki, thing, 1)
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/status"])
    try:
        _wait_line(driver, "drained")
        _kill(driver)
        got = watcher.wait_for(2, f"edge/{thing}/status", timeout=90)
        states = [validate("status.schema.json", p)["state"] for p in got]
        assert states[-1] == "offline"
        assert "online" in states
    finally:
        watcher.close()


@pytest.mark.slow
def test_broker_away_30s_then_all_5000_arrive_in_order(
    tmp_path: Path, broker: Broker, pki: Pki
) -> None:
    thing = "hub-outage"
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/events"])
    total = 5000

    async def scenario() -> None:
        async with running(tmp_path, broker, pki.identity(thing), thing) as (outbox, link):
            await asyncio.wait_for(link.connected.wait(), 10)
            start = time.monotonic()
            for i in range(total):
                if i == 500:
                    broker.stop()
                await outbox.publish("LOG", {"level": "info", "message": f"m{i}"})
                if i >= 500:
                    # spread the rest over the 30 s outage
                    await asyncio.sleep(
                        max(0.0, (i - 500) * 30 / (total - 500) - (time.monotonic() - start))
                    )
            remaining = 30 - (time.monotonic() - start)
            if remaining > 0:
                await asyncio.sleep(remaining)
            assert outbox.pending > 0
            broker.start()
            watcher_reconnected.set()
            await asyncio.wait_for(outbox.drained(), 60)

    import threading

    watcher_reconnected = threading.Event()
    try:
        asyncio.run(scenario())
        # the watcher (paho loop thread) reconnects by itself; wait for everything
        events = unique_events(watcher.wait_for(total, timeout=60))
        deadline = time.monotonic() + 60
        while len(events) < total and time.monotonic() < deadline:
            time.sleep(0.2)
            events = unique_events(watcher.payloads())
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, total + 1))
    finally:
        watcher.close()


def _driver(
    tmp_path: Path, broker: Broker, pki: Pki, thing: str, count: int
) -> subprocess.Popen[str]:
    identity_dir = tmp_path / f"id-{thing}"
    if not identity_dir.exists():
        identity_dir.mkdir()
        ident = pki.identity(thing)
        for src, name in ((ident.certificate, "c.pem"), (ident.private_key, "k.pem")):
            (identity_dir / name).write_bytes(src.read_bytes())
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.outbox_driver",
            str(tmp_path / f"state-{thing}"),
            thing,
            str(identity_dir / "c.pem"),
            str(identity_dir / "k.pem"),
            str(pki.ca_path),
            str(broker.port),
            str(count),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    """``kill -9`` the driver and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the driver exited ({proc.poll()}) before {prefix!r}")
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


def test_kill_9_with_events_pending_then_delivered_after_restart(
    tmp_path: Path, broker: Broker, pki: Pki
) -> None:
    thing = "hub-kill"
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/events"])
    try:
        broker.stop()  # the events stay pending in the outbox
        first = _driver(tmp_path, broker, pki, thing, 300)
        last = ""
        for _ in range(300):
            last = _wait_line(first, "durable")
        assert last == "durable 300"
        _kill(first)
        broker.start()
        second = _driver(tmp_path, broker, pki, thing, 0)
        try:
            _wait_line(second, "drained")
        finally:
            _kill(second)
        events = unique_events(watcher.wait_for(300, timeout=30))
        assert [e["seq"] for e in events] == list(range(1, 301))
        # seq keeps counting across restarts
        third = _driver(tmp_path, broker, pki, thing, 1)
        try:
            assert _wait_line(third, "durable") == "durable 301"
        finally:
            _kill(third)
    finally:
        watcher.close()


def test_kill_9_while_sending_loses_nothing(tmp_path: Path, broker: Broker, pki: Pki) -> None:
    thing = "hub-kill2"
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/events"])
    try:
        first = _driver(tmp_path, broker, pki, thing, 3000)
        for _ in range(1500):
            _wait_line(first, "durable")
        _kill(first)  # mid-stream: some sent, some acked, some not
        durable_floor = 1500
        second = _driver(tmp_path, broker, pki, thing, 0)
        try:
            _wait_line(second, "drained")
        finally:
            _kill(second)
        time.sleep(0.5)
        events = unique_events(watcher.payloads())
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        assert seqs[:durable_floor] == list(range(1, durable_floor + 1))
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        watcher.close()


def test_full_outbox_drops_oldest_low_priority_never_outcomes(
    tmp_path: Path, broker: Broker, pki: Pki
) -> None:
    thing = "hub-full"
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/events"])

    async def scenario() -> dict[str, Any]:
        broker.stop()
        limits = Limits(max_events=100, max_bytes=1 << 20)
        async with running(tmp_path, broker, pki.identity(thing), thing, limits=limits) as (
            outbox,
            _link,
        ):
            await outbox.publish("RUN_OUTCOME", {"runId": "r0", "status": "FAILED"})
            for i in range(150):
                await outbox.publish("LOG", {"level": "info", "message": f"m{i}"})
            await outbox.publish("RUN_OUTCOME", {"runId": "r1", "status": "SUCCEEDED"})
            snap = outbox.snapshot()
            broker.start()
            await asyncio.wait_for(outbox.drained(), 30)
            return snap

    try:
        snap = asyncio.run(scenario())
        assert snap["pending"] <= 100 + 4  # outcomes and alarms may exceed the bound
        time.sleep(0.5)
        events = unique_events(watcher.wait_for(100, timeout=10))
        types = [e["type"] for e in events]
        outcomes = [e["body"]["runId"] for e in events if e["type"] == "RUN_OUTCOME"]
        assert outcomes == ["r0", "r1"]
        assert types.count("OUTBOX_HIGH_WATER") == 1
        dropped = [e["body"] for e in events if e["type"] == "OUTBOX_DROPPED"]
        assert dropped, "an OUTBOX_DROPPED event counts the drops"
        assert dropped[-1]["totalDropped"] == sum(d["dropped"] for d in dropped)
        logs = [int(e["body"]["message"][1:]) for e in events if e["type"] == "LOG"]
        # the oldest low-priority events went first: what is left is the newest, in order
        assert logs == sorted(logs)
        assert logs[-1] == 149
        assert len(logs) + dropped[-1]["totalDropped"] == 150
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
    finally:
        watcher.close()


def test_acl_isolates_appliances(tmp_path: Path, broker: Broker, pki: Pki) -> None:
    """hub-a can neither publish to nor read hub-b's topics."""
    a, b = pki.identity("hub-a"), pki.identity("hub-b")
    spy = Watcher(broker, a, ["edge/hub-b/#"])  # a subscribes to b's topics
    b_watch = Watcher(broker, b, ["edge/hub-b/#"])

    async def scenario() -> list[int]:
        from agent.mqtt.client import connect

        codes: list[int] = []
        async with connect(_settings(broker, a, "hub-a")) as session:
            done = asyncio.Event()

            def ack(_mid: int, rc: int) -> None:
                codes.append(rc)
                done.set()

            session.on_ack(ack)
            session.publish_nowait("edge/hub-b/events", b'{"forged":true}')
            await asyncio.wait_for(done.wait(), 10)
        async with running(tmp_path, broker, b, "hub-b") as (outbox, link):
            await asyncio.wait_for(link.connected.wait(), 10)
            await outbox.publish("LOG", {"level": "info", "message": "legit"})
            await asyncio.wait_for(outbox.drained(), 10)
        return codes

    try:
        codes = asyncio.run(scenario())
        assert codes == [135]  # MQTT 5: not authorised
        got = b_watch.wait_for(1, "edge/hub-b/events")
        assert [json.loads(p)["body"]["message"] for p in got] == ["legit"]
        time.sleep(0.3)
        assert spy.payloads() == []
    finally:
        spy.close()
        b_watch.close()
