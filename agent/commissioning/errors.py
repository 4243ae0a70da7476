"""Errors of QR parsing and commissioning (each maps to one seed exception)."""

from __future__ import annotations

from agent.errors import AgentError, ValidationError


class QrFormatError(ValidationError):
    """A scanned code is not a valid code of any supported format.

    Reasons: ``QR_UNKNOWN_FORMAT``, ``QR_CHECKSUM_MISMATCH``, ``QR_FIELD_INVALID``,
    ``QR_FIELD_MISSING``, ``QR_VERSION_UNSUPPORTED``, ``QR_TYPE_MISMATCH``. Messages never
    quote the code (it carries secrets).
    """

    default_reason = "QR_FIELD_INVALID"


class CommissioningError(AgentError):
    """Commissioning a device failed."""

    default_reason = "COMMISSIONING_FAILED"


class UnsupportedDeviceError(ValidationError):
    """The code is valid but this appliance cannot commission that kind of device."""

    default_reason = "DEVICE_NOT_SUPPORTED"


class CommissioningTimeoutError(CommissioningError):
    """The device did not join within its window."""

    default_reason = "JOIN_TIMEOUT"


class RadioError(CommissioningError):
    """A radio, its library or its server failed."""

    code = "ServiceUnavailableException"
    status_code = 503
    default_reason = "RADIO_FAILED"


class RadioUnavailableError(RadioError):
    """The radio backend is not configured, not reachable or not started (retry later)."""

    retryable = True
    default_reason = "RADIO_UNAVAILABLE"


class CommissioningUnavailableError(AgentError):
    """Managed things cannot be served now (their database could not be opened)."""

    code = "ServiceUnavailableException"
    status_code = 503
    retryable = True
    default_reason = "COMMISSIONING_UNAVAILABLE"
