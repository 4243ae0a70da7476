"""``edge-agent registry serve``: mosquitto, the routing plugin and the registry worker.

With ``--listen`` it runs the whole endpoint on one host: it writes a private mosquitto
configuration (a TLS listener that requires a client certificate chaining to the claim
issuer, the plugin, and a Unix-socket listener for the worker) into a fresh 0700 directory,
starts mosquitto, attaches the worker, prints one ready line and supervises both: SIGTERM
stops them cleanly; mosquitto dying ends the command with a clear message and exit 3.
With ``--broker`` only the worker runs, attached to an operator's mosquitto that loads the
plugin. With ``--api-socket`` either mode also serves the registry's HTTP routes
(:mod:`agent.registry.api`, the local API's) on that Unix socket, for the registry host's
operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import RegistrySection
from agent.errors import ConfigError
from agent.fsutil import atomic_write
from agent.registry.broker_link import BrokerLinkError
from agent.registry.endpoint_trust import load_endpoint_trust
from agent.registry.fleet import FleetProvisioning
from agent.registry.service import BrokerAddress, RegistryWorker, fleet_factory
from agent.sdnotify import Notifier

if TYPE_CHECKING:
    from agent.config import AgentConfig

_log = logging.getLogger(__name__)

PLUGIN_NAME = "edge_registry_plugin.so"
PLUGIN_ENV = "EDGE_AGENT_REGISTRY_PLUGIN"
PLUGIN_MAX_PAYLOAD = 131072  # AWS IoT's MQTT payload limit
READY_TIMEOUT = 10.0
_NOTIFY_VARIABLES = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
GC_THRESHOLD = 20000
#: OpenSSL settings of the private mosquitto: TLS 1.2 or newer and no session tickets. A
#: device provisions once and never resumes a session, so the tickets OpenSSL would issue
#: after every handshake (two per TLS 1.3 connection, each a serialised and encrypted copy
#: of the session with the client's certificate) are work for nothing.
OPENSSL_CONF = """\
openssl_conf = edge_registry_init
[edge_registry_init]
ssl_conf = edge_registry_ssl
[edge_registry_ssl]
system_default = edge_registry_tls
[edge_registry_tls]
MinProtocol = TLSv1.2
CipherString = DEFAULT:@SECLEVEL=2
NumTickets = 0
Options = -SessionTicket
"""


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path of a long-running worker.

    Everything loaded at start (modules, the CA, templates) is frozen out of collection, and
    collections run after many more allocations than the default 700: answering one request
    allocates thousands of short-lived objects, freed by reference counting, and the default
    thresholds spent about a tenth of the worker's CPU walking them again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def plugin_path() -> Path:
    """The built plugin: ``$EDGE_AGENT_REGISTRY_PLUGIN``, beside its source, or installed.

    Raises:
        ConfigError: ``PLUGIN_MISSING`` when it was not built.
    """
    candidates = []
    if os.environ.get(PLUGIN_ENV):
        candidates.append(Path(os.environ[PLUGIN_ENV]))
    candidates += [
        Path(__file__).parent / "plugin" / PLUGIN_NAME,
        Path("/usr/lib/edge-agent") / PLUGIN_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "the mosquitto plugin edge_registry_plugin.so is not built; run scripts/setup "
        "(or make -C agent/registry/plugin)",
        reason="PLUGIN_MISSING",
    )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets).

    Raises:
        ConfigError: ``LISTEN_INVALID``.
    """
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:  # noqa: PLR2004
        raise ConfigError(f"--listen must be HOST:PORT, not {text!r}", reason="LISTEN_INVALID")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The private files of one ``registry serve`` run."""

    directory: Path
    config: Path
    socket: Path
    password: str
    log: Path
    openssl_conf: Path


def write_broker_files(
    directory: Path,
    *,
    host: str,
    port: int,
    server_cert: Path,
    server_key: Path,
    claim_ca_pem: bytes,
    plugin: Path,
    tls_ca_pem: bytes | None = None,
) -> BrokerFiles:
    """Write mosquitto.conf, the CA bundles and the registry password into ``directory``.

    ``claim_ca_pem`` (the claim issuers) decides who is a claim client; ``tls_ca_pem`` (the
    claim issuers and the root; default ``claim_ca_pem``) is what TLS verifies chains with.
    """
    password = secrets.token_urlsafe(32)
    password_file = directory / "registry.pw"
    atomic_write(password_file, password.encode("ascii") + b"\n")
    claim_ca = directory / "claim-ca.pem"
    atomic_write(claim_ca, claim_ca_pem, 0o600)
    tls_ca = directory / "tls-ca.pem"
    atomic_write(tls_ca, claim_ca_pem if tls_ca_pem is None else tls_ca_pem, 0o600)
    sock = directory / "registry.sock"
    log = directory / "mosquitto.log"
    lines = [
        "# Written by edge-agent registry serve; private to this run.",
        "per_listener_settings false",
        "persistence false",
        "allow_anonymous false",
        "connection_messages false",
        "set_tcp_nodelay true",
        f"log_dest file {log}",
        "log_type error",
        "log_type warning",
        f"max_packet_size {PLUGIN_MAX_PAYLOAD + 4096}",
        f"plugin {plugin}",
        f"plugin_opt_registry_password_file {password_file}",
        f"plugin_opt_claim_cafile {claim_ca}",
        f"plugin_opt_max_payload {PLUGIN_MAX_PAYLOAD}",
        f"listener 0 {sock}",
        f"listener {port} {host}",
        f"cafile {tls_ca}",
        f"certfile {server_cert}",
        f"keyfile {server_key}",
        "require_certificate true",
    ]
    if os.geteuid() == 0:
        lines.insert(1, "user root")  # the files are root's and 0600
    config = directory / "mosquitto.conf"
    atomic_write(config, ("\n".join(lines) + "\n").encode("utf-8"), 0o600)
    openssl_conf = directory / "openssl.cnf"
    atomic_write(openssl_conf, OPENSSL_CONF.encode("ascii"), 0o600)
    return BrokerFiles(directory, config, sock, password, log, openssl_conf)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _ready(payload: dict[str, object]) -> None:
    print(json.dumps(payload), flush=True)  # noqa: T201 - the ready line on stdout
    where = payload.get("listen") or payload.get("broker")
    notifier = Notifier()
    notifier.ready(f"serving fleet provisioning on {where}")
    notifier.close()


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    notifier = Notifier()  # systemd (Type=notify) shows the unit as deactivating
    notifier.stopping()
    notifier.close()


async def _run_worker(worker: RegistryWorker, stop: asyncio.Event, *, retry: bool) -> None:
    """Run the worker, reconnecting while ``retry``; stop when ``stop`` is set."""
    while not stop.is_set():
        try:
            await worker.run()
        except BrokerLinkError as exc:
            if not retry:
                raise
            _log.warning("registry worker lost the broker (%s); reconnecting", exc)
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class HttpApi:
    """The registry's HTTP routes on a Unix socket (0660, owned by ``group`` when set)."""

    socket: Path
    config: AgentConfig
    group: str = ""


@contextlib.asynccontextmanager
async def _http_api(api: HttpApi | None) -> AsyncIterator[None]:
    """Serve the registry routes for the duration of the block (nothing when ``api`` is None)."""
    if api is None:
        yield
        return
    from agent.api import LocalApi  # noqa: PLC0415 - only with --api-socket
    from agent.registry.api import RegistryApi  # noqa: PLC0415

    local = LocalApi(api.socket, group=api.group)
    routes = RegistryApi(lambda: api.config)
    local.add_routes(routes.routes())
    try:
        await local.start()
        await routes.start()
        yield
    finally:
        await local.stop()
        await routes.close()


def serve_local(
    section: RegistrySection,
    *,
    listen: str,
    server_cert: Path,
    server_key: Path,
    threads: int = 4,
    api: HttpApi | None = None,
) -> int:
    """Run mosquitto with the plugin and the worker until SIGTERM; the exit code.

    Raises:
        ConfigError: a bad address, missing TLS files, no mosquitto, no plugin, no CA.
    """
    host, port = parse_listen(listen)
    for path, what in ((server_cert, "--server-cert"), (server_key, "--server-key")):
        if not path.is_file():
            raise ConfigError(f"{what} {path} is not a readable file", reason="TLS_FILE_MISSING")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise ConfigError("mosquitto is not installed", reason="MOSQUITTO_MISSING")
    trust = load_endpoint_trust(section)
    factory = fleet_factory(section)
    plugin = plugin_path()
    directory = Path(tempfile.mkdtemp(prefix="edge-registry-"))
    try:
        files = write_broker_files(
            directory,
            host=host,
            port=port,
            server_cert=server_cert.resolve(),
            server_key=server_key.resolve(),
            claim_ca_pem=trust.claim_issuers_pem(),
            tls_ca_pem=trust.tls_cafile_pem(),
            plugin=plugin,
        )
        tune_gc()
        return asyncio.run(
            _run_local(mosquitto, files, factory, host=host, port=port, threads=threads, api=api)
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _run_local(
    mosquitto: str,
    files: BrokerFiles,
    factory: Callable[[], FleetProvisioning],
    *,
    host: str,
    port: int,
    threads: int,
    api: HttpApi | None,
) -> int:
    broker = await asyncio.create_subprocess_exec(
        mosquitto,
        "-c",
        str(files.config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        # mosquitto speaks sd_notify itself: READY=1 is this process's to send, once the
        # worker is subscribed too.
        env={
            **{k: v for k, v in os.environ.items() if k not in _NOTIFY_VARIABLES},
            "OPENSSL_CONF": str(files.openssl_conf),
        },
    )
    try:
        async with _http_api(api):
            return await _supervise(
                broker, files, factory, host=host, port=port, threads=threads, api=api
            )
    finally:
        if broker.returncode is None:
            broker.terminate()
            try:
                await asyncio.wait_for(broker.wait(), 5)
            except TimeoutError:
                broker.kill()
                await broker.wait()


async def _supervise(
    broker: asyncio.subprocess.Process,
    files: BrokerFiles,
    factory: Callable[[], FleetProvisioning],
    *,
    host: str,
    port: int,
    threads: int,
    api: HttpApi | None,
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while not (os.path.exists(files.socket) and await _port_open(host, port)):  # noqa: ASYNC240, PTH110
        if broker.returncode is not None or loop.time() > deadline:
            return await _broker_failed(broker, files, "did not start")
        await asyncio.sleep(0.02)
    worker = RegistryWorker(
        BrokerAddress(str(files.socket)),
        files.password,
        factory,
        threads=threads,
    )
    stop = asyncio.Event()
    tasks = {
        "signal": asyncio.create_task(_until_signal(stop)),
        "broker": asyncio.create_task(broker.wait()),
        "worker": asyncio.create_task(_run_worker(worker, stop, retry=True)),
    }
    try:
        subscribed = asyncio.create_task(worker.subscribed.wait())
        done, _ = await asyncio.wait(
            {subscribed, tasks["broker"], tasks["worker"]},
            timeout=READY_TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if subscribed not in done:
            subscribed.cancel()
            return await _broker_failed(broker, files, "did not accept the registry worker")
        _ready({"ready": True, "listen": f"{host}:{port}", "pid": os.getpid(), **_api_field(api)})
        done, _ = await asyncio.wait(set(tasks.values()), return_when=asyncio.FIRST_COMPLETED)
        if tasks["broker"] in done:
            return await _broker_failed(broker, files, "exited")
        if tasks["worker"] in done and tasks["signal"] not in done:
            error = tasks["worker"].exception()
            print(  # noqa: T201 - the reason the service stops, for systemd's journal
                f"edge-agent registry serve: the registry worker stopped: {error!r}",
                file=sys.stderr,
                flush=True,
            )
            return 3
        return 0
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        worker.close()


def _api_field(api: HttpApi | None) -> dict[str, object]:
    return {} if api is None else {"api": str(api.socket)}


async def _broker_failed(broker: asyncio.subprocess.Process, files: BrokerFiles, what: str) -> int:
    if broker.returncode is None:
        broker.terminate()
    code = await broker.wait()
    stderr = b""
    if broker.stderr is not None:
        with contextlib.suppress(Exception):
            stderr = await asyncio.wait_for(broker.stderr.read(), 1)
    detail = _log_tail(files.log) or stderr.decode("utf-8", "replace").strip()[-500:]
    print(  # noqa: T201 - the reason the service stops, for systemd's journal
        f"edge-agent registry serve: mosquitto {what} (exit status {code})"
        + (f": {detail}" if detail else ""),
        file=sys.stderr,
        flush=True,
    )
    return 3


def serve_broker(
    section: RegistrySection,
    *,
    broker: str,
    password_file: Path,
    ca_file: Path | None,
    threads: int = 4,
    api: HttpApi | None = None,
) -> int:
    """Run only the worker against an operator's broker until SIGTERM; the exit code.

    Raises:
        ConfigError: a bad URL, an unreadable password file, no CA.
    """
    address = BrokerAddress.parse(broker)
    try:
        password = password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the registry password file {password_file}: {exc.strerror}",
            reason="PASSWORD_FILE_UNREADABLE",
        ) from None
    factory = fleet_factory(section)
    worker = RegistryWorker(address, password, factory, threads=threads, ca_file=ca_file)
    tune_gc()
    return asyncio.run(_run_broker(worker, broker, api))


async def _run_broker(worker: RegistryWorker, broker: str, api: HttpApi | None) -> int:
    async with _http_api(api):
        return await _attach(worker, broker, api)


async def _attach(worker: RegistryWorker, broker: str, api: HttpApi | None) -> int:
    stop = asyncio.Event()
    signal_task = asyncio.create_task(_until_signal(stop))
    worker_task = asyncio.create_task(_run_worker(worker, stop, retry=False))
    subscribed = asyncio.create_task(worker.subscribed.wait())
    try:
        done, _ = await asyncio.wait(
            {subscribed, worker_task}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if subscribed not in done:
            detail = "timed out"
            if worker_task in done and worker_task.exception() is not None:
                detail = str(worker_task.exception())
            print(  # noqa: T201
                f"edge-agent registry serve: cannot attach to {broker}: {detail}",
                file=sys.stderr,
                flush=True,
            )
            return 3
        _ready({"ready": True, "broker": broker, "pid": os.getpid(), **_api_field(api)})
        done, _ = await asyncio.wait(
            {signal_task, worker_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if worker_task in done:
            print(  # noqa: T201
                f"edge-agent registry serve: lost the broker {broker}",
                file=sys.stderr,
                flush=True,
            )
            return 3
        return 0
    finally:
        for task in (signal_task, worker_task, subscribed):
            task.cancel()
        await asyncio.gather(signal_task, worker_task, subscribed, return_exceptions=True)
        worker.close()
