"""QR code parsers: pure functions from the scanned text to a :class:`QrPayload`.

:func:`parse` dispatches on the code's shape: ``WIFI:`` (network credentials), ``DPP:``
(Wi-Fi Easy Connect), ``MT:`` (Matter), ``zws2dsk:`` or a bare DSK (Z-Wave S2), the Zigbee
install-code layouts, then Z-Wave S2/SmartStart ``90…`` (also found inside scanner noise).
Anything else is ``QR_UNKNOWN_FORMAT``. Errors are :class:`QrFormatError` and never quote
the code.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr.base import (
    REDACTED,
    AuthenticationMaterialType,
    QrPayload,
    qr_error,
)
from agent.commissioning.qr.dpp import parse_dpp
from agent.commissioning.qr.matter import parse_matter
from agent.commissioning.qr.wifi import parse_wifi
from agent.commissioning.qr.zigbee import parse_zigbee
from agent.commissioning.qr.zwave import CODE as ZWAVE_CODE
from agent.commissioning.qr.zwave import is_dsk, looks_like_zwave, parse_dsk, parse_zwave

__all__ = [
    "MAX_LENGTH",
    "REDACTED",
    "AuthenticationMaterialType",
    "QrFormatError",
    "QrPayload",
    "parse",
    "parse_as",
]

#: Longer input is refused before any parsing (a QR code holds at most 4296 characters).
MAX_LENGTH = 4296

_PREFIXED: dict[str, Callable[[str], QrPayload]] = {
    "MT:": parse_matter,
    "DPP:": parse_dpp,
    "WIFI": parse_wifi,
}


def parse(text: str, *, repair_zigbee_crc: bool = False) -> QrPayload:
    """Decode one scanned code.

    Args:
        text: the scanner's output (surrounding whitespace and line breaks are ignored);
            the result's ``source`` is the code itself (for Z-Wave, the valid code found).
        repair_zigbee_crc: accept a Zigbee install code with a wrong CRC, replacing it
            (the result then carries ``crcRepaired: true``).

    Raises:
        QrFormatError: the code is not valid in any supported format.
    """
    if not isinstance(text, str):
        raise qr_error("the code must be text")
    if len(text) > MAX_LENGTH:
        raise qr_error("the code is longer than any QR code can be")
    stripped = text.strip()
    if not stripped:
        raise qr_error("the code is empty", "QR_UNKNOWN_FORMAT")
    if stripped.startswith("90"):
        match = ZWAVE_CODE.fullmatch(stripped)  # digits only: no other format
        if match is not None:
            return parse_zwave(stripped, match)
    prefixed = _PREFIXED.get(stripped[:3]) or _PREFIXED.get(stripped[:4])
    if prefixed is not None:
        return prefixed(stripped)
    if is_dsk(stripped):
        return parse_dsk(stripped)
    found = parse_zigbee(stripped, repair_crc=repair_zigbee_crc)
    if found is not None:
        return found
    compact = "".join(stripped.split())
    if looks_like_zwave(compact):
        return parse_zwave(stripped)
    raise qr_error("the code is not in any supported format", "QR_UNKNOWN_FORMAT")


def parse_as(
    text: str, material_type: AuthenticationMaterialType, *, repair_zigbee_crc: bool = False
) -> QrPayload:
    """Decode a code that must be of ``material_type`` (``QR_TYPE_MISMATCH`` otherwise)."""
    payload = parse(text, repair_zigbee_crc=repair_zigbee_crc)
    if payload.authentication_material_type != material_type:
        raise qr_error(
            f"the code is a {payload.format} code, not {material_type}",
            "QR_TYPE_MISMATCH",
            "AuthenticationMaterial",
        )
    return payload
