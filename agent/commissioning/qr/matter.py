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

from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr.base import NO_MASKS, QrPayload, payload, qr_error

PREFIX = "MT:"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-."
_VALUES = {c: i for i, c in enumerate(ALPHABET)}
#: Two base-38 digits (least significant first) → their value.
_PAIRS = {a + b: _VALUES[a] + 38 * _VALUES[b] for a in ALPHABET for b in ALPHABET}
_BASE2 = 38**2
_BASE4 = 38**4
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
    pairs, values = _PAIRS, _VALUES
    total = shift = 0
    for start in range(0, len(text), 5):
        chunk = text[start : start + 5]
        size = _CHUNK_BYTES.get(len(chunk))
        if size is None:
            raise qr_error("the Matter payload has an invalid length", path="payload")
        try:  # least significant digit first: two digits per look-up
            if size == 3:  # noqa: PLR2004 - a full chunk: 5 digits, 3 bytes
                value = pairs[chunk[0:2]] + pairs[chunk[2:4]] * _BASE2 + values[chunk[4]] * _BASE4
            elif size == 2:  # noqa: PLR2004
                value = pairs[chunk[0:2]] + pairs[chunk[2:4]] * _BASE2
            else:
                value = pairs[chunk]
        except KeyError:
            raise qr_error(
                "the Matter payload has a character outside base-38", path="payload"
            ) from None
        if value >> (8 * size):
            raise qr_error("the Matter payload has an out-of-range chunk", path="payload")
        total |= value << shift
        shift += 8 * size
    return total.to_bytes(shift // 8, "little")


def _decode_one(body: str) -> dict[str, Any]:
    data = base38_decode(body)
    if len(data) < _FIXED_BYTES:
        raise qr_error("the Matter payload is too short", path="payload")
    bits = int.from_bytes(data[:_FIXED_BYTES], "little")
    # version 3 bits, vendor id 16, product id 16, flow 2, discovery 8, discriminator 12,
    # passcode 27, padding 4
    if bits >> 84:
        raise qr_error("the Matter payload's padding bits are not zero", path="payload")
    if bits & 7:
        raise qr_error("unknown Matter payload version", "QR_VERSION_UNSUPPORTED", "version")
    flow = bits >> 35 & 3
    if flow > _FLOWS:
        raise qr_error("reserved Matter commissioning flow", path="commissioningFlow")
    passcode = bits >> 57 & 0x7FFFFFF
    if not 0 < passcode <= _PASSCODE_MAX or passcode in _INVALID_PASSCODES:
        raise qr_error("the Matter setup passcode is not allowed", path="passcode")
    fields: dict[str, Any] = {
        "version": 0,
        "vendorId": bits >> 3 & 0xFFFF,
        "productId": bits >> 19 & 0xFFFF,
        "commissioningFlow": flow,
        "discoveryCapabilities": bits >> 37 & 0xFF,
        "discriminator": bits >> 45 & 0xFFF,
        "passcode": passcode,
        "tlv": data[_FIXED_BYTES:].hex(),
    }
    if len(data) > _FIXED_BYTES:
        fields["optionalData"] = decode_optional_data(data[_FIXED_BYTES:])
    return fields


_INT_SIZES = {0: 1, 1: 2, 2: 4, 3: 8}
_TAG_SIZES = {0: 0, 1: 1, 2: 2, 3: 4, 4: 2, 5: 4, 6: 6, 7: 8}
_END = 0x18
_MAX_DEPTH = 8


def _cut_short() -> QrFormatError:
    return qr_error("the Matter optional data is cut short", path="optionalData")


def _take(data: bytes, pos: int, size: int) -> bytes:
    raw = data[pos : pos + size]
    if len(raw) != size:
        raise _cut_short()
    return raw


def _tlv_scalar(data: bytes, pos: int, kind: int) -> tuple[Any, int]:
    if kind <= 0x07:  # noqa: PLR2004 - signed (0-3) and unsigned (4-7) integers
        size = _INT_SIZES[kind & 3]
        return int.from_bytes(_take(data, pos, size), "little", signed=kind < 4), pos + size  # noqa: PLR2004
    if kind in {0x08, 0x09}:
        return kind == 0x09, pos  # noqa: PLR2004 - false, true
    if kind == 0x14:  # noqa: PLR2004 - null
        return None, pos
    if 0x0C <= kind <= 0x13:  # noqa: PLR2004 - UTF-8 (0x0C-0x0F) and byte strings
        size = _INT_SIZES[kind & 3]
        length = int.from_bytes(_take(data, pos, size), "little")
        raw = _take(data, pos + size, length)
        if kind > 0x0F:  # noqa: PLR2004
            return raw.hex(), pos + size + length
        try:
            return raw.decode("utf-8"), pos + size + length
        except UnicodeDecodeError:
            raise qr_error(
                "the Matter optional data has invalid text", path="optionalData"
            ) from None
    raise qr_error("the Matter optional data has an unsupported element", path="optionalData")


def _tlv_element(data: bytes, pos: int, depth: int) -> tuple[int | None, Any, int]:
    """One Matter TLV element at ``pos``: (tag or None, value, next position)."""
    if depth > _MAX_DEPTH:
        raise qr_error("the Matter optional data is nested too deeply", path="optionalData")
    control = _take(data, pos, 1)[0]
    tag_size, kind = _TAG_SIZES[control >> 5], control & 0x1F
    tag = int.from_bytes(_take(data, pos + 1, tag_size), "little") if tag_size else None
    pos += 1 + tag_size
    if kind not in {0x15, 0x16, 0x17}:
        value, pos = _tlv_scalar(data, pos, kind)
        return tag, value, pos
    items: list[tuple[int | None, Any]] = []
    while _take(data, pos, 1)[0] != _END:
        item_tag, item, pos = _tlv_element(data, pos, depth + 1)
        items.append((item_tag, item))
    if kind == 0x15:  # noqa: PLR2004 - structure
        return tag, {str(t): v for t, v in items}, pos + 1
    return tag, [v for _, v in items], pos + 1


def decode_optional_data(data: bytes) -> dict[str, Any]:
    """The optional TLV data after the header: an anonymous structure of context tags.

    Tag 0 is the serial number (``serialNumber``); other tags keep their number (vendor
    tags are 0x80-0xFF).

    Raises:
        QrFormatError: not one well-formed TLV structure.
    """
    _tag, value, end = _tlv_element(data, 0, 0)
    if not isinstance(value, dict) or end != len(data):
        raise qr_error("the Matter optional data is not one TLV structure", path="optionalData")
    if "0" in value:
        value["serialNumber"] = value.pop("0")
    return value


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
    return payload(None, "matter", fields, _SECRETS, NO_MASKS, text)


_SECRETS = frozenset({"passcode"})
