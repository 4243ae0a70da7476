"""The registry worker's MQTT 5 connection to the broker: only what the worker uses.

The worker speaks to one broker over a Unix socket (or TCP, optionally TLS) with a narrow
subset of MQTT 5: CONNECT with a username and password, one SUBSCRIBE at QoS 0, incoming
QoS 0 PUBLISH packets (requests, with user properties), outgoing QoS 0 PUBLISH packets
(replies, with user properties), PINGREQ for keep-alive and DISCONNECT. A general-purpose
client (paho under aiomqtt) spends far more CPU per message than the registry spends
answering it; this one parses packets straight off the socket in the event loop and joins
the replies written in one loop iteration into one socket write.

Anything outside that subset from the broker (a QoS 1 delivery, an unknown packet type, a
malformed packet, a DISCONNECT) ends the connection with :class:`BrokerLinkError`, which the
worker treats as a lost broker.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass

UserProperties = list[tuple[str, str]]
#: Called for each incoming PUBLISH: topic, payload, user properties.
OnMessage = Callable[[str, bytes, UserProperties], None]

_CONNACK = 2
_PUBLISH = 3
_SUBACK = 9
_PINGRESP = 13
_DISCONNECT = 14
_USER_PROPERTY = 0x26
_MAX_PACKET = 1 << 24

# MQTT 5 property identifiers by value type (§2.2.2.2), to skip the ones the worker ignores.
_BYTE_PROPS = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_TWO_BYTE_PROPS = frozenset({0x13, 0x21, 0x22, 0x23})
_FOUR_BYTE_PROPS = frozenset({0x02, 0x11, 0x18, 0x27})
_STRING_PROPS = frozenset({0x03, 0x08, 0x12, 0x15, 0x16, 0x09, 0x1A, 0x1C, 0x1F})
_VARINT_PROPS = frozenset({0x0B})


class BrokerLinkError(Exception):
    """The connection to the broker failed, was refused or was lost."""


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """Where and as whom to connect.

    Attributes:
        host: the Unix socket path, or the TCP host name.
        port: the TCP port (unused for a Unix socket).
        unix: connect to the Unix socket ``host``.
        ssl_context: TLS for a TCP connection (None: plain TCP).
        username: the MQTT username.
        password: the MQTT password.
        client_id: the MQTT client id.
        keepalive: the keep-alive interval in seconds.
    """

    host: str
    port: int
    unix: bool
    ssl_context: ssl.SSLContext | None
    username: str
    password: str
    client_id: str
    keepalive: int = 30


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _read_varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """A variable byte integer that must end before ``end``."""
    value, pos = _read_varint_partial(data, pos, end)
    if value < 0:
        raise BrokerLinkError("the broker sent a malformed packet")
    return value, pos


def _read_string(data: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise BrokerLinkError("the broker sent a malformed packet")
    size = int.from_bytes(data[pos : pos + 2], "big")
    pos += 2
    if pos + size > end:
        raise BrokerLinkError("the broker sent a malformed packet")
    try:
        return data[pos : pos + size].decode("utf-8"), pos + size
    except UnicodeDecodeError:
        raise BrokerLinkError("the broker sent a malformed string") from None


def parse_properties(data: bytes, pos: int, end: int) -> UserProperties:
    """The user properties of a property block ``data[pos:end]``; the others are skipped.

    Raises:
        BrokerLinkError: the block is malformed.
    """
    pairs: UserProperties = []
    while pos < end:
        ident = data[pos]
        pos += 1
        if ident == _USER_PROPERTY:
            name, pos = _read_string(data, pos, end)
            value, pos = _read_string(data, pos, end)
            pairs.append((name, value))
        elif ident in _STRING_PROPS:  # strings and binary data: a two-byte length first
            if pos + 2 > end:
                raise BrokerLinkError("the broker sent a malformed property block")
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        elif ident in _BYTE_PROPS:
            pos += 1
        elif ident in _TWO_BYTE_PROPS:
            pos += 2
        elif ident in _FOUR_BYTE_PROPS:
            pos += 4
        elif ident in _VARINT_PROPS:
            _, pos = _read_varint(data, pos, end)
        else:
            raise BrokerLinkError(f"the broker sent an unknown property 0x{ident:02x}")
    if pos != end:
        raise BrokerLinkError("the broker sent a malformed property block")
    return pairs


def connect_packet(target: LinkTarget) -> bytes:
    """CONNECT: MQTT 5, clean start, username and password, no properties."""
    body = (
        _string("MQTT")
        + b"\x05"
        + b"\xc2"  # username, password, clean start
        + target.keepalive.to_bytes(2, "big")
        + b"\x00"  # no properties
        + _string(target.client_id)
        + _string(target.username)
        + _string(target.password)
    )
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, user_properties: UserProperties) -> bytes:
    """A QoS 0 PUBLISH with user properties."""
    props = b"".join(b"\x26" + _string(name) + _string(value) for name, value in user_properties)
    body = _string(topic) + _varint(len(props)) + props
    return b"\x30" + _varint(len(body) + len(payload)) + body + payload


def subscribe_packet(packet_id: int, topic_filter: str) -> bytes:
    """SUBSCRIBE of one filter at QoS 0."""
    body = packet_id.to_bytes(2, "big") + b"\x00" + _string(topic_filter) + b"\x00"
    return b"\x82" + _varint(len(body)) + body


class BrokerLink(asyncio.Protocol):
    """One MQTT 5 connection; use :func:`open_link`.

    Args:
        on_message: called in the event loop for every incoming PUBLISH.
    """

    def __init__(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._connack: asyncio.Future[None] | None = None
        self._suback: dict[int, asyncio.Future[None]] = {}
        self._next_id = 1
        self._pinger: asyncio.TimerHandle | None = None
        self._keepalive = 30
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read by whoever waits on it; marked retrieved so an unwatched loss logs nothing.
        self.closed.add_done_callback(lambda f: f.cancelled() or f.exception())

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a stream transport
        self._transport = transport

    def data_received(self, data: bytes) -> None:  # noqa: D102
        buffer = self._buffer
        buffer += data
        pos = 0
        size = len(buffer)
        try:
            while pos + 2 <= size:
                first = buffer[pos]
                length, start = _read_varint_partial(buffer, pos + 1, size)
                if length < 0:
                    break
                if length > _MAX_PACKET:
                    raise _oversize()
                end = start + length
                if end > size:
                    break
                self._packet(first, bytes(buffer[start:end]))
                pos = end
        except BrokerLinkError as exc:
            self._fail(exc)
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        detail = f": {exc}" if exc else ""
        self._fail(BrokerLinkError(f"the broker closed the connection{detail}"))

    # --- packets -------------------------------------------------------------------------

    def _packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind != _PUBLISH:
            self._control(kind, body)
            return
        if first & 0x06:
            raise BrokerLinkError("the broker sent a QoS 1 or 2 message to a QoS 0 filter")
        topic, pos = _read_string(body, 0, len(body))
        props_len, pos = _read_varint(body, pos, len(body))
        end = pos + props_len
        if end > len(body):
            raise BrokerLinkError("the broker sent a malformed PUBLISH")
        pairs = parse_properties(body, pos, end) if props_len else []
        self._on_message(topic, body[end:], pairs)

    def _control(self, kind: int, body: bytes) -> None:
        if kind == _CONNACK:
            if len(body) < 2:  # noqa: PLR2004
                raise BrokerLinkError("the broker sent a malformed CONNACK")
            if body[1] != 0:
                raise BrokerLinkError(f"the broker refused the connection (reason {body[1]})")
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(None)
        elif kind == _SUBACK:
            packet_id = int.from_bytes(body[:2], "big")
            props_len, pos = _read_varint(body, 2, len(body))
            codes = body[pos + props_len :]
            waiter = self._suback.pop(packet_id, None)
            if waiter is not None and not waiter.done():
                if not codes or codes[0] >= 0x80:  # noqa: PLR2004
                    waiter.set_exception(BrokerLinkError("the broker refused the subscription"))
                else:
                    waiter.set_result(None)
        elif kind == _DISCONNECT:
            reason = body[0] if body else 0
            raise BrokerLinkError(f"the broker disconnected the worker (reason {reason})")
        elif kind != _PINGRESP:
            raise BrokerLinkError(f"the broker sent an unexpected packet type {kind}")

    def _fail(self, exc: BrokerLinkError) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        for waiter in [self._connack, *self._suback.values()]:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        self._suback.clear()
        if not self.closed.done():
            self.closed.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    # --- writing -------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """Queue a packet; the packets of one loop iteration go out in one write."""
        if self.closed.done():
            return
        self._pending.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or self.closed.done() or not self._pending:
            self._pending.clear()
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._transport.write(data)

    def publish(self, topic: str, payload: bytes, user_properties: UserProperties) -> None:
        """Send a QoS 0 PUBLISH (dropped if the connection is gone, as QoS 0 allows)."""
        self.send(publish_packet(topic, payload, user_properties))

    async def _handshake(self, target: LinkTarget) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._keepalive = target.keepalive
        self.send(connect_packet(target))
        await self._connack
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self._pinger = loop.call_later(self._keepalive / 2, self._ping)

    def _ping(self) -> None:
        self.send(b"\xc0\x00")
        self._schedule_ping()

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 0 and wait for the SUBACK.

        Raises:
            BrokerLinkError: refused, or the connection was lost.
        """
        packet_id = self._next_id
        self._next_id = packet_id % 65535 + 1
        waiter = asyncio.get_running_loop().create_future()
        self._suback[packet_id] = waiter
        self.send(subscribe_packet(packet_id, topic_filter))
        await waiter

    def pause_reading(self) -> None:
        """Stop reading from the broker (enough requests in hand)."""
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the broker again."""
        if self._transport is not None and not self._transport.is_reading():
            self._transport.resume_reading()

    def close(self) -> None:
        """Send DISCONNECT and close the connection."""
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if self._transport is not None and not self.closed.done():
            self._flush()
            self._transport.write(b"\xe0\x00")
            self._transport.close()
        if not self.closed.done():
            self.closed.set_result(None)


def _oversize() -> BrokerLinkError:
    return BrokerLinkError("the broker sent an oversize packet")


def _read_varint_partial(
    data: bytes | bytearray | memoryview, pos: int, end: int
) -> tuple[int, int]:
    """A variable byte integer (at most four bytes); (-1, pos) when more bytes are needed."""
    value, shift = 0, 0
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:  # noqa: PLR2004
            raise BrokerLinkError("the broker sent a malformed packet length")
    return -1, pos


async def open_link(
    target: LinkTarget, on_message: OnMessage, *, within: float = 10.0
) -> BrokerLink:
    """Connect, send CONNECT and wait for a successful CONNACK, all ``within`` seconds.

    Raises:
        BrokerLinkError: the broker cannot be reached or refused the connection.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            if target.unix:
                _, link = await loop.create_unix_connection(
                    lambda: BrokerLink(on_message), target.host
                )
            else:
                _, link = await loop.create_connection(
                    lambda: BrokerLink(on_message),
                    target.host,
                    target.port,
                    ssl=target.ssl_context,
                )
            await link._handshake(target)  # noqa: SLF001 - the second half of opening
    except (OSError, TimeoutError) as exc:
        raise BrokerLinkError(f"cannot connect to the broker: {exc or 'timed out'}") from None
    return link
