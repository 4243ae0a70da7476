"""The local API: HTTP on a Unix socket, for the appliance's own tools.

aiohttp serves it (``web.UnixSite``); the socket is created 0660 (bound under a umask, since
aiohttp has no mode parameter) and, when ``[api] group`` names a group, owned by it, so only
root and that group's members can talk to the agent. Errors have the shape shared with the
CLI and MQTT (:meth:`agent.errors.AgentError.to_dict`) and the HTTP status of their seed
exception; nothing but an :class:`~agent.errors.AgentError` ever reaches a caller as such, and
an unexpected failure is a bare ``InternalServerException``.

Components add their routes with :meth:`LocalApi.add_routes` before :meth:`LocalApi.start`.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.errors import (
    EXIT_REJECTED,
    AgentError,
    InternalError,
    InvalidRequestError,
    ResourceNotFoundError,
    StateError,
)
from agent.jsonutil import loads_strict

_log = logging.getLogger(__name__)

#: Largest request body accepted (templates are ≤ 10 KiB, CreateManagedThing bodies smaller).
MAX_BODY_BYTES = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MethodNotAllowedError(AgentError):
    """The path exists but not with this method."""

    code = "MethodNotAllowedException"
    status_code = 405
    exit_code = EXIT_REJECTED
    default_reason = "METHOD_NOT_ALLOWED"


class PayloadTooLargeError(AgentError):
    """The request body is larger than the API accepts."""

    code = "ValidationException"
    status_code = 413
    exit_code = EXIT_REJECTED
    default_reason = "REQUEST_TOO_LARGE"


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response (``application/json``, UTF-8)."""
    return web.Response(
        text=json.dumps(body, separators=(",", ":")), status=status, content_type="application/json"
    )


def error_response(error: AgentError) -> web.Response:
    """The error shape with its seed status code."""
    return json_response(error.to_dict(), status=error.status_code)


async def read_json(request: web.Request) -> Any:
    """The request body as strict JSON (no duplicate keys, no NaN)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"the request body exceeds {MAX_BODY_BYTES} bytes") from None
    try:
        return loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(
            f"the request body is not valid JSON: {exc}", reason="REQUEST_NOT_JSON"
        ) from None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AgentError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(
            ResourceNotFoundError(f"no resource at {request.path}", reason="PATH_NOT_FOUND")
        )
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            MethodNotAllowedError(f"{request.method} {request.path}: use {allowed}")
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            PayloadTooLargeError(f"the request body exceeds {MAX_BODY_BYTES} bytes")
        )
    except Exception:  # noqa: BLE001 - the top of a request: log it, answer 500
        _log.exception("local API: %s %s failed", request.method, request.path)
        return error_response(InternalError("unexpected failure"))


class LocalApi:
    """The HTTP server on the agent's Unix socket."""

    def __init__(self, socket_path: Path, *, group: str = "") -> None:
        self.socket_path = socket_path
        self._group = group
        self._app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
        self._runner: web.AppRunner | None = None

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Register routes (before :meth:`start`)."""
        self._app.add_routes(list(routes))

    async def start(self) -> None:
        """Bind the socket (0660, the configured group) and serve."""
        gid = self._gid()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket()
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        old = os.umask(0o117)
        try:
            await web.UnixSite(runner, str(self.socket_path)).start()
        except OSError as exc:
            await runner.cleanup()
            raise StateError(
                f"cannot listen on {self.socket_path}: {exc.strerror}", reason="API_SOCKET_FAILED"
            ) from exc
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(self.socket_path, -1, gid)
        self._runner = runner
        _log.info("local API on %s", self.socket_path)

    async def stop(self) -> None:
        """Stop serving and remove the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._remove_stale_socket()

    def _gid(self) -> int | None:
        if not self._group:
            return None
        try:
            return grp.getgrnam(self._group).gr_gid
        except KeyError:
            raise StateError(
                f"the API group {self._group!r} does not exist", reason="API_GROUP_NOT_FOUND"
            ) from None

    def _remove_stale_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            mode = self.socket_path.lstat().st_mode
            if not stat.S_ISSOCK(mode):
                raise StateError(
                    f"{self.socket_path} exists and is not a socket; refusing to remove it",
                    reason="API_SOCKET_FAILED",
                )
            self.socket_path.unlink()
