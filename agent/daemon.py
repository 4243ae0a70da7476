"""``edge-agent run``: the appliance's service, one asyncio event loop.

The service starts its parts (``net recover``, the provisioning side with its stick source
and operational MQTT link, the local API), tells systemd ``READY=1`` once they are up, and
then only reacts: to signals, to sticks, to requests, to events. ``STATUS=`` shows the step
of the run in progress. Nothing polls; the one timer is
the watchdog's, armed only when systemd asks for it (``WATCHDOG_USEC``), and it is fed from the
event loop itself, so a blocked loop lets the watchdog fire.

Signals: ``SIGTERM``/``SIGINT`` stop cleanly (``STOPPING=1``, parts stopped in reverse order);
``SIGHUP`` reloads the configuration file: a file that no longer parses is refused, logged and
reported in ``GET /status``, and the running configuration stays.

``edge-agent status`` reads ``GET /status`` from the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import logging
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

import agent
from agent.api import LocalApi, json_response, read_json
from agent.commissioning import api as commissioning_api
from agent.commissioning.runtime import CommissioningService
from agent.config import AgentConfig, load_config
from agent.errors import (
    EXIT_OK,
    ConfigError,
    FieldProblem,
    InvalidRequestError,
    ResourceNotFoundError,
    StateError,
)
from agent.provisioning.service import ProvisioningService
from agent.sdnotify import Notifier

if TYPE_CHECKING:
    from agent.registry.api import RegistryApi

_log = logging.getLogger(__name__)


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Daemon:
    """The running service."""

    def __init__(
        self, config: AgentConfig, *, config_path: Path | None, notifier: Notifier | None = None
    ) -> None:
        self.config = config
        self._config_path = config_path
        self._notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self._started_at = _utc_now()
        self._started_monotonic = time.monotonic()
        self._reloaded_at: str | None = None
        self._reload_error: dict[str, Any] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.api = LocalApi(config.api.socket_path(config.agent), group=config.api.group)
        self.provisioning: ProvisioningService | None = None
        self.commissioning = CommissioningService(
            config,
            outbox=self._outbox,
            led=lambda: self.provisioning.led if self.provisioning is not None else None,
        )
        self.api.add_routes(commissioning_api.routes(self.commissioning))
        self.api.add_routes(
            [
                web.get("/status", self._get_status),
                web.post("/devices", self._post_device),
                web.get("/devices/{id}", self._get_device),
            ]
        )
        self.registry_api = _registry_api(self) if config.api.registry else None

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` answers."""
        body: dict[str, Any] = {
            "agentVersion": agent.__version__,
            "state": "RUNNING" if not self._stop.is_set() else "STOPPING",
            "startedAt": self._started_at,
            "uptimeSeconds": round(time.monotonic() - self._started_monotonic, 3),
            "configFile": str(self._config_path) if self._config_path else None,
            "configReloadedAt": self._reloaded_at,
        }
        if self._reload_error is not None:
            body["configReloadError"] = self._reload_error
        if self.provisioning is not None:
            body["provisioning"] = self.provisioning.status()
        body["commissioning"] = self.commissioning.status()
        return body

    def _outbox(self) -> Any:
        return self.provisioning.outbox if self.provisioning is not None else None

    async def _get_status(self, _request: web.Request) -> web.Response:
        return json_response(self.status())

    def _service(self) -> ProvisioningService:
        if self.provisioning is None:
            raise StateError("the provisioning side is not running", reason="AGENT_NOT_READY")
        return self.provisioning

    async def _post_device(self, request: web.Request) -> web.Response:
        """Provision from an archive on this appliance: ``{"ArchivePath": "/.../x.zip"}``."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object", reason="REQUEST_NOT_OBJECT")
        unknown = sorted(set(body) - {"ArchivePath", "Name"})
        path = body.get("ArchivePath")
        problems = [FieldProblem(name, "unknown field") for name in unknown]
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(FieldProblem("ArchivePath", "an absolute path to the archive"))
        name = body.get("Name")
        if name is not None and (
            not isinstance(name, str)
            or not isinstance(path, str)
            or Path(path).name != f"certificates-omni_{name}.zip"
        ):
            problems.append(FieldProblem("Name", "must match certificates-omni_<Name>.zip"))
        if problems:
            raise InvalidRequestError(
                "the request is not a valid provisioning request",
                reason="REQUEST_INVALID",
                fields=problems,
            )
        record = self._service().start_from_path(Path(str(path)))
        return json_response(record.to_json(), status=202)

    async def _get_device(self, request: web.Request) -> web.Response:
        run_id = request.match_info["id"]
        record = self._service().device(run_id)
        if record is None:
            raise ResourceNotFoundError(f"no run {run_id!r}", reason="RUN_NOT_FOUND")
        return json_response(record.to_json())

    def stop(self) -> None:
        """Ask the service to stop (signal handlers call this)."""
        self._stop.set()

    def reload(self) -> None:
        """Re-read the configuration file; keep the running one if it does not parse."""
        self._notifier.notify(RELOADING="1", STATUS="reloading the configuration")
        try:
            new = load_config(self._config_path)
        except ConfigError as exc:
            _log.error("configuration reload refused, keeping the running one: %s", exc.message)
            self._reload_error = exc.to_dict()["error"]
        else:
            if new.api != self.config.api or new.agent != self.config.agent:
                _log.warning("reload: [agent] and [api] changes take effect at the next start")
            if new.usb != self.config.usb:
                _log.warning("reload: [usb] changes take effect at the next start")
            if new.commissioning != self.config.commissioning:
                _log.warning("reload: [commissioning] changes take effect at the next start")
            self.config = new
            if self.provisioning is not None:
                self.provisioning.reconfigure(new)
            self._reload_error = None
            self._reloaded_at = _utc_now()
            _log.info("configuration reloaded from %s", self._config_path)
        self._notifier.ready("running")

    def _status_line(self, text: str) -> None:
        self._notifier.notify(STATUS=text)

    def _feed_watchdog(self, interval: float) -> None:
        self._notifier.watchdog()
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(interval, self._feed_watchdog, interval)

    async def run(self) -> int:
        """Run until stopped; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            async with (
                ProvisioningService(
                    self.config,
                    on_status=self._status_line,
                    operations=self.commissioning.operations(),
                    on_link=self.commissioning.reporter.wake,
                ) as service,
                self.commissioning,
            ):
                self.provisioning = service
                await self.api.start()
                if self.registry_api is not None:
                    await self.registry_api.start()
                if self._notifier.watchdog_seconds:
                    self._feed_watchdog(self._notifier.watchdog_seconds / 2)
                self._notifier.ready("running")
                _log.info("edge-agent %s running", agent.__version__)
                await self._stop.wait()
                self._notifier.stopping()
                await self.api.stop()
        finally:
            self.provisioning = None
            if self._watchdog is not None:
                self._watchdog.cancel()
            await self.api.stop()
            if self.registry_api is not None:
                await self.registry_api.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._notifier.close()
        return EXIT_OK


def _registry_api(daemon: Daemon) -> RegistryApi:
    """The registry's routes (``[api] registry = true``), mounted on the daemon's API."""
    from agent.registry.api import RegistryApi  # noqa: PLC0415 - only on registry hosts

    registry_api = RegistryApi(lambda: daemon.config)
    daemon.api.add_routes(registry_api.routes())
    return registry_api


def register(sub: Any) -> None:
    """Add ``run`` and ``status``."""
    run = sub.add_parser("run", help="run the agent as the appliance's service")
    run.set_defaults(handler=_run)
    status = sub.add_parser("status", help="the running agent's status (local API)")
    status.add_argument("--json", action="store_true", help="JSON output (the default)")
    status.set_defaults(handler=_status)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logging.getLogger().setLevel(config.agent.log_level.upper())
    return asyncio.run(Daemon(config, config_path=args.config).run())


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def api_request(
    path: Path, method: str, target: str, timeout: float = 10.0, body: Any = None
) -> tuple[int, Any]:
    """One request to the local API; returns the status and the JSON body."""
    connection = _UnixConnection(path, timeout)
    try:
        if body is None:
            connection.request(method, target)
        else:
            connection.request(
                method, target, json.dumps(body), {"Content-Type": "application/json"}
            )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    except OSError as exc:
        raise StateError(
            f"the agent is not answering on {path}: {exc.strerror or exc}",
            reason="AGENT_NOT_RUNNING",
        ) from exc
    finally:
        connection.close()


def _status(args: argparse.Namespace) -> int:
    from agent.cli import print_json  # noqa: PLC0415 - the CLI's printer, imported when used
    from agent.errors import error_from_dict  # noqa: PLC0415

    config = load_config(args.config)
    code, body = api_request(config.api.socket_path(config.agent), "GET", "/status")
    if code != 200:  # noqa: PLR2004
        raise error_from_dict(body)
    print_json(body)
    return EXIT_OK
