"""The pre-provisioning hook: a local executable or an HTTPS endpoint that allows or denies.

The request is the AWS IoT pre-provisioning hook input::

    {"claimCertificateId": str, "certificateId": str, "certificatePem": str,
     "templateArn": str, "clientId": str, "parameters": {str: str}}

sent as JSON on the executable's stdin (or POSTed to the URL); the answer, on stdout (or in
the response body), is ``{"allowProvisioning": bool, "parameterOverrides": {str: str}}``.
The hook has a time budget (5 seconds by default, the AWS limit), a hard deadline for the
whole call: starting the executable, writing the request and reading the answer; or the TLS
connection, request and response of the HTTPS call. A crash, a non-zero exit, a timeout, an
answer longer than 64 KiB (reading stops there), a redirect (never followed), a body that is
not strict JSON (duplicate keys refused) or anything but ``"allowProvisioning": true`` denies
provisioning; :class:`HookDecision` records why. An executable runs with a minimal
environment (:data:`HOOK_ENVIRONMENT`), never the registry's own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import selectors
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.jsonutil import loads_strict

_log = logging.getLogger(__name__)

HOOK_TIMEOUT_SECONDS = 5.0
RESPONSE_MAX_BYTES = 64 * 1024
STDERR_KEEP_BYTES = 4096
#: The whole environment an executable hook gets.
HOOK_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

ALLOWED = "ALLOWED"
DENIED = "HOOK_DENIED"
TIMED_OUT = "HOOK_TIMEOUT"
FAILED = "HOOK_FAILED"
BAD_RESPONSE = "HOOK_BAD_RESPONSE"


@dataclass(frozen=True, slots=True)
class PreProvisioningHook:
    """Where the hook runs.

    Attributes:
        target: an absolute path to an executable, or an ``https://`` URL.
        timeout: the time budget in seconds (at most 5, the AWS limit).
        ca_file: trust anchors for an HTTPS target (default: the system's).
    """

    target: str
    timeout: float = HOOK_TIMEOUT_SECONDS
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class HookRequest:
    """What the hook is asked about."""

    certificate_id: str
    certificate_pem: str
    template_arn: str
    parameters: Mapping[str, str]
    claim_certificate_id: str = ""
    client_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON request, with the AWS field names."""
        return {
            "claimCertificateId": self.claim_certificate_id,
            "certificateId": self.certificate_id,
            "certificatePem": self.certificate_pem,
            "templateArn": self.template_arn,
            "clientId": self.client_id,
            "parameters": dict(self.parameters),
        }


@dataclass(frozen=True, slots=True)
class HookDecision:
    """The hook's answer, or why there is none.

    Attributes:
        allowed: True only for an explicit ``"allowProvisioning": true``.
        reason: ``ALLOWED``, ``HOOK_DENIED``, ``HOOK_TIMEOUT``, ``HOOK_FAILED`` or
            ``HOOK_BAD_RESPONSE``.
        detail: a sentence for the operator (exit status, parse error...).
        parameter_overrides: merged into the registration's parameters when allowed.
    """

    allowed: bool
    reason: str
    detail: str
    parameter_overrides: dict[str, str] = field(default_factory=dict)


def _deny(reason: str, detail: str) -> HookDecision:
    return HookDecision(allowed=False, reason=reason, detail=detail)


def call_hook(hook: PreProvisioningHook, request: HookRequest) -> HookDecision:
    """Ask the hook; never raises for anything the hook does wrong (that denies)."""
    payload = json.dumps(request.to_dict()).encode("utf-8")
    deadline = time.monotonic() + hook.timeout
    if hook.target.startswith("https://"):
        decision = _call_https(hook, payload, deadline)
    elif hook.target.startswith("/"):
        decision = _call_executable(hook, payload, deadline)
    else:
        decision = _deny(FAILED, "the hook target must be an absolute path or an https:// URL")
    if decision.allowed:
        _log.info("pre-provisioning hook allowed certificate %s", request.certificate_id)
    else:
        _log.warning(
            "pre-provisioning hook denied certificate %s: %s (%s)",
            request.certificate_id,
            decision.reason,
            decision.detail,
        )
    return decision


def parse_response(body: bytes) -> HookDecision:
    """Interpret a hook's response body (strict JSON: duplicate keys, NaN refused)."""
    try:
        data = loads_strict(body)
    except RecursionError:
        return _deny(BAD_RESPONSE, "the hook's answer nests too deeply")
    except ValueError as exc:
        return _deny(BAD_RESPONSE, f"the hook's answer is not strict JSON: {exc}")
    if not isinstance(data, dict):
        return _deny(BAD_RESPONSE, "the hook's answer is not a JSON object")
    overrides = data.get("parameterOverrides", {})
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 2048 and len(v) <= 4096  # noqa: PLR2004
        for k, v in overrides.items()
    ):
        return _deny(BAD_RESPONSE, "parameterOverrides must map strings to strings (2048/4096)")
    allow = data.get("allowProvisioning")
    if allow is not True:
        return _deny(DENIED, f"the hook answered allowProvisioning={json.dumps(allow)}")
    return HookDecision(
        allowed=True,
        reason=ALLOWED,
        detail="the hook allowed provisioning",
        parameter_overrides=dict(overrides),
    )


def _timed_out(hook: PreProvisioningHook) -> HookDecision:
    return _deny(TIMED_OUT, f"the hook did not answer within {hook.timeout:g} seconds")


class _AnswerTooLongError(Exception):
    """The hook wrote more than :data:`RESPONSE_MAX_BYTES` to stdout."""


def _call_executable(hook: PreProvisioningHook, payload: bytes, deadline: float) -> HookDecision:
    path = Path(hook.target)
    if not path.is_file() or not os.access(path, os.X_OK):
        return _deny(FAILED, f"the hook {path} is not an executable file")
    try:
        process = subprocess.Popen(
            [str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=dict(HOOK_ENVIRONMENT),
            cwd="/",
        )
    except OSError as exc:
        return _deny(FAILED, f"the hook could not be started: {exc.strerror}")
    try:
        exchanged = _exchange(process, payload, deadline)
    except _AnswerTooLongError:
        _kill_group(process)
        return _deny(BAD_RESPONSE, "the hook's answer is too long")
    except BaseException:
        _kill_group(process)
        raise
    if exchanged is None:
        _kill_group(process)
        return _timed_out(hook)
    stdout, stderr = exchanged
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        how = (
            f"was killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exited with status {process.returncode}"
        )
        return _deny(FAILED, f"the hook {how} {tail[0][:200]}".rstrip())
    return parse_response(stdout)


def _exchange(
    process: subprocess.Popen[bytes], payload: bytes, deadline: float
) -> tuple[bytes, bytes] | None:
    """Write ``payload``, read stdout (bounded) and stderr (its tail) until ``deadline``.

    Returns:
        ``(stdout, stderr)`` once the process has exited, or None at the deadline.

    Raises:
        _AnswerTooLongError: stdout went past :data:`RESPONSE_MAX_BYTES`.
    """
    pipes = _Pipes(process, payload)
    try:
        while pipes.open():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pipes.step(remaining)
    finally:
        pipes.close()
    try:
        process.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return None
    return bytes(pipes.out), bytes(pipes.err)


class _Pipes:
    """The hook's three pipes, served without blocking (one selector)."""

    def __init__(self, process: subprocess.Popen[bytes], payload: bytes) -> None:
        assert process.stdin is not None  # noqa: S101 - opened as PIPEs
        assert process.stdout is not None  # noqa: S101
        assert process.stderr is not None  # noqa: S101
        self._stdin, self._stdout, self._stderr = process.stdin, process.stdout, process.stderr
        self._in_fd, self._out_fd = self._stdin.fileno(), self._stdout.fileno()
        self._pending = memoryview(payload)
        self.out = bytearray()
        self.err = bytearray()
        self._selector = selectors.DefaultSelector()
        for pipe in (self._stdin, self._stdout, self._stderr):
            os.set_blocking(pipe.fileno(), False)
        self._selector.register(self._stdin.fileno(), selectors.EVENT_WRITE)
        self._selector.register(self._stdout.fileno(), selectors.EVENT_READ)
        self._selector.register(self._stderr.fileno(), selectors.EVENT_READ)

    def open(self) -> bool:
        """True while a pipe is still being served."""
        return bool(self._selector.get_map())

    def step(self, timeout: float) -> None:
        """Serve the pipes that are ready within ``timeout`` seconds."""
        for key, _events in self._selector.select(timeout):
            if key.fd == self._in_fd:
                self._write()
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                self._selector.unregister(key.fd)
            elif key.fd == self._out_fd:
                self.out += chunk
                if len(self.out) > RESPONSE_MAX_BYTES:
                    raise _AnswerTooLongError
            else:
                self.err = (self.err + chunk)[-STDERR_KEEP_BYTES:]

    def _write(self) -> None:
        try:
            written = os.write(self._in_fd, self._pending[:65536])
        except BrokenPipeError:
            written = len(self._pending)  # the hook stopped reading: its answer decides
        self._pending = self._pending[written:]
        if not self._pending:
            self._selector.unregister(self._in_fd)
            self._stdin.close()

    def close(self) -> None:
        """Close the selector and every pipe."""
        self._selector.close()
        for pipe in (self._stdin, self._stdout, self._stderr):
            with contextlib.suppress(OSError):
                pipe.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    process.wait()


def _call_https(  # noqa: PLR0911 - one return per way the call can fail
    hook: PreProvisioningHook, payload: bytes, deadline: float
) -> HookDecision:
    """POST to the hook with one deadline for connect, TLS, request and response.

    Each socket operation gets the time left as its timeout, and a timer shuts the socket
    down at the deadline, so no single slow step can stretch the call. Redirects are
    answered as failures, never followed.
    """
    url = urllib.parse.urlsplit(hook.target)
    if url.hostname is None:
        return _deny(FAILED, "the hook URL has no host")
    context = ssl.create_default_context(cafile=str(hook.ca_file) if hook.ca_file else None)
    remaining = deadline - time.monotonic()
    connection = http.client.HTTPSConnection(
        url.hostname, url.port or 443, timeout=max(remaining, 0.001), context=context
    )
    timer = threading.Timer(max(remaining, 0.0), _abort, (connection,))
    timer.daemon = True
    timer.start()
    try:
        connection.request(
            "POST",
            (url.path or "/") + (f"?{url.query}" if url.query else ""),
            body=payload,
            headers={"Content-Type": "application/json"},
        )
        _settimeout(connection, deadline)
        response = connection.getresponse()
        if 300 <= response.status < 400:  # noqa: PLR2004
            return _deny(
                FAILED, f"the hook answered a redirect (HTTP {response.status}); not followed"
            )
        if response.status != 200:  # noqa: PLR2004
            return _deny(FAILED, f"the hook answered HTTP {response.status}")
        body = bytearray()
        while len(body) <= RESPONSE_MAX_BYTES:
            _settimeout(connection, deadline)
            # read1: at most one receive, so the deadline is checked between receives.
            chunk = response.read1(min(65536, RESPONSE_MAX_BYTES + 1 - len(body)))
            if not chunk:
                break
            body += chunk
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            return _timed_out(hook)
        return _deny(FAILED, f"the hook could not be reached: {exc}")
    finally:
        timer.cancel()
        connection.close()
    if time.monotonic() > deadline:
        return _timed_out(hook)
    if len(body) > RESPONSE_MAX_BYTES:
        return _deny(BAD_RESPONSE, "the hook's answer is too long")
    return parse_response(bytes(body))


def _settimeout(connection: http.client.HTTPSConnection, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    if connection.sock is not None:
        connection.sock.settimeout(remaining)


def _abort(connection: http.client.HTTPSConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
