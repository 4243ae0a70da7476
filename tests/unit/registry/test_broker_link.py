"""The worker's MQTT 5 packets, parsed and written without a broker."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agent.registry.broker_link import (
    BrokerLink,
    BrokerLinkError,
    LinkTarget,
    connect_packet,
    parse_properties,
    publish_packet,
    subscribe_packet,
)


def _in_loop(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False
        self.reading = True

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _link() -> tuple[BrokerLink, _Transport, list[tuple[str, bytes, list[tuple[str, str]]]]]:
    got: list[tuple[str, bytes, list[tuple[str, str]]]] = []
    link = BrokerLink(lambda t, p, u: got.append((t, p, u)))
    transport = _Transport()
    link.connection_made(transport)
    return link, transport, got


def _incoming(topic: str, payload: bytes, props: bytes) -> bytes:
    """A PUBLISH as the broker sends it, with a raw property block."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + bytes([len(props)]) + props + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def _pair(name: str, value: str) -> bytes:
    return (
        b"\x26"
        + len(name).to_bytes(2, "big")
        + name.encode()
        + len(value).to_bytes(2, "big")
        + value.encode()
    )


@_in_loop
async def test_publish_packets_round_trip_through_the_parser() -> None:
    link, _, got = _link()
    pairs = [("edge-conn", "c1"), ("edge-topic", "$aws/x/json"), ("é", "ü")]
    packet = publish_packet("edge-registry/request", b'{"a": 1}', pairs)
    link.data_received(packet)
    assert got == [("edge-registry/request", b'{"a": 1}', pairs)]


@_in_loop
async def test_packets_split_and_joined_anywhere_are_each_delivered_once() -> None:
    link, transport, got = _link()
    packets = [publish_packet("t", bytes([i]) * (i * 40), [("n", str(i))]) for i in range(6)]
    stream = b"".join(packets) + b"\xd0\x00"  # and a PINGRESP
    for cut in range(0, len(stream), 7):
        link.data_received(stream[cut : cut + 7])
    assert [(p, u) for _, p, u in got] == [
        (bytes([i]) * (i * 40), [("n", str(i))]) for i in range(6)
    ]
    assert not transport.aborted
    assert not link.closed.done()


@_in_loop
async def test_other_properties_are_skipped() -> None:
    link, _, got = _link()
    props = (
        b"\x01\x01"  # payload format indicator
        b"\x02\x00\x00\x00\x3c"  # message expiry
        b"\x03\x00\x04json"  # content type
        b"\x09\x00\x03\x00\xff\x01"  # correlation data (binary)
        b"\x0b\x81\x01" + _pair("k", "v")  # subscription identifier (varint)
    )
    link.data_received(_incoming("t", b"x", props))
    assert got == [("t", b"x", [("k", "v")])]


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x32\x07\x00\x01t\x00\x01\x00x", "QoS 1"),  # a QoS 1 delivery
        (b"\x30\x05\x00\x01t\x01\x7f", "unknown property"),
        (b"\x30\x05\x00\x09t\x00x", "malformed"),  # topic length beyond the packet
        (b"\x30\x06\x00\x01t\x09\x26x", "malformed"),  # property block beyond the packet
        (b"\xe0\x01\x8e", "disconnected"),
        (b"\x50\x02\x00\x01", "unexpected packet"),
        (b"\x30\xff\xff\xff\xff\x01", "malformed packet length"),
    ],
)
@_in_loop
async def test_anything_outside_the_subset_ends_the_link(packet: bytes, reason: str) -> None:
    link, transport, got = _link()
    link.data_received(packet)
    assert transport.aborted
    assert got == []
    with pytest.raises(BrokerLinkError, match=reason):
        await link.closed


@_in_loop
async def test_a_refused_connack_fails_the_handshake() -> None:
    link, transport, _ = _link()
    target = LinkTarget("sock", 0, True, None, "edge-registry", "pw", "cid")
    handshake = asyncio.ensure_future(link._handshake(target))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written == [connect_packet(target)]
    link.data_received(b"\x20\x03\x00\x87\x00")  # not authorized
    with pytest.raises(BrokerLinkError, match="refused the connection"):
        await handshake


@_in_loop
async def test_replies_of_one_loop_iteration_share_one_write() -> None:
    link, transport, _ = _link()
    for i in range(5):
        link.publish("edge-registry/reply", b"%d" % i, [("edge-conn", str(i))])
    assert transport.written == []
    await asyncio.sleep(0)
    assert transport.written == [
        b"".join(
            publish_packet("edge-registry/reply", b"%d" % i, [("edge-conn", str(i))])
            for i in range(5)
        )
    ]


@_in_loop
async def test_subscribe_waits_for_its_suback() -> None:
    link, transport, _ = _link()
    waiting = asyncio.ensure_future(link.subscribe("$share/registry/edge-registry/request"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written == [subscribe_packet(1, "$share/registry/edge-registry/request")]
    assert not waiting.done()
    link.data_received(b"\x90\x04\x00\x01\x00\x00")
    await waiting
    refused = asyncio.ensure_future(link.subscribe("other"))
    await asyncio.sleep(0)
    link.data_received(b"\x90\x04\x00\x02\x00\x87")
    with pytest.raises(BrokerLinkError, match="refused the subscription"):
        await refused


def test_property_blocks_must_end_exactly() -> None:
    assert parse_properties(_pair("a", "b"), 0, len(_pair("a", "b"))) == [("a", "b")]
    with pytest.raises(BrokerLinkError):
        parse_properties(b"\x02\x00\x00\x00\x3c", 0, 3)
