"""Matter onboarding payloads (``MT:`` + base-38).

They are decoded so that commissioning can give a clear "not supported yet".

Base-38 (alphabet ``0-9A-Z-.``): each 5 characters hold 3 bytes, a 4-character tail 2 bytes
and a 2-character tail 1 byte (little-endian, least significant digit first). The first 11
bytes are a little-endian bit stream: version (3 bits, must be 0), vendor id (16), product
id (16), commissioning flow (2), discovery capabilities (8), discriminator (12), passcode
(27) and 4 padding bits; the rest is optional TLV data. Several payloads may be joined with
``*``; all must be valid.
"""

from __future__ import annotations

from typing import Any

from agent.commissioning.qr.base import QrPayload, qr_error

PREFIX = "MT:"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-."
_VALUES = {c: i for i, c in enumerate(ALPHABET)}
_CHUNK_BYTES = {5: 3, 4: 2, 2: 1}
_FIXED_BYTES = 11
_PASSCODE_MAX = 99999998
_INVALID_PASSCODES = frozenset({11111111 * d for d in range(10)} | {12345678, 87654321})
_FLOWS = 2  # 0 standard, 1 user action, 2 custom; 3 is reserved


def base38_decode(text: str) -> bytes:
    """Decode base-38 text.

    Raises:
        QrFormatError: a character outside the alphabet, a bad tail length or a chunk
            whose value does not fit its bytes.
    """
    out = bytearray()
    for start in range(0, len(text), 5):
        chunk = text[start : start + 5]
        size = _CHUNK_BYTES.get(len(chunk))
        if size is None:
            raise qr_error("the Matter payload has an invalid length", path="payload")
        value = 0
        for char in reversed(chunk):
            digit = _VALUES.get(char)
            if digit is None:
                raise qr_error("the Matter payload has a character outside base-38", path="payload")
            value = value * 38 + digit
        if value >= 1 << (8 * size):
            raise qr_error("the Matter payload has an out-of-range chunk", path="payload")
        out += value.to_bytes(size, "little")
    return bytes(out)


def _decode_one(body: str) -> dict[str, Any]:
    data = base38_decode(body)
    if len(data) < _FIXED_BYTES:
        raise qr_error("the Matter payload is too short", path="payload")
    bits = int.from_bytes(data[:_FIXED_BYTES], "little")
    fields: dict[str, Any] = {}
    offset = 0
    for name, width in (
        ("version", 3),
        ("vendorId", 16),
        ("productId", 16),
        ("commissioningFlow", 2),
        ("discoveryCapabilities", 8),
        ("discriminator", 12),
        ("passcode", 27),
        ("padding", 4),
    ):
        fields[name] = (bits >> offset) & ((1 << width) - 1)
        offset += width
    if fields.pop("padding") != 0:
        raise qr_error("the Matter payload's padding bits are not zero", path="payload")
    if fields["version"] != 0:
        raise qr_error("unknown Matter payload version", "QR_VERSION_UNSUPPORTED", "version")
    if fields["commissioningFlow"] > _FLOWS:
        raise qr_error("reserved Matter commissioning flow", path="commissioningFlow")
    passcode = fields["passcode"]
    if not 0 < passcode <= _PASSCODE_MAX or passcode in _INVALID_PASSCODES:
        raise qr_error("the Matter setup passcode is not allowed", path="passcode")
    fields["tlv"] = data[_FIXED_BYTES:].hex()
    return fields


def parse_matter(text: str) -> QrPayload:
    """Parse an ``MT:`` payload (the first of several joined with ``*``; all are checked).

    Raises:
        QrFormatError: not base-38, too short, a reserved value or a disallowed passcode.
    """
    if not text.startswith(PREFIX):
        raise qr_error("a Matter code starts with MT:", "QR_UNKNOWN_FORMAT")
    decoded = [_decode_one(body) for body in text[len(PREFIX) :].split("*")]
    fields = decoded[0]
    if len(decoded) > 1:
        fields["additionalPayloads"] = len(decoded) - 1
    return QrPayload(
        authentication_material_type=None,
        format="matter",
        fields=fields,
        secrets=frozenset({"passcode"}),
        source=text,
    )
