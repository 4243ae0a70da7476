"""The outbox without a broker: durability, seq across restarts, bounds, alarms, schemas."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import ssl
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from referencing import Registry, Resource

from agent.config import parse_config
from agent.errors import ConfigError, StateError, ValidationError
from agent.mqtt.client import (
    AWS_ALPN,
    Backoff,
    Endpoint,
    Identity,
    _coalesce,
    _lean_puback,
    tls_context,
)
from agent.mqtt.events import (
    SCHEMA_FILES,
    encode,
    load_schema,
    make_encoded,
    new_event_id,
    utc_timestamp,
)
from agent.mqtt.outbox import Limits, open_outbox, seq_runs
from agent.store import Store


def _validator() -> jsonschema.Draft202012Validator:
    resources = []
    for name in SCHEMA_FILES:
        schema = load_schema(name)
        resources.append((name, Resource.from_contents(schema)))
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry: Registry[Any] = Registry().with_resources(resources)
    return jsonschema.Draft202012Validator(load_schema("event.schema.json"), registry=registry)


def _rows(state: Path) -> list[dict[str, Any]]:
    with Store(state / "agent.db") as store:
        return [
            json.loads(r[0])
            for r in store.db.execute("SELECT payload FROM mqtt_outbox ORDER BY seq")
        ]


def test_publish_returns_only_when_committed_and_seq_survives_restarts(tmp_path: Path) -> None:
    async def first() -> list[dict[str, Any]]:
        outbox = await open_outbox(tmp_path, thing_name="hub", topic="edge/hub/events")
        events = list(
            await asyncio.gather(
                *(outbox.publish("LOG", {"level": "info", "message": str(i)}) for i in range(300))
            )
        )
        # committed before the callers were answered: another connection sees every row
        assert len(_rows(tmp_path)) == 300
        await outbox.close()
        return events

    events = asyncio.run(first())
    assert [e["seq"] for e in events] == list(range(1, 301))
    validator = _validator()
    for event in _rows(tmp_path):
        validator.validate(event)
    assert len({e["eventId"] for e in events}) == 300

    async def second() -> dict[str, Any]:
        outbox = await open_outbox(tmp_path, thing_name="hub", topic="edge/hub/events")
        assert outbox.pending == 300  # still unsent: nothing was acknowledged
        event = await outbox.publish("RUN_OUTCOME", {"runId": "r", "status": "SUCCEEDED"})
        await outbox.close()
        return event

    assert asyncio.run(second())["seq"] == 301


def test_group_commit_batches_concurrent_callers(tmp_path: Path) -> None:
    async def scenario() -> int:
        outbox = await open_outbox(tmp_path, thing_name="hub", topic="edge/hub/events")
        await asyncio.gather(
            *(outbox.submit("LOG", {"level": "info", "message": str(i)}) for i in range(2000))
        )
        commits = outbox.stats.commits
        await outbox.close()
        return commits

    assert asyncio.run(scenario()) < 50  # far fewer transactions than events


def test_bounds_drop_oldest_low_priority_and_count_them(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        outbox = await open_outbox(
            tmp_path,
            thing_name="hub",
            topic="edge/hub/events",
            limits=Limits(max_events=50, max_bytes=1 << 20),
        )
        await outbox.publish("RUN_OUTCOME", {"runId": "a", "status": "FAILED"})
        for i in range(120):
            await outbox.publish("LOG", {"level": "info", "message": str(i)})
        await outbox.publish("RUN_OUTCOME", {"runId": "b", "status": "ERROR"})
        snap = outbox.snapshot()
        await outbox.close()
        return snap

    snap = asyncio.run(scenario())
    rows = _rows(tmp_path)
    types = [r["type"] for r in rows]
    assert [r["body"]["runId"] for r in rows if r["type"] == "RUN_OUTCOME"] == ["a", "b"]
    assert types.count("OUTBOX_HIGH_WATER") == 1
    assert types.count("OUTBOX_DROPPED") == 1  # one coalesced, unsent counter
    dropped = next(r["body"] for r in rows if r["type"] == "OUTBOX_DROPPED")
    logs = [int(r["body"]["message"]) for r in rows if r["type"] == "LOG"]
    assert logs == list(range(120 - len(logs), 120))  # the newest survive, in order
    assert dropped["totalDropped"] == 120 - len(logs) == snap["dropped"]
    assert len(rows) <= 50 + 3
    validator = _validator()
    for row in rows:
        validator.validate(row)


def test_byte_bound(tmp_path: Path) -> None:
    async def scenario() -> None:
        outbox = await open_outbox(
            tmp_path,
            thing_name="hub",
            topic="edge/hub/events",
            limits=Limits(max_events=10_000, max_bytes=8192),
        )
        for _ in range(200):
            await outbox.publish("LOG", {"level": "info", "message": "x" * 200})
        assert outbox.pending_bytes <= 8192 + 2048  # plus the never-dropped alarm events
        await outbox.close()

    asyncio.run(scenario())


def test_unknown_type_and_closed_outbox_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        outbox = await open_outbox(tmp_path, thing_name="hub", topic="edge/hub/events")
        with pytest.raises(ValidationError) as info:
            await outbox.publish("NOPE", {})
        assert info.value.reason == "EVENT_TYPE_UNKNOWN"
        await outbox.close()
        with pytest.raises(StateError):
            await outbox.publish("LOG", {"level": "info", "message": "late"})

    asyncio.run(scenario())
    assert _rows(tmp_path) == []


def test_event_ids_and_timestamps() -> None:
    for _ in range(200):
        value = uuid.UUID(new_event_id())
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
    stamp = utc_timestamp()
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-01-01T00:00:00.000Z")


def test_event_ids_are_canonical_and_distinct() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i for i in ids)  # lower-case canonical text


@pytest.mark.parametrize(
    "body",
    [
        {"level": "info", "message": "reading 00000001"},
        {},
        {"message": 'é "quoted" \\ \u2028 \x01 \U0001f600', "n": [1, 2.5, None, True]},
        {"nested": {"a": {"b": []}}, 7: "int key"},
    ],
)
def test_envelope_template_is_byte_for_byte_the_encoded_event(body: dict[Any, Any]) -> None:
    event, payload = make_encoded("LOG", body, seq=42, thing_name='hub-ü"x')
    assert payload == encode(event)
    assert json.loads(payload) == json.loads(encode(event))
    assert list(event) == ["eventId", "seq", "time", "type", "thingName", "body"]
    assert event["seq"] == 42
    assert event["thingName"] == 'hub-ü"x'


def test_envelope_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        make_encoded("LOG", {"x": object()}, seq=1, thing_name="hub")


def test_seq_runs() -> None:
    assert seq_runs([]) == []
    assert seq_runs([5]) == [(5, 5)]
    assert seq_runs([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert seq_runs([10, 3, 2, 11, 1]) == [(1, 3), (10, 11)]  # acks and drops mixed


def _packet(command: int, qos: int, data: bytes) -> dict[str, Any]:
    return {
        "command": command,
        "mid": 1,
        "qos": qos,
        "pos": 0,
        "to_process": len(data),
        "packet": bytearray(data),
        "info": None,
    }


def test_coalesce_joins_only_qos_publishes() -> None:
    publish, pingreq = 0x30, 0xC0
    out = collections.deque([_packet(publish | 2, 1, b"first")])
    out[0]["pos"], out[0]["to_process"] = 2, 3  # partly written already
    out.append(_packet(publish | 2, 1, b"second"))
    _coalesce(out)
    assert len(out) == 1
    assert out[0]["packet"] == bytearray(b"firstsecond")
    assert (out[0]["pos"], out[0]["to_process"]) == (2, 9)  # the rest still to write
    out.append(_packet(pingreq, 0, b"ping"))
    _coalesce(out)
    out.append(_packet(publish | 2, 1, b"third"))
    _coalesce(out)
    out.append(_packet(publish, 0, b"qos0"))  # QoS 0: paho reports it once written
    _coalesce(out)
    assert [bytes(p["packet"]) for p in out] == [b"firstsecond", b"ping", b"third", b"qos0"]


def test_lean_puback_answers_as_paho_does() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    got: list[tuple[int, int, object]] = []

    def on_publish(_c: object, _u: object, mid: int, rc: Any, props: Any) -> None:
        got.append((mid, rc.value, getattr(props, "ReasonString", None)))

    client.on_publish = on_publish
    _lean_puback(client)
    assert "_handle_pubackcomp" in vars(client)  # installed on this paho
    for mid in (1, 2, 3):
        message = paho.MQTTMessage(mid, b"t")
        message.qos = 1
        client._out_messages[mid] = message

    def feed(packet: bytes) -> None:
        client._in_packet["command"] = 0x40  # PUBACK
        client._in_packet["packet"] = bytearray(packet)
        client._packet_handle()

    feed(b"\x00\x01")  # MQTT 5 success, short form
    feed(b"\x00\x02\x87")  # 135: not authorised
    feed(b"\x00\x03\x87\x05\x1f\x00\x02no")  # with a reason string: paho's own decoder
    feed(b"\x00\x09")  # not in flight: no callback
    assert got == [(1, 0, None), (2, 135, None), (3, 135, "no")]
    assert not client._out_messages


def test_backoff_is_jittered_capped_and_growing() -> None:
    delays = Backoff(0.5, 8.0).delays(random.Random(7))  # noqa: S311
    got = [next(delays) for _ in range(12)]
    ceilings = [min(8.0, 0.5 * 2**i) for i in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(got, ceilings, strict=True))
    assert max(got) <= 8.0
    assert len(set(got)) == len(got)


def test_endpoint_parse() -> None:
    assert Endpoint.parse("a.example:443") == Endpoint("a.example", 443)
    assert Endpoint.parse("broker") == Endpoint("broker", 8883)
    for bad in ("", ":1", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValidationError):
            Endpoint.parse(bad)


def test_tls_context_checks_the_server_and_uses_alpn_on_443(tmp_path: Path) -> None:
    from tests.helpers.mosquitto import Pki

    pki = Pki(tmp_path / "pki")
    identity = pki.identity("hub")
    context = tls_context(identity, Endpoint("x.iot.eu-west-1.amazonaws.com", 443))
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    plain = tls_context(identity, Endpoint("localhost", 8883))
    assert plain.check_hostname
    assert AWS_ALPN == "x-amzn-mqtt-ca"
    with pytest.raises(ValidationError) as info:
        tls_context(
            Identity(tmp_path / "none.pem", tmp_path / "none.key", pki.ca_path), Endpoint("h", 1)
        )
    assert info.value.reason == "CREDENTIALS_INVALID"


def test_mqtt_config_section() -> None:
    config = parse_config(
        '[mqtt]\nprotocol = "3.1.1"\ninflight_window = 50\nfleet_format = "cbor"\n'
    )
    assert config.mqtt.protocol == "3.1.1"
    assert config.mqtt.inflight_window == 50
    with pytest.raises(ConfigError) as info:
        parse_config('[mqtt]\nprotocol = "4"\nbogus = 1\ninflight_window = 0\n')
    assert {f.path for f in info.value.fields} == {
        "mqtt.protocol",
        "mqtt.bogus",
        "mqtt.inflight_window",
    }
