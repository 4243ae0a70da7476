"""The pre-provisioning hook: a local executable or an HTTPS endpoint that allows or denies.

The request is the AWS IoT pre-provisioning hook input::

    {"claimCertificateId": str, "certificateId": str, "certificatePem": str,
     "templateArn": str, "clientId": str, "parameters": {str: str}}

sent as JSON on the executable's stdin (or POSTed to the URL); the answer, on stdout (or in
the response body), is ``{"allowProvisioning": bool, "parameterOverrides": {str: str}}``.
The hook has a time budget (5 seconds by default, the AWS limit). A crash, a non-zero exit, a
timeout, a body that is not that JSON, or anything but ``"allowProvisioning": true`` denies
provisioning; :class:`HookDecision` records why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

HOOK_TIMEOUT_SECONDS = 5.0
RESPONSE_MAX_BYTES = 64 * 1024

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
    if hook.target.startswith("https://"):
        decision = _call_https(hook, payload)
    elif hook.target.startswith("/"):
        decision = _call_executable(hook, payload)
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
    """Interpret a hook's response body."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _deny(BAD_RESPONSE, f"the hook's answer is not JSON: {exc}")
    except RecursionError:
        return _deny(BAD_RESPONSE, "the hook's answer nests too deeply")
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


def _call_executable(hook: PreProvisioningHook, payload: bytes) -> HookDecision:
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
        )
    except OSError as exc:
        return _deny(FAILED, f"the hook could not be started: {exc.strerror}")
    try:
        stdout, stderr = process.communicate(payload, timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return _deny(TIMED_OUT, f"the hook did not answer within {hook.timeout:g} seconds")
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        how = (
            f"was killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exited with status {process.returncode}"
        )
        return _deny(FAILED, f"the hook {how} {tail[0][:200]}".rstrip())
    if len(stdout) > RESPONSE_MAX_BYTES:
        return _deny(BAD_RESPONSE, "the hook's answer is too long")
    return parse_response(stdout)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=1.0)
    except subprocess.TimeoutExpired:
        # A descendant left the process group and still holds the pipes: stop reading.
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()


def _call_https(hook: PreProvisioningHook, payload: bytes) -> HookDecision:
    result: list[HookDecision] = []

    def run() -> None:
        result.append(_https_request(hook, payload))

    worker = threading.Thread(target=run, name="pre-provisioning-hook", daemon=True)
    worker.start()
    worker.join(hook.timeout)
    if not result:
        return _deny(TIMED_OUT, f"the hook did not answer within {hook.timeout:g} seconds")
    return result[0]


def _https_request(hook: PreProvisioningHook, payload: bytes) -> HookDecision:
    context = ssl.create_default_context(cafile=str(hook.ca_file) if hook.ca_file else None)
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be https
        hook.target,
        data=payload,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - https only
            request, timeout=hook.timeout, context=context
        ) as response:
            body = response.read(RESPONSE_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return _deny(FAILED, f"the hook answered HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return _deny(TIMED_OUT, f"the hook did not answer within {hook.timeout:g} seconds")
        return _deny(FAILED, f"the hook could not be reached: {reason}")
    if len(body) > RESPONSE_MAX_BYTES:
        return _deny(BAD_RESPONSE, "the hook's answer is too long")
    return parse_response(body)
