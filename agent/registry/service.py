"""The registry worker of the fleet-provisioning endpoint.

An MQTT 5 client (:mod:`agent.registry.broker_link`) of the broker that loads
``edge_registry_plugin``. It takes the plugin's internal request topic through a shared
subscription (``$share/registry/edge-registry/request``), so several workers share the load,
answers each request through :class:`~agent.registry.fleet.FleetProvisioning` and publishes
the answer on the internal reply topic with the connection id the plugin gave; the plugin
delivers it to that one connection. Requests are answered in the worker's event loop, their
durable writes shared through one group-commit thread; a RegisterThing whose template has a
pre-provisioning hook is answered in a small thread pool (each thread with its own database
connection), so a slow hook does not hold up other devices.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import secrets
import ssl
import threading
import typing
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from agent.config import RegistrySection
from agent.errors import ConfigError
from agent.registry.broker_link import BrokerLink, LinkTarget, open_link
from agent.registry.endpoint_trust import load_endpoint_trust
from agent.registry.fleet import (
    ClaimCertificates,
    FleetProvisioning,
    FleetReply,
    FleetRequest,
    Steps,
    internal_failure,
)
from agent.registry.group_commit import GroupCommitter, LoopCommitter
from agent.registry.register import Registry
from agent.registry.signing import CsrPolicy
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import validate_template_body
from agent.registry.templates_store import TemplateStore
from agent.store import Store

_log = logging.getLogger(__name__)
T = typing.TypeVar("T")

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


def request_from(pairs: list[tuple[str, str]], payload: bytes) -> tuple[str, FleetRequest] | None:
    """The connection id and request carried by a forwarded message (None if incomplete).

    Args:
        pairs: the message's MQTT 5 user properties, set by the plugin.
        payload: the device's payload.
    """
    props = dict(pairs)
    conn = props.get(PROP_CONN)
    topic = props.get(PROP_TOPIC)
    claim = props.get(PROP_CLAIM_SHA256)
    pem = props.get(PROP_CLAIM_PEM)
    if not (conn and topic and claim and pem):
        return None
    return conn, FleetRequest(topic, payload, claim, pem, props.get(PROP_CLIENT_ID, ""))


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    """A request answered in the event loop, between its steps."""

    link: BrokerLink
    conn: str
    request: FleetRequest
    steps: Steps[FleetReply]


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
            return internal_failure(request)

    def adopt(self, handler: FleetProvisioning) -> None:
        """Close ``handler`` (made outside the pool) with the others."""
        with self._lock:
            self._all.append(handler)

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
    claims = ClaimCertificates(ca)
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
            claims=claims,
        )

    build().storage.close()  # fail now (CA, database) rather than on the first device
    return build


class RegistryWorker:
    """Serves fleet-provisioning requests from one broker until stopped.

    Requests are answered in the event loop as they arrive (:meth:`FleetProvisioning.steps`):
    the writes of the requests handled in one loop iteration are committed together right
    after it, in the loop's thread (:class:`LoopCommitter`), and each request resumes once
    its write is durable; no thread hand-off happens per request. A request that may block
    on more than the database (a template with a pre-provisioning hook) is answered in the
    thread pool instead, committing through the pool's group-commit thread, so a slow hook
    holds up no other device. The replies of a burst go out in one socket write. At most
    ``threads * 4`` requests are in hand at once: beyond that the worker stops reading from
    the broker until answers have gone out.

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
        self._limit = threads * 4
        self._in_hand = 0
        self._ca_file = ca_file
        self._writes: LoopCommitter | None = None
        # Replies made in the pool, handed over to the loop.
        self._answered: collections.deque[tuple[BrokerLink, str, FleetReply | None]] = (
            collections.deque()
        )
        self._handler: FleetProvisioning | None = None
        self._factory = factory
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: BrokerLink | None = None
        self.subscribed = asyncio.Event()

    def _target(self) -> LinkTarget:
        context = None
        if self.address.tls:
            context = ssl.create_default_context(
                cafile=str(self._ca_file) if self._ca_file else None
            )
        return LinkTarget(
            host=self.address.host,
            port=self.address.port,
            unix=self.address.transport == "unix",
            ssl_context=context,
            username=self.address.username,
            password=self._password,
            client_id=f"edge-registry-{secrets.token_hex(8)}",
            keepalive=30,
        )

    async def run(self) -> None:
        """Connect, subscribe and answer requests until cancelled or the broker goes away.

        Raises:
            BrokerLinkError: the connection failed or was lost.
        """
        self._loop = asyncio.get_running_loop()
        link = await open_link(self._target(), self._on_message)
        self._link = link
        try:
            # QoS 0 on the local socket: a request in flight to a worker that dies is lost
            # either way (its session is not kept); the device's retry reaches another.
            await link.subscribe(SHARED_REQUEST)
            self.subscribed.set()
            _log.info("registry worker subscribed to %s", SHARED_REQUEST)
            await link.closed
        finally:
            self.subscribed.clear()
            self._link = None
            link.close()

    def _on_message(self, _topic: str, payload: bytes, pairs: list[tuple[str, str]]) -> None:
        forwarded = request_from(pairs, payload)
        if forwarded is None:
            _log.warning("ignored a request without the plugin's properties")
            return
        link = self._link
        if link is None:
            return
        conn, request = forwarded
        self._in_hand += 1
        if self._in_hand >= self._limit:
            link.pause_reading()
        try:
            if self._handler is None:
                self._handler = self._loop_handler()
            handler = self._handler
            if self._writes is None or handler.blocking(request):
                self._pool.submit(self._answer, link, conn, request)
                return
            steps = handler.steps(request)
        except Exception:  # noqa: BLE001 - a device gets InternalFailure, the worker lives on
            _log.exception("fleet-provisioning request failed")
            self._reply(link, conn, internal_failure(request))
            return
        if steps is None:
            self._reply(link, conn, None)
            return
        self._advance(_Request(link, conn, request, steps), None, None)

    def _advance(self, job: _Request, value: object, error: BaseException | None) -> None:
        """In the loop: run the request's steps up to its next write, or to its reply."""
        try:
            write = job.steps.send(value) if error is None else job.steps.throw(error)
        except StopIteration as stop:
            self._reply(job.link, job.conn, stop.value)
            return
        except Exception:  # noqa: BLE001 - a device gets InternalFailure, the worker lives on
            _log.exception("fleet-provisioning request failed")
            self._reply(job.link, job.conn, internal_failure(job.request))
            return
        assert self._writes is not None  # noqa: S101 - made with the loop's handler
        self._writes.submit(write, lambda result, exc: self._advance(job, result, exc))

    def _loop_handler(self) -> FleetProvisioning:
        """The loop's own handler, with a committer in the loop's thread."""
        handler = self._factory()
        if handler.committer is not None and self._loop is not None:
            self._writes = LoopCommitter(handler.committer.path, self._loop)
        return handler

    def _answer(self, link: BrokerLink, conn: str, request: FleetRequest) -> None:
        """In a pool thread: answer the whole request, blocking, then hand the reply over."""
        reply: FleetReply | None = None
        try:
            reply = self._handlers.handle(request)
        finally:
            self._hand_over(self._answered, (link, conn, reply))

    def _hand_over(self, queue: collections.deque[T], item: T) -> None:
        """From a pool thread: queue for the loop (one wake-up a burst)."""
        queue.append(item)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            assert self._loop is not None  # noqa: S101 - set before the first request
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to answer
                self._loop.call_soon_threadsafe(self._deliver)

    def _reply(self, link: BrokerLink, conn: str, reply: FleetReply | None) -> None:
        self._in_hand -= 1
        if reply is not None:
            link.publish(REPLY_TOPIC, reply.payload, [(PROP_CONN, conn), (PROP_TOPIC, reply.topic)])
        if self._in_hand < self._limit and self._link is not None:
            self._link.resume_reading()

    def _deliver(self) -> None:
        self._wake_scheduled = False  # before draining: an item queued after this wakes again
        answered = self._answered
        while answered:
            self._reply(*answered.popleft())

    def close(self) -> None:
        """Stop the pool and close the database connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._writes is not None:
            self._writes.close()
            self._writes = None
        if self._handler is not None:
            self._handlers.adopt(self._handler)
            self._handler = None
        self._handlers.close()
