"""Protocol versions: MQTT 3.1.1 on mosquitto; fallback from 5 when a broker refuses it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest

from agent.mqtt.client import Backoff, Endpoint, Settings, connect
from agent.mqtt.outbox import open_outbox
from tests.helpers.mosquitto import Broker, Pki, Watcher, free_port
from tests.integration.mqtt.conftest import validate

pytestmark = pytest.mark.mqtt


def test_events_flow_over_mqtt_311(tmp_path: Path, broker: Broker, pki: Pki) -> None:
    thing = "hub-v311"
    watcher = Watcher(broker, pki.identity(thing), [f"edge/{thing}/events"])

    async def scenario() -> str:
        from agent.mqtt.client import Link

        outbox = await open_outbox(tmp_path / "s", thing_name=thing, topic=f"edge/{thing}/events")
        settings = Settings(
            Endpoint("localhost", broker.port),
            pki.identity(thing),
            client_id=thing,
            protocol="3.1.1",
            status_topic=f"edge/{thing}/status",
            backoff=Backoff(0.05, 0.2),
        )
        link = Link(settings, [outbox.attach])
        task = asyncio.create_task(link.run())
        await asyncio.wait_for(link.connected.wait(), 10)
        assert link.session is not None
        protocol = link.session.protocol
        for i in range(20):
            await outbox.publish("LOG", {"level": "info", "message": str(i)})
        await asyncio.wait_for(outbox.drained(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
        return protocol

    try:
        assert asyncio.run(scenario()) == "3.1.1"
        events = [validate("event.schema.json", p) for p in watcher.wait_for(20)]
        assert [e["seq"] for e in events] == list(range(1, 21))
    finally:
        watcher.close()


def test_falls_back_to_311_when_the_broker_refuses_5(tmp_path: Path, pki: Pki) -> None:
    """A broker that only speaks 3.1.1 answers a v5 CONNECT with return code 1."""
    cert, key = pki.issue("old-broker", server=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(1)  # CONNECT fixed header
            length, shift = 0, 0
            while True:
                byte = (await reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await reader.readexactly(length)
            level = body[6]  # after the 2-byte length and "MQTT"
            seen.append(level)
            if level == 5:
                writer.write(b"\x20\x02\x00\x01")  # 3.1.1: unacceptable protocol version
                await writer.drain()
                writer.close()
                return
            writer.write(b"\x20\x02\x00\x00")  # accepted
            await writer.drain()
            await reader.read()  # until the client disconnects
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def scenario() -> str:
        port = free_port()
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=server_context)
        async with server:
            settings = Settings(
                Endpoint("localhost", port), pki.identity("hub-old"), client_id="hub-old"
            )
            async with connect(settings) as session:
                return session.protocol

    assert asyncio.run(scenario()) == "3.1.1"
    assert seen == [5, 4]


def test_a_failing_handler_keeps_the_connection(broker: Broker, pki: Pki) -> None:
    import aiomqtt

    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()

        def boom(_message: aiomqtt.Message) -> None:
            raise RuntimeError("handler bug")

        def keep(message: aiomqtt.Message) -> None:
            got.append(message.payload if isinstance(message.payload, bytes) else b"")
            done.set()

        settings = Settings(Endpoint("localhost", broker.port), pki.identity("hub-h"), "hub-h")
        async with connect(settings) as session:
            await session.subscribe("edge/hub-h/a", boom)
            await session.subscribe("edge/hub-h/b", keep)
            await session.publish("edge/hub-h/a", b"first")
            await session.publish("edge/hub-h/b", b"second")
            await asyncio.wait_for(done.wait(), 10)
            assert not session.closed.done()
        return got

    assert asyncio.run(scenario()) == [b"second"]
