"""Commands over a real mosquitto: each operation, malformed, unknown, replayed ClientToken."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import AgentConfig, MqttSection, RegistrySection
from agent.mqtt.agent_link import ApplianceMqtt
from agent.mqtt.client import Endpoint, Session, Settings, connect, make_properties
from agent.mqtt.operations import describe_device, registration_tasks
from agent.registry.bulk import BulkTasks
from agent.registry.wiring import bulk_registrar_factory
from agent.store import Store
from tests.helpers.identity import install_identity
from tests.helpers.mosquitto import Broker, Pki
from tests.integration.mqtt.conftest import validate

pytestmark = pytest.mark.mqtt

THING = "hub-cmd"
ROLE = "arn:aws:iam::123456789012:role/Provisioning"
TEMPLATE = json.dumps(
    {
        "Parameters": {"ThingName": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}
        },
    }
)


@dataclass
class Appliance:
    state: Path
    bulk_root: Path
    config: AgentConfig


@pytest.fixture
def appliance(tmp_path: Path, pki: Pki, broker: Broker) -> Appliance:
    state = tmp_path / "state"
    install_identity(state, pki, broker, THING)
    bulk_root = tmp_path / "bulk"
    (bulk_root / "factory").mkdir(parents=True)
    (bulk_root / "factory" / "devices.jsonl").write_text(
        "".join(json.dumps({"ThingName": f"dev-{i}"}) + "\n" for i in range(20))
    )
    config = AgentConfig(
        registry=RegistrySection(
            ca_dir=tmp_path / "no-ca", database=tmp_path / "registry.db", bulk_root=bulk_root
        )
    )
    return Appliance(state, bulk_root, config)


def _operations(app: Appliance) -> dict[str, Any]:
    def open_tasks() -> tuple[BulkTasks, Store]:
        store = Store(app.config.registry.database)
        return (
            BulkTasks(
                store,
                bulk_root=app.bulk_root,
                reports_dir=app.state / "bulk",
                registrar_factory=bulk_registrar_factory(app.config, store),
                line_savepoints=False,
            ),
            store,
        )

    status_store = Store(app.state / "agent.db")
    return {
        "DescribeDevice": describe_device(app.state, status_store, lambda: "SUCCEEDED"),
        **registration_tasks(open_tasks),
    }


@dataclass
class Operator:
    session: Session
    replies: asyncio.Queue[aiomqtt.Message]
    events: list[aiomqtt.Message]
    calls: int = 0

    async def call(
        self, operation: str, body: bytes | dict[str, Any], *, properties: Any = None
    ) -> tuple[str, dict[str, Any], aiomqtt.Message]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.calls += 1
        await self.session.publish(f"edge/{THING}/cmd/{operation}", payload, properties=properties)
        message = await asyncio.wait_for(self.replies.get(), 10)
        data = json.loads(message.payload if isinstance(message.payload, bytes) else b"")
        return message.topic.value, data, message


@contextlib.asynccontextmanager
async def running(app: Appliance, broker: Broker, pki: Pki) -> AsyncIterator[Operator]:
    async with ApplianceMqtt(app.state, MqttSection(), operations=_operations(app)) as mqtt:
        await asyncio.wait_for(mqtt.link.connected.wait(), 10)
        settings = Settings(
            Endpoint("localhost", broker.port), pki.identity(THING), client_id="operator"
        )
        async with connect(settings) as session:
            queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
            for suffix in ("cmd/+/accepted", "cmd/+/rejected", "replies/#"):
                await session.subscribe(f"edge/{THING}/{suffix}", queue.put_nowait)
            events: list[aiomqtt.Message] = []
            await session.subscribe(f"edge/{THING}/events", events.append)
            operator = Operator(session, queue, events)
            yield operator
            outbox = mqtt.require_outbox()
            await asyncio.wait_for(outbox.drained(), 10)
            deadline = time.monotonic() + 10
            while len(events) < operator.calls and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the events arrive on the operator's own session


async def _bad_requests(op: Operator) -> None:
    """Malformed, unknown and refused requests: rejected with the error shape."""
    bad: list[tuple[str, bytes | dict[str, Any], str, str | None]] = [
        ("DescribeDevice", b"{not json", "InvalidRequestException", "MALFORMED_JSON"),
        ("DescribeDevice", b"[1,2]", "InvalidRequestException", "MALFORMED_REQUEST"),
        ("DescribeDevice", b'{"a":1,"a":2}', "InvalidRequestException", "MALFORMED_JSON"),
        ("DescribeDevice", {"Bogus": 1}, "InvalidRequestException", "UNKNOWN_FIELD"),
        (
            "DescribeDevice",
            {"ClientToken": "bad token!"},
            "ValidationException",
            "FIELD_VALIDATION_FAILED",
        ),
        ("RebootEverything", {}, "ResourceNotFoundException", "OPERATION_UNKNOWN"),
        (
            "StartThingRegistrationTask",
            {"inputFileBucket": "x"},
            "InvalidRequestException",
            None,
        ),
        (
            "DescribeThingRegistrationTask",
            {"taskId": "nope"},
            "ResourceNotFoundException",
            None,
        ),
    ]
    for operation, body, code, reason in bad:
        topic, err, _ = await op.call(operation, body)
        assert topic == f"edge/{THING}/cmd/{operation}/rejected", (operation, err)
        validate("error.schema.json", err)
        assert err["error"]["code"] == code
        if reason is not None:
            assert err["error"]["reason"] == reason


def _check_results(op: Operator) -> None:
    """One COMMAND_RESULT event per reply, replays included (after the outbox drained)."""
    results = [
        validate("event.schema.json", m.payload if isinstance(m.payload, bytes) else b"")
        for m in op.events
    ]
    assert len(results) == op.calls
    assert {r["type"] for r in results} == {"COMMAND_RESULT"}
    rejected = [r["body"] for r in results if r["body"]["outcome"] == "rejected"]
    unknown = {
        "operation": "RebootEverything",
        "outcome": "rejected",
        "reason": "OPERATION_UNKNOWN",
    }
    assert unknown in rejected


def test_each_operation_and_bad_requests(appliance: Appliance, broker: Broker, pki: Pki) -> None:
    async def scenario() -> None:
        async with running(appliance, broker, pki) as op:
            topic, data, _ = await op.call("DescribeDevice", {})
            assert topic == f"edge/{THING}/cmd/DescribeDevice/accepted"
            validate("describe-device.schema.json", data)
            assert data["Name"] == THING
            assert data["Status"] == "SUCCEEDED"
            assert data["NetworkingConfiguration"] is None

            start = {
                "inputFileBucket": "factory",
                "inputFileKey": "devices.jsonl",
                "roleArn": ROLE,
                "templateBody": TEMPLATE,
                "ClientToken": "token-1",
            }
            topic, started, _ = await op.call("StartThingRegistrationTask", start)
            assert topic.endswith("/StartThingRegistrationTask/accepted"), started
            validate("registration-task.schema.json", started)
            task_id = started["taskId"]

            # the replayed token gets the same reply and starts nothing new
            _, again, _ = await op.call("StartThingRegistrationTask", start)
            assert again == started
            # the same token with other parameters is a conflict
            topic, conflict, _ = await op.call(
                "StartThingRegistrationTask", {**start, "inputFileKey": "other.jsonl"}
            )
            assert topic.endswith("/rejected")
            validate("error.schema.json", conflict)
            assert conflict["error"]["code"] == "ConflictException"

            deadline = time.monotonic() + 20
            while True:
                topic, described, _ = await op.call(
                    "DescribeThingRegistrationTask", {"taskId": task_id}
                )
                assert topic.endswith("/accepted"), described
                if described["status"] == "Completed" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            validate("registration-task.schema.json", described)
            assert described["status"] == "Completed"
            assert described["successCount"] == 20

            await _bad_requests(op)

            # MQTT 5: response topic and correlation data are honoured
            props = make_properties(3)  # PUBLISH
            props.ResponseTopic = f"edge/{THING}/replies/op-1"
            props.CorrelationData = b"corr-42"
            topic, data, message = await op.call("DescribeDevice", {}, properties=props)
            assert topic == f"edge/{THING}/replies/op-1"
            assert data["Name"] == THING
            received: Any = message.properties  # paho's Properties sets attributes dynamically
            assert received is not None
            assert received.CorrelationData == b"corr-42"
            assert ("outcome", "accepted") in received.UserProperty
        _check_results(op)

    asyncio.run(scenario())
    # exactly one task was recorded although the start was sent three times
    with Store(appliance.config.registry.database) as store:
        count = store.db.execute("SELECT COUNT(*) FROM bulk_tasks").fetchone()[0]
    assert count == 1
