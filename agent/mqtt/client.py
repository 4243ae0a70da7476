"""The appliance's MQTT connection: mutual TLS, MQTT 5 with 3.1.1 fallback, reconnects.

Built on aiomqtt 2.x (paho-mqtt 2.x underneath) so it shares the daemon's event loop.
:class:`Session` is one live connection; :class:`Link` keeps one alive forever, with
jittered, capped exponential backoff between attempts, a last will that marks the retained
``<prefix>status`` offline and an ``online`` status published on every connect.

The outbox publishes through :meth:`Session.publish_nowait` and learns of each PUBACK (with
its MQTT 5 reason code) through :meth:`Session.on_ack`: aiomqtt's own ``publish`` waits on
one future per message and drops the reason code, which would cost both throughput and the
"not authorised" answer of an MQTT 5 broker. QoS 1 PUBLISHes queued together leave in one
TLS write, and a PUBACK without properties is handled without paho's generic decoder
(docs/mqtt.md, Benchmark).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import AgentError, ValidationError
from agent.mqtt.quiet import QuietClient

_log = logging.getLogger(__name__)
#: paho's packet trace: one debug line per packet, silent unless asked for (it is costly).
_PAHO_LOG = logging.getLogger("agent.mqtt.paho")
_PAHO_LOG.setLevel(logging.WARNING)

#: ALPN protocol AWS IoT Core needs for MQTT with client certificates on port 443.
AWS_ALPN = "x-amzn-mqtt-ca"
Protocol = Literal["auto", "5", "3.1.1"]
#: CONNACK codes meaning "this broker does not speak that protocol version".
_UNSUPPORTED_VERSION = {1, 132}


class MqttConnectionError(AgentError):
    """The broker could not be reached, refused the connection or the link broke."""

    code = "InternalServerException"
    status_code = 503
    retryable = True
    default_reason = "MQTT_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A broker address (``host:port``)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``host:port`` (the archive's ``iotEndpoint``); the port defaults to 8883."""
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, "8883"
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:  # noqa: PLR2004
            raise ValidationError(
                f"{text!r} is not a broker endpoint (host:port)", reason="ENDPOINT_INVALID"
            )
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Identity:
    """The client certificate and key presented, and the CA the server is checked against."""

    certificate: Path
    private_key: Path
    root_ca: Path

    @classmethod
    def from_credential_set(cls, directory: Path) -> Identity:
        """The files of an installed credential set."""
        return cls(
            directory / "certificate.pem", directory / "private.key", directory / "root-ca.pem"
        )


def tls_context(identity: Identity, endpoint: Endpoint) -> ssl.SSLContext:
    """Mutual TLS: present ``identity``, check the server against its root with host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(identity.root_ca))
        context.load_cert_chain(str(identity.certificate), str(identity.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError(
            f"the MQTT credentials in {identity.certificate.parent} cannot be loaded: "
            f"{type(exc).__name__}",
            reason="CREDENTIALS_INVALID",
        ) from None
    if endpoint.port == 443:  # noqa: PLR2004 - AWS IoT: MQTT over TLS on 443 needs ALPN
        context.set_alpn_protocols([AWS_ALPN])
    return context


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt *n* waits in [d/2, d], d = min(cap, b·2ⁿ)."""

    initial: float = 0.5
    maximum: float = 60.0
    multiplier: float = 2.0

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays."""
        rnd = rng or random.Random()  # noqa: S311 - jitter, not security
        ceiling = self.initial
        while True:
            yield rnd.uniform(ceiling / 2, ceiling)
            ceiling = min(self.maximum, ceiling * self.multiplier)


@dataclass(frozen=True, slots=True)
class Settings:
    """How to reach the broker."""

    endpoint: Endpoint
    identity: Identity
    client_id: str
    protocol: Protocol = "auto"
    keepalive: int = 60
    connect_timeout: float = 10.0
    #: QoS 1 messages the outbox keeps in flight (see :class:`~agent.mqtt.outbox.Outbox`).
    inflight_window: int = 20
    #: ``<prefix>status`` gets the retained will (offline) and online status.
    status_topic: str | None = None
    backoff: Backoff = field(default_factory=Backoff)


Handler = Callable[[aiomqtt.Message], Awaitable[None] | None]
AckListener = Callable[[int, int], None]


class Session:
    """One connected client: raw QoS 1 publishing with acks, subscriptions, dispatch."""

    def __init__(self, client: aiomqtt.Client, protocol: Literal["5", "3.1.1"]) -> None:
        self._client = client
        self.protocol = protocol
        self._handlers: list[tuple[str, Handler]] = []
        self._ack_listeners: list[AckListener] = []
        self._closed = asyncio.get_running_loop().create_future()
        paho_client = client._client  # noqa: SLF001 - the publish path bypasses aiomqtt's futures
        aiomqtt_on_publish = paho_client.on_publish
        # aiomqtt waits on its own publishes only (the status message); the outbox's
        # PUBACKs skip it. Without that table every PUBACK goes through aiomqtt.
        pending: dict[int, Any] | None = getattr(client, "_pending_publishes", None)

        def on_publish(c: paho.Client, u: Any, mid: int, rc: ReasonCode, p: Properties) -> None:
            if aiomqtt_on_publish is not None and (pending is None or mid in pending):
                typing.cast("Any", aiomqtt_on_publish)(c, u, mid, rc, p)
            for listener in self._ack_listeners:
                listener(mid, rc.value)

        paho_client.on_publish = on_publish
        if not _PAHO_LOG.isEnabledFor(logging.DEBUG):
            paho_client.disable_logger()  # one call per packet otherwise, even when silent
            _lean_puback(paho_client)
        self._paho = paho_client
        # paho queues one packet per message and writes each with its own TLS record and
        # send(); publish_nowait appends a PUBLISH to the one still waiting in the queue so
        # a burst goes out in one write (see _coalesce)
        out_packets = getattr(paho_client, "_out_packet", None)
        self._out_packets: collections.deque[dict[str, Any]] | None = (
            out_packets if isinstance(out_packets, collections.deque) else None
        )

    @property
    def mqtt5(self) -> bool:
        """True when the session speaks MQTT 5."""
        return self.protocol == "5"

    @property
    def closed(self) -> asyncio.Future[None]:
        """Resolved when the connection ends."""
        return self._closed

    def on_ack(self, listener: AckListener) -> None:
        """Call ``listener(mid, reason_code)`` for every PUBACK."""
        self._ack_listeners.append(listener)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Hand one message to the client; return its message id (acks via :meth:`on_ack`)."""
        info = self._paho.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttConnectionError(f"the broker connection is gone (publish rc {info.rc})")
        if qos and self._out_packets is not None:
            _coalesce(self._out_packets)
        return info.mid

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - passed on to aiomqtt
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS ≥ 1)."""
        try:
            await self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout
            )
        except aiomqtt.MqttError as exc:
            raise MqttConnectionError(f"publishing to {topic} failed: {exc}") from exc

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler``, then subscribe."""
        self._handlers.append((topic_filter, handler))
        try:
            await self._client.subscribe(topic_filter, qos=qos)
        except aiomqtt.MqttError as exc:
            raise MqttConnectionError(f"subscribing to {topic_filter} failed: {exc}") from exc

    async def _deliver(self, handler: Handler, message: aiomqtt.Message) -> None:
        try:
            result = handler(message)
            if result is not None:
                await result
        except Exception:  # noqa: BLE001 - a faulty handler must not take the connection down
            _log.exception("the handler of %s failed", message.topic.value)

    async def run(self) -> None:
        """Dispatch incoming messages until the connection ends."""
        try:
            async for message in self._client.messages:
                for topic_filter, handler in list(self._handlers):
                    if message.topic.matches(topic_filter):
                        await self._deliver(handler, message)
        except aiomqtt.MqttError as exc:
            _log.info("MQTT connection ended: %s", exc)
        finally:
            if not self._closed.done():
                self._closed.set_result(None)


def _coalesce(out: collections.deque[dict[str, Any]]) -> None:
    """Append the PUBLISH just queued to the QoS > 0 PUBLISH before it, if one waits.

    paho writes a queued packet from ``pos`` until ``to_process`` is 0 and, for a QoS > 0
    PUBLISH, does nothing more once it is written (the PUBACK completes it), so two such
    packets and one packet holding both bytes are the same to it and to the broker. Any
    other packet (QoS 0, PINGREQ, DISCONNECT...) keeps its own entry.
    """
    if len(out) < 2:  # noqa: PLR2004 - the last two entries
        return
    last, before = out[-1], out[-2]
    data = before.get("packet")
    if (
        type(data) is bytearray
        and before.get("command", 0) & 0xF0 == paho.PUBLISH
        and before.get("qos", 0) > 0
        and last.get("command", 0) & 0xF0 == paho.PUBLISH
        and last.get("qos", 0) > 0
    ):
        data += last["packet"]
        before["to_process"] += last["to_process"]
        out.pop()


def _puback_reasons() -> dict[int, ReasonCode]:
    """One ReasonCode per code a PUBACK may carry (paho builds two per PUBACK otherwise)."""
    reasons: dict[int, ReasonCode] = {}
    for code, names in ReasonCode.names.items():
        if any(PacketTypes.PUBACK in types for types in names.values()):
            reasons[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
    return reasons


_PUBACK_REASONS = _puback_reasons()


def _lean_puback(client: paho.Client) -> None:
    """Handle the common PUBACK (no properties) without paho's generic decoder.

    paho decodes every PUBACK into fresh ReasonCode and Properties objects (a third of its
    per-message work); a PUBACK of 2 bytes (MQTT 3.1.1, or MQTT 5 success) or 3 (MQTT 5
    with a reason code) is a message id and one byte. The callback then runs exactly as
    paho runs it (``_do_on_publish``), with a shared ReasonCode per code and an empty
    Properties. Anything else (properties, an unknown code, PUBCOMP) goes to paho's own
    handler; so does every packet if this paho lacks the internals relied on here.
    """
    original = getattr(client, "_handle_pubackcomp", None)
    finish = getattr(client, "_do_on_publish", None)
    lock = getattr(client, "_out_message_mutex", None)
    if original is None or finish is None or lock is None:
        return
    if not isinstance(getattr(client, "_in_packet", None), dict):
        return
    if not isinstance(getattr(client, "_out_messages", None), dict):
        return
    no_properties = make_properties(PacketTypes.PUBACK)
    reasons = _PUBACK_REASONS

    def handle(cmd: str) -> Any:
        packet = client._in_packet["packet"]  # noqa: SLF001
        size = len(packet)
        if cmd != "PUBACK" or not (
            size == 2 or (size == 3 and client._protocol == paho.MQTTv5)  # noqa: PLR2004, SLF001
        ):
            return original(cmd)
        reason = reasons.get(packet[2] if size == 3 else 0)  # noqa: PLR2004
        if reason is None:
            return original(cmd)
        mid = (packet[0] << 8) | packet[1]
        with lock:
            if mid in client._out_messages:  # noqa: SLF001
                return finish(mid, reason, no_properties)
        return paho.MQTT_ERR_SUCCESS

    setattr(client, "_handle_pubackcomp", handle)  # noqa: B010 - mypy refuses a method assignment


def make_properties(packet_type: int) -> Properties:
    """MQTT 5 properties for one packet type."""
    # paho's Properties class carries no annotations
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def status_payload(state: Literal["online", "offline"], client_id: str) -> bytes:
    """The retained status message."""
    return json.dumps({"state": state, "clientId": client_id}, separators=(",", ":")).encode()


def _make_client(settings: Settings, protocol: Literal["5", "3.1.1"]) -> aiomqtt.Client:
    will = None
    if settings.status_topic is not None:
        will = aiomqtt.Will(
            settings.status_topic,
            status_payload("offline", settings.client_id),
            qos=1,
            retain=True,
        )
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    properties = None
    if protocol == "5":
        properties = make_properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
    return QuietClient(
        settings.endpoint.host,
        settings.endpoint.port,
        identifier=settings.client_id,
        protocol=version,
        will=will,
        clean_session=True if protocol == "3.1.1" else None,
        keepalive=settings.keepalive,
        timeout=settings.connect_timeout,
        # the outbox keeps its own window (``inflight_window``); paho's own limit would make
        # it scan every message in flight on each PUBACK
        max_inflight_messages=0,
        properties=properties,
        tls_context=tls_context(settings.identity, settings.endpoint),
        logger=_PAHO_LOG,
    )


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Session]:
    """Connect once (MQTT 5 first when ``auto``; 3.1.1 if the broker refuses 5)."""
    order: tuple[Literal["5", "3.1.1"], ...] = (
        ("5", "3.1.1") if settings.protocol == "auto" else (settings.protocol,)
    )
    last: Exception | None = None
    for protocol in order:
        client = _make_client(settings, protocol)
        try:
            await client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            last = exc
            code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
            if code in _UNSUPPORTED_VERSION:
                _log.info("broker %s refused MQTT %s; trying the next", settings.endpoint, protocol)
                continue
            break
        except aiomqtt.MqttError as exc:
            last = exc
            break
        session = Session(client, protocol)
        runner = asyncio.create_task(session.run(), name="mqtt-dispatch")
        try:
            if settings.status_topic is not None:
                await session.publish(
                    settings.status_topic,
                    status_payload("online", settings.client_id),
                    retain=True,
                )
            yield session
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await runner
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)
            if not session.closed.done():
                session.closed.set_result(None)
        return
    raise MqttConnectionError(
        f"cannot connect to the broker {settings.endpoint}: {last}", reason="MQTT_CONNECT_FAILED"
    ) from last


SessionHook = Callable[[Session], Awaitable[None]]


class Link:
    """Keeps one session alive: connect, run the hooks, wait for loss, back off, repeat."""

    def __init__(self, settings: Settings, on_connect: list[SessionHook] | None = None) -> None:
        self.settings = settings
        self._hooks: list[SessionHook] = list(on_connect or [])
        self.session: Session | None = None
        self.connected = asyncio.Event()
        self.attempts = 0

    def add_hook(self, hook: SessionHook) -> None:
        """Run ``hook(session)`` after every (re)connect."""
        self._hooks.append(hook)

    async def run(self) -> None:
        """Run forever (until cancelled)."""
        delays = self.settings.backoff.delays()
        while True:
            self.attempts += 1
            try:
                async with connect(self.settings) as session:
                    delays = self.settings.backoff.delays()  # a good connection resets backoff
                    self.session = session
                    for hook in self._hooks:
                        await hook(session)
                    self.connected.set()
                    _log.info(
                        "MQTT connected to %s (MQTT %s)", self.settings.endpoint, session.protocol
                    )
                    await session.closed
            except MqttConnectionError as exc:
                _log.info("MQTT: %s", exc.message)
            finally:
                self.connected.clear()
                self.session = None
            await asyncio.sleep(next(delays))
