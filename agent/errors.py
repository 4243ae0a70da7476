"""The agent's errors and their wire shape.

Every error the agent reports derives from :class:`AgentError`. Each class carries the seed
exception name (``code``), its HTTP status (``status_code``) and the CLI exit code; each
instance carries a stable upper-snake ``reason``, a human ``message`` and, for validation
problems, the list of offending field paths. The wire shape is the same on the CLI, the local
API and MQTT::

    {"error": {"code": "ValidationException", "statusCode": 400,
               "reason": "CERTIFICATE_EXPIRED", "message": "...", "fields": [...]}}

Messages never contain secrets: callers pass descriptions, never key material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

_REASON_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: Reasons already found well-formed (they are a few dozen literals; errors are raised often).
_CHECKED_REASONS: set[str] = set()
_CHECKED_REASONS_MAX = 512

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem with one input field, named by its path (``Ntp.NtpServers[2]``)."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """Return the wire form."""
        return {"path": self.path, "message": self.message}


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    code: ClassVar[str] = "InternalServerException"
    status_code: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_RUNTIME
    retryable: ClassVar[bool] = False
    default_reason: ClassVar[str] = "INTERNAL_ERROR"

    registry: ClassVar[dict[str, type[AgentError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        AgentError.registry[cls.__name__] = cls

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        fields: list[FieldProblem] | tuple[FieldProblem, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        if self.reason not in _CHECKED_REASONS:
            if not _REASON_RE.match(self.reason):
                raise ValueError(f"reason must be UPPER_SNAKE, got {self.reason!r}")
            if len(_CHECKED_REASONS) < _CHECKED_REASONS_MAX:  # bounded: peers send reasons too
                _CHECKED_REASONS.add(self.reason)
        self.fields: tuple[FieldProblem, ...] = tuple(fields)

    def to_dict(self) -> dict[str, Any]:
        """Return the error in the wire shape shared by CLI, local API and MQTT."""
        body: dict[str, Any] = {
            "code": self.code,
            "statusCode": self.status_code,
            "reason": self.reason,
            "message": self.message,
        }
        if self.fields:
            body["fields"] = [f.to_dict() for f in self.fields]
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def error_from_dict(data: dict[str, Any]) -> AgentError:
    """Rebuild an error from its wire shape (the receiving side of MQTT or the local API)."""
    body = data["error"]
    code = body["code"]
    cls: type[AgentError] = next(
        (
            c
            for c in AgentError.registry.values()
            if c.code == code and c.__bases__ == (AgentError,)
        ),
        AgentError,
    )
    fields = [FieldProblem(f["path"], f["message"]) for f in body.get("fields", [])]
    return cls(body["message"], reason=body["reason"], fields=fields)


# --- seed exception families -------------------------------------------------------------


class ValidationError(AgentError):
    """The request contains an invalid parameter value (seed ``ValidationException``)."""

    code = "ValidationException"
    status_code = 400
    exit_code = EXIT_REJECTED
    default_reason = "FIELD_VALIDATION_FAILED"


class InvalidRequestError(AgentError):
    """The request is not valid (seed ``InvalidRequestException``)."""

    code = "InvalidRequestException"
    status_code = 400
    exit_code = EXIT_REJECTED
    default_reason = "INVALID_REQUEST"


class ConflictError(AgentError):
    """The target resource is in use or already consumed (seed ``ConflictException``)."""

    code = "ConflictException"
    status_code = 409
    exit_code = EXIT_REJECTED
    default_reason = "CONFLICT"


class ResourceNotFoundError(AgentError):
    """The named resource does not exist (seed ``ResourceNotFoundException``)."""

    code = "ResourceNotFoundException"
    status_code = 404
    exit_code = EXIT_REJECTED
    default_reason = "RESOURCE_NOT_FOUND"


class ResourceAlreadyExistsError(AgentError):
    """The resource already exists (seed ``ResourceAlreadyExistsException``)."""

    code = "ResourceAlreadyExistsException"
    status_code = 409
    exit_code = EXIT_REJECTED
    default_reason = "RESOURCE_ALREADY_EXISTS"


class LimitExceededError(AgentError):
    """A number of resources would exceed a limit (seed ``LimitExceededException``)."""

    code = "LimitExceededException"
    status_code = 410
    exit_code = EXIT_REJECTED
    default_reason = "LIMIT_EXCEEDED"


class InternalError(AgentError):
    """Something failed inside the agent (seed ``InternalServerException``)."""


# --- agent families (domain errors; each maps to one seed exception) ----------------------


class ConfigError(AgentError):
    """The agent's own configuration file or a board profile is wrong."""

    code = "ValidationException"
    status_code = 400
    exit_code = EXIT_USAGE
    default_reason = "CONFIG_INVALID"


class ArchiveError(ValidationError):
    """A provisioning archive was refused."""

    default_reason = "ARCHIVE_INVALID"


class UnsafeEntryError(ArchiveError):
    """The archive's layout is unsafe (paths, links, sizes, ratios, encryption)."""

    default_reason = "UNSAFE_ENTRY"


class ManifestError(ArchiveError):
    """``manifest.json`` is malformed or does not match the archive."""

    default_reason = "MANIFEST_INVALID"


class SignatureError(ArchiveError):
    """A signature or certificate chain does not verify."""

    default_reason = "SIGNATURE_INVALID"


class CertificateError(ArchiveError):
    """The claim certificate or its key is unacceptable."""

    default_reason = "CERTIFICATE_INVALID"


class ArchiveReusedError(ConflictError):
    """The archive was already installed on this appliance (archives are single use)."""

    default_reason = "ARCHIVE_ALREADY_USED"


class StateError(AgentError):
    """The agent's state could not be read or written."""

    default_reason = "STATE_ERROR"


class CorruptStateError(StateError):
    """The agent's state is unreadable (damaged database or files)."""

    default_reason = "STATE_CORRUPT"


class ApplyError(AgentError):
    """Applying a configuration to the system failed (and was rolled back)."""

    default_reason = "APPLY_FAILED"
