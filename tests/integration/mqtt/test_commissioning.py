"""Managed things over a real mosquitto: the commands, and every state change as an event.

The appliance side is the daemon's: :class:`ApplianceMqtt` (link, outbox, command server)
with the commissioning service's operations and its outbox reporter; the Zigbee backend is
zigpy with stub radio methods (the device "joins" when the test says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import zigpy.types as t

from agent.commissioning.backend import RadioBackend
from agent.commissioning.runtime import CommissioningService
from agent.commissioning.scanner import ScanHandler
from agent.commissioning.zigbee import ZigbeeBackend
from agent.config import AgentConfig, CommissioningSection, MqttSection
from agent.mqtt.agent_link import ApplianceMqtt
from agent.mqtt.client import Endpoint, Session, Settings, connect
from tests.helpers.identity import install_identity
from tests.helpers.mosquitto import Broker, Pki, Watcher
from tests.helpers.zigbee import StubRadioApp, create_body, make_app, nwk
from tests.integration.mqtt.conftest import unique_events, validate

pytestmark = pytest.mark.mqtt

THING = "hub-commission"
IEEE = "01:02:03:04:05:06:07:08"
INSTALL_CODE = "0102030405060708090A0B0C0D0E0F1090FD"
LINK_KEY = "F7DB70E028B72B3F67D90A54F6916FF4"
ZIGBEE = f"Z:0102030405060708$I:{INSTALL_CODE}"
ZWAVE_DSK = "51525-35455-41424-34445-31323-33435-21222-32425"
WIFI = "WIFI:T:WPA;S:edge-uplink;P:correct-horse-battery;;"
SECRETS = (INSTALL_CODE, LINK_KEY, ZWAVE_DSK, ZIGBEE, "correct-horse-battery")
LIFECYCLE = ["UNASSOCIATED", "PRE_ASSOCIATED", "DISCOVERED", "ACTIVATED"]


@pytest.fixture
def state(tmp_path: Path, pki: Pki, broker: Broker) -> Path:
    directory = tmp_path / "state"
    install_identity(directory, pki, broker, THING)
    return directory


def _config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        commissioning=CommissioningSection(
            database=tmp_path / "things.db", zigbee_radio="znp", join_timeout_seconds=30
        )
    )


def _radios(app: StubRadioApp) -> Any:
    @contextlib.asynccontextmanager
    async def radios(_section: CommissioningSection) -> AsyncIterator[list[RadioBackend]]:
        yield [ZigbeeBackend(app, permit_seconds=60)]

    return radios


def _body(**overrides: Any) -> dict[str, Any]:
    return create_body(ZIGBEE, **overrides)


def _join(app: StubRadioApp) -> None:
    ieee = t.EUI64.convert(IEEE)
    app.handle_join(nwk(0x2345), ieee, nwk(0))
    app.device_initialized(app.get_device(ieee=ieee))


def _statuses(events: list[dict[str, Any]], thing_id: str) -> list[str]:
    return [
        e["body"]["status"]
        for e in events
        if e["type"] == "MANAGED_THING_STATUS" and e["body"]["thingId"] == thing_id
    ]


def _no_secrets(payloads: list[bytes]) -> None:
    text = b"\n".join(payloads).decode()
    for secret in SECRETS:
        assert secret not in text


class Operator:
    def __init__(self, session: Session, replies: asyncio.Queue[aiomqtt.Message]) -> None:
        self.session = session
        self.replies = replies

    async def call(self, operation: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        await self.session.publish(f"edge/{THING}/cmd/{operation}", json.dumps(body).encode())
        message = await asyncio.wait_for(self.replies.get(), 10)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        return message.topic.value.rsplit("/", 1)[-1], json.loads(payload)


async def _commands(op: Operator, app: StubRadioApp) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create (replayed, conflicting, invalid), join, get, list: the replies checked."""
    outcome, created = await op.call("CreateManagedThing", _body(ClientToken="c-1"))
    assert outcome == "accepted", created
    validate("managed-thing.schema.json", created, "created")
    assert created["ClientToken"] == "c-1"
    assert await op.call("CreateManagedThing", _body(ClientToken="c-1")) == (
        "accepted",
        created,
    )
    outcome, err = await op.call("CreateManagedThing", _body(ClientToken="c-1", Brand="other"))
    assert outcome == "rejected"
    validate("error.schema.json", err)
    assert err["error"]["code"] == "ConflictException"
    outcome, err = await op.call("CreateManagedThing", {"Role": "DEVICE", "X": 1})
    assert outcome == "rejected"
    assert err["error"]["code"] == "ValidationException"
    assert {f["path"] for f in err["error"]["fields"]} >= {
        "X",
        "AuthenticationMaterial",
    }

    await asyncio.wait_for(app.permit_started.wait(), 10)
    assert bytes(app.permits[0][1]).hex().upper() == LINK_KEY
    _join(app)

    # a Z-Wave code with no Z-Wave radio: FAILED with its reason
    outcome, zwave = await op.call(
        "CreateManagedThing",
        {
            "AuthenticationMaterial": f"zws2dsk:{ZWAVE_DSK}",
            "AuthenticationMaterialType": "ZWAVE_QR_BAR_CODE",
            "Role": "DEVICE",
        },
    )
    assert outcome == "accepted", zwave

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, got = await op.call("GetManagedThing", {"Identifier": created["Id"]})
        if got["ProvisioningStatus"] == "ACTIVATED":
            break
        await asyncio.sleep(0.05)
    validate("managed-thing.schema.json", got, "described")
    assert got["ProvisioningStatus"] == "ACTIVATED"
    outcome, listed = await op.call("ListManagedThings", {})
    validate("managed-thing.schema.json", listed, "listed")
    assert {i["Id"] for i in listed["Items"]} == {created["Id"], zwave["Id"]}
    outcome, err = await op.call("GetManagedThing", {"Identifier": "nope"})
    assert (outcome, err["error"]["code"]) == ("rejected", "ResourceNotFoundException")
    outcome, err = await op.call("GetManagedThing", {})
    assert (outcome, err["error"]["code"]) == ("rejected", "ValidationException")
    return created, zwave


def _service(tmp_path: Path, app: Any, holder: dict[str, ApplianceMqtt]) -> CommissioningService:
    """The commissioning service, its outbox that of ``holder["mqtt"]`` once it is there."""
    return CommissioningService(
        _config(tmp_path),
        outbox=lambda: holder["mqtt"].outbox if "mqtt" in holder else None,
        radios=_radios(app),
    )


def test_commands_and_lifecycle_events_in_order(
    tmp_path: Path, state: Path, broker: Broker, pki: Pki
) -> None:
    watcher = Watcher(broker, pki.identity(THING), [f"edge/{THING}/events"])

    async def scenario() -> tuple[str, str]:
        app = make_app()
        holder: dict[str, ApplianceMqtt] = {}
        service = _service(tmp_path, app, holder)
        mqtt = ApplianceMqtt(state, MqttSection(), operations=service.operations())
        async with mqtt, service:
            holder["mqtt"] = mqtt
            await asyncio.wait_for(mqtt.link.connected.wait(), 10)
            settings = Settings(
                Endpoint("localhost", broker.port), pki.identity(THING), client_id="operator"
            )
            async with connect(settings) as session:
                replies: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
                for suffix in ("cmd/+/accepted", "cmd/+/rejected"):
                    await session.subscribe(f"edge/{THING}/{suffix}", replies.put_nowait)
                created, zwave = await _commands(Operator(session, replies), app)
                # scan answers go out too: one rejected, one accepted (no password in either)
                scans = ScanHandler(service.things, service.reporter)
                assert not scans.handle("/dev/ttyACM0", "WIFI:T:WPA;S:;P:x;;").accepted
                assert scans.handle("/dev/ttyACM0", WIFI).accepted
            await asyncio.wait_for(mqtt.require_outbox().drained(), 10)
            zwave_status = service.things.status(zwave["Id"])
            assert zwave_status == "FAILED"
        return created["Id"], zwave["Id"]

    try:
        zigbee_id, zwave_id = asyncio.run(scenario())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = unique_events(watcher.payloads())
            if len(_statuses(events, zigbee_id)) >= 4 and len(_statuses(events, zwave_id)) >= 2:
                break
            time.sleep(0.05)
        assert _statuses(events, zigbee_id) == LIFECYCLE
        assert _statuses(events, zwave_id) == ["UNASSOCIATED", "FAILED"]
        failed = next(
            e["body"]
            for e in events
            if e["type"] == "MANAGED_THING_STATUS" and e["body"]["status"] == "FAILED"
        )
        assert failed["reason"] == "BACKEND_NOT_CONFIGURED"
        assert failed["previousStatus"] == "UNASSOCIATED"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        changes = [e["body"]["changeId"] for e in events if e["type"] == "MANAGED_THING_STATUS"]
        assert changes == sorted(changes)
        scans = [e["body"] for e in events if e["type"] == "COMMISSIONING_SCAN"]
        assert [(b["accepted"], b.get("reason")) for b in scans] == [
            (False, "QR_FIELD_MISSING"),
            (True, None),
        ]
        assert scans[1]["format"] == "wifi"
        assert scans[1]["device"] == "ssid=edge-uplink"
        _no_secrets(watcher.payloads())
    finally:
        watcher.close()


def test_broker_down_then_events_delivered_when_it_is_back(
    tmp_path: Path, state: Path, broker: Broker, pki: Pki
) -> None:
    """Changes made with no link at all, then with the broker down, all arrive in order."""
    watcher = Watcher(broker, pki.identity(THING), [f"edge/{THING}/events"])

    async def scenario() -> str:
        app = make_app()
        holder: dict[str, ApplianceMqtt] = {}
        service = _service(tmp_path, app, holder)
        async with service:
            # no operational link yet: the changes wait in managed_thing_changes
            thing_id = str(service.create(_body()).body["Id"])
            await asyncio.wait_for(app.permit_started.wait(), 10)
            assert service.status()["unreportedChanges"] == 2  # UNASSOCIATED, PRE_ASSOCIATED
            broker.stop()
            async with ApplianceMqtt(state, MqttSection()) as mqtt:
                holder["mqtt"] = mqtt
                service.reporter.wake()
                _join(app)  # DISCOVERED, ACTIVATED while the broker is away
                deadline = time.monotonic() + 10
                while service.things.status(thing_id) != "ACTIVATED":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                while service.status()["unreportedChanges"]:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                outbox = mqtt.require_outbox()
                assert outbox.pending >= 4  # durable, not sent
                broker.start()
                await asyncio.wait_for(outbox.drained(), 30)
        return thing_id

    try:
        thing_id = asyncio.run(scenario())
        events = unique_events(watcher.wait_for(4, timeout=30))
        assert _statuses(events, thing_id) == LIFECYCLE
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        _no_secrets(watcher.payloads())
    finally:
        watcher.close()
