"""The registry worker of the fleet-provisioning endpoint.

An MQTT 5 client (aiomqtt) of the broker that loads ``edge_registry_plugin``. It takes the
plugin's internal request topic through a shared subscription
(``$share/registry/edge-registry/request``), so several workers share the load, answers each
request through :class:`~agent.registry.fleet.FleetProvisioning` and publishes the answer
on the internal reply topic with the connection id the plugin gave; the plugin delivers it to
that one connection. Requests are answered in a small thread pool, each thread with its own
database connection, so a slow pre-provisioning hook does not hold up other devices.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import RegistrySection
from agent.errors import ConfigError
from agent.registry.endpoint_trust import load_endpoint_trust
from agent.registry.fleet import (
    FleetProvisioning,
    FleetReply,
    FleetRequest,
    Format,
    RejectedError,
    encode,
)
from agent.registry.group_commit import GroupCommitter
from agent.registry.register import Registry
from agent.registry.signing import CsrPolicy
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import validate_template_body
from agent.registry.templates_store import TemplateStore
from agent.store import Store

_log = logging.getLogger(__name__)

REQUEST_TOPIC = "edge-registry/request"
REPLY_TOPIC = "edge-registry/reply"
SHARED_REQUEST = "$share/registry/" + REQUEST_TOPIC
REGISTRY_USERNAME = "edge-registry"
PROP_CONN = "edge-conn"
PROP_TOPIC = "edge-topic"
PROP_CLAIM_SHA256 = "edge-claim-sha256"
PROP_CLAIM_PEM = "edge-claim-pem"
PROP_CLIENT_ID = "edge-client-id"


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the worker connects: a Unix socket or a TCP (optionally TLS) address."""

    host: str
    port: int = 0
    transport: str = "unix"
    tls: bool = False
    username: str = REGISTRY_USERNAME

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``unix:///path``, ``mqtt://[user@]host:port`` or ``mqtts://[user@]host:port``.

        Raises:
            ConfigError: not one of these forms.
        """
        parsed = urllib.parse.urlsplit(url)
        username = urllib.parse.unquote(parsed.username or REGISTRY_USERNAME)
        if parsed.scheme == "unix" and parsed.path:
            return cls(parsed.path, 0, "unix", tls=False, username=username)
        if parsed.scheme in {"mqtt", "mqtts"} and parsed.hostname:
            default = 8883 if parsed.scheme == "mqtts" else 1883
            try:
                port = parsed.port or default
            except ValueError:
                port = -1
            if 0 < port < 65536:  # noqa: PLR2004
                return cls(
                    parsed.hostname, port, "tcp", tls=parsed.scheme == "mqtts", username=username
                )
        raise ConfigError(
            f"--broker must be unix:///PATH, mqtt://HOST:PORT or mqtts://HOST:PORT, not {url!r}",
            reason="BROKER_URL_INVALID",
        )


def request_from(message: aiomqtt.Message) -> tuple[str, FleetRequest] | None:
    """The connection id and request carried by a forwarded message (None if incomplete)."""
    props = message.properties
    pairs = dict(getattr(props, "UserProperty", []) or []) if props is not None else {}
    conn = pairs.get(PROP_CONN)
    topic = pairs.get(PROP_TOPIC)
    claim = pairs.get(PROP_CLAIM_SHA256)
    pem = pairs.get(PROP_CLAIM_PEM)
    if not (conn and topic and claim and pem):
        return None
    payload = message.payload
    data = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
    return conn, FleetRequest(topic, bytes(data), claim, pem, pairs.get(PROP_CLIENT_ID, ""))


class _Handlers:
    """One :class:`FleetProvisioning` (and database connection) per pool thread."""

    def __init__(self, factory: Callable[[], FleetProvisioning]) -> None:
        self._factory = factory
        self._local = threading.local()
        self._all: list[FleetProvisioning] = []
        self._lock = threading.Lock()

    def handle(self, request: FleetRequest) -> FleetReply | None:
        handler: FleetProvisioning | None = getattr(self._local, "handler", None)
        if handler is None:
            handler = self._factory()
            self._local.handler = handler
            with self._lock:
                self._all.append(handler)
        try:
            return handler.handle(request)
        except Exception:  # noqa: BLE001 - a device gets InternalFailure, the worker lives on
            _log.exception("fleet-provisioning request failed")
            rejection = RejectedError(500, "InternalFailure", "the registry failed to process it")
            fmt: Format = "cbor" if request.topic.endswith("cbor") else "json"
            payload = encode(rejection.body(), fmt)
            return FleetReply(request.topic + "/rejected", payload, accepted=False, body={})

    def close(self) -> None:
        with self._lock:
            committers = {h.committer for h in self._all if h.committer is not None}
            for handler in self._all:
                handler.storage.close()
            self._all.clear()
        for committer in committers:
            committer.close()


def fleet_factory(section: RegistrySection) -> Callable[[], FleetProvisioning]:
    """Builds the request handler of one worker thread from the ``[registry]`` section."""
    trust = load_endpoint_trust(section)
    ca = trust.signing_ca()
    policy = CsrPolicy.from_config(section)
    committer: list[GroupCommitter] = []
    lock = threading.Lock()

    def build() -> FleetProvisioning:
        store = Store(section.database)
        storage = SqliteRegistryStorage(store, owns_store=True)
        registry = Registry(
            storage,
            ca,
            region=section.region,
            account=section.account,
            csr_policy=policy,
            hook_timeout=section.hook_timeout_seconds,
        )
        templates = TemplateStore(
            store,
            region=section.region,
            account=section.account,
            body_validator=validate_template_body,
        )
        with lock:
            if not committer:
                committer.append(GroupCommitter(section.database))
        return FleetProvisioning(
            registry,
            storage,
            templates,
            claim_registrations=section.claim_registrations,
            csr_subject=section.csr_subject,
            max_request_bytes=section.max_request_bytes,
            committer=committer[0],
        )

    build().storage.close()  # fail now (CA, database) rather than on the first device
    return build


class RegistryWorker:
    """Serves fleet-provisioning requests from one broker until stopped.

    Args:
        address: the broker.
        password: the registry identity's password (the plugin's ``registry_password_file``).
        factory: builds one request handler per pool thread.
        threads: pool size.
        ca_file: CA bundle for an ``mqtts://`` broker.
    """

    def __init__(
        self,
        address: BrokerAddress,
        password: str,
        factory: Callable[[], FleetProvisioning],
        *,
        threads: int = 4,
        ca_file: Path | None = None,
    ) -> None:
        self.address = address
        self._password = password
        self._handlers = _Handlers(factory)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="fleet"
        )
        self._limit = asyncio.Semaphore(threads * 4)
        self._ca_file = ca_file
        self.subscribed = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        tls = None
        if self.address.tls:
            tls = aiomqtt.TLSParameters(ca_certs=str(self._ca_file) if self._ca_file else None)
        return aiomqtt.Client(
            hostname=self.address.host,
            port=self.address.port or 1883,  # paho wants a port even for a Unix socket
            transport=self.address.transport,  # type: ignore[arg-type]
            username=self.address.username,
            password=self._password,
            identifier=f"edge-registry-{secrets.token_hex(8)}",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            tls_params=tls,
            keepalive=30,
            max_queued_incoming_messages=0,
        )

    async def run(self) -> None:
        """Connect, subscribe and answer requests until cancelled or the broker goes away.

        Raises:
            aiomqtt.MqttError: the connection failed or was lost.
        """
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with self._client() as client:
                # QoS 0 on the local socket: a request in flight to a worker that dies is lost
                # either way (its session is not kept); the device's retry reaches another.
                await client.subscribe(SHARED_REQUEST, qos=0)
                self.subscribed.set()
                _log.info("registry worker subscribed to %s", SHARED_REQUEST)
                async for message in client.messages:
                    forwarded = request_from(message)
                    if forwarded is None:
                        _log.warning("ignored a request without the plugin's properties")
                        continue
                    await self._limit.acquire()
                    task = loop.create_task(self._answer(client, *forwarded))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            self.subscribed.clear()
            for task in tasks:
                task.cancel()

    async def _answer(self, client: aiomqtt.Client, conn: str, request: FleetRequest) -> None:
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self._pool, self._handlers.handle, request)
            if reply is None:
                return
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [(PROP_CONN, conn), (PROP_TOPIC, reply.topic)]
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(REPLY_TOPIC, reply.payload, qos=0, properties=props)
        finally:
            self._limit.release()

    def close(self) -> None:
        """Stop the pool and close the database connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._handlers.close()
