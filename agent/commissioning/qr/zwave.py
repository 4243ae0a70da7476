"""Z-Wave S2 / SmartStart QR codes (``90…``) and DSK-only codes (``zws2dsk:``).

Layout (Node Provisioning QR Code Format, as zwave-js reads it): ``90``, a 2-digit version
(0 S2, 1 SmartStart), a 5-digit checksum (first 16 bits of SHA-1 over the digits from
offset 9), the 3-digit requested-keys bitmask, the 40-digit DSK (8 blocks of 16 bits),
then TLV blocks ``TT LL value`` where ``TT`` is ``type << 1 | critical``. ProductType (0) and
ProductId (1) are required. Scanner noise is tolerated the way zwave-js 15.20+ does it:
whitespace is removed, and when the whole string is not a code, a valid code is looked for
inside it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr.base import QrPayload, payload, qr_error

MIN_LENGTH = 52
_DIGITS = re.compile(r"[0-9]+")
_CANDIDATE_START = re.compile(r"90[0-9]{50}")
_DSK = re.compile(r"[0-9]{5}(?:-[0-9]{5}){7}")
DSK_PREFIX = "zws2dsk:"
_DSK_LENGTH = 47

#: Requested-keys bit → zwave-js SecurityClass value (S2 classes 0-2, S0 legacy 7).
_SECURITY_BITS = {0: 0, 1: 1, 2: 2, 7: 7}

_TYPE_PRODUCT_TYPE = 0
_TYPE_PRODUCT_ID = 1
_TYPE_MAX_INCLUSION_INTERVAL = 2
_TYPE_UUID16 = 3
_TYPE_SUPPORTED_PROTOCOLS = 4
_REQUIRED_TLVS = frozenset({_TYPE_PRODUCT_TYPE, _TYPE_PRODUCT_ID})
_LEVEL_MAX = 99
_UINT8_MAX = 0xFF
_UINT16_MAX = 0xFFFF


def looks_like_zwave(compact: str) -> bool:
    """Whether whitespace-free text is, or contains, something shaped like a Z-Wave code."""
    return compact.startswith("90") or _CANDIDATE_START.search(compact) is not None


def parse_zwave(text: str, match: re.Match[str] | None = None) -> QrPayload:
    """Parse an S2 or SmartStart code, tolerating scanner noise around it.

    ``match`` is :data:`CODE`'s full match of ``text``, when the caller has it.

    Raises:
        QrFormatError: no valid code in ``text``; the reason is that of the whole string.
    """
    if match is None:
        match = CODE.fullmatch(text)
    compact = text if match is not None else "".join(text.split())
    try:
        return from_match(match, compact) if match is not None else _parse_strict(compact)
    except QrFormatError as first:
        found = _extract(compact)
        if found is not None:
            return found
        raise first from None


def parse_dsk(text: str) -> QrPayload:
    """Parse a DSK-only code: ``zws2dsk:<dsk>`` or a bare DSK (8 blocks ``nnnnn-``)."""
    value = text.strip()
    value = value.removeprefix(DSK_PREFIX)
    if not _DSK.fullmatch(value):
        raise qr_error("a DSK is 8 blocks of 5 digits joined by '-'", path="dsk")
    blocks = [int(b) for b in value.split("-")]
    if any(b > _UINT16_MAX for b in blocks):
        raise qr_error("a DSK block is larger than 65535", path="dsk")
    return _payload("zwave-dsk", {"dsk": value}, value)


def is_dsk(text: str) -> bool:
    """Whether ``text`` is shaped like a DSK-only code (its blocks are not yet checked)."""
    value = text.strip()
    return value.startswith(DSK_PREFIX) or (
        len(value) == _DSK_LENGTH and _DSK.fullmatch(value) is not None
    )


def dsk_mask(dsk: str) -> str:
    """The DSK with its first block (the PIN printed on the device) hidden."""
    return "*****" + dsk[5:]


def _payload(fmt: str, fields: dict[str, Any], source: str) -> QrPayload:
    return payload(
        "ZWAVE_QR_BAR_CODE", fmt, fields, _SECRETS, {"dsk": dsk_mask(fields["dsk"])}, source
    )


_SECRETS = frozenset({"dsk"})


def _number(qr: str, offset: int, width: int, limit: int, what: str) -> int:
    chunk = qr[offset : offset + width]
    if len(chunk) != width:  # the whole code is already known to be ASCII digits
        raise qr_error(f"{what} is cut short", path=what)
    value = int(chunk)
    if value > limit:
        raise qr_error(f"{what} is out of range", path=what)
    return value


#: A 5-digit number up to 65535.
_U16 = r"(?:[0-5][0-9]{4}|6(?:[0-4][0-9]{3}|5(?:[0-4][0-9]{2}|5(?:[0-2][0-9]|3[0-5]))))"
#: A code whose fixed part is valid as to form and ranges: version 0 or 1, checksum,
#: requested keys (up to 255), 8 DSK blocks; then, when present and in range, ProductType
#: and ProductId non-critical right after the DSK, as codes are printed, and a
#: SupportedProtocols block after them (the Z-Wave Long Range codes); then the digits
#: left for the block-by-block reading. ``[0-9]`` is ASCII only: a match is all digits.
CODE = re.compile(
    rf"90(0[01])({_U16})([01][0-9]{{2}}|2[0-4][0-9]|25[0-5])"
    + rf"({_U16})" * 8
    + rf"(?:0010({_U16})({_U16})0220({_U16})({_U16})({_U16})({_U16})"
    r"(?:0803([01][0-9]{2}|2[0-4][0-9]|25[0-5]))?)?"  # and often SupportedProtocols, 8 bits
    r"[0-9]*"
)
#: Any code's shape, whatever its numbers: read when :data:`CODE` does not match, to name
#: what is wrong.
_SHAPE = re.compile(r"90([0-9]{2})([0-9]{5})([0-9]{3})([0-9]{40})[0-9]*")
_PRODUCT_END = MIN_LENGTH + 38
_SHA1 = hashlib.sha1
_FROM_BYTES = int.from_bytes


def _parse_strict(qr: str) -> QrPayload:
    match = CODE.fullmatch(qr)
    if match is not None:
        return from_match(match, qr)
    shape = _SHAPE.fullmatch(qr)
    if shape is None:
        if not qr.startswith("90"):
            raise qr_error("a Z-Wave code starts with 90", "QR_UNKNOWN_FORMAT")
        if len(qr) < MIN_LENGTH:
            raise qr_error("a Z-Wave code has at least 52 digits")
        raise qr_error("a Z-Wave code has only digits")
    version, stored, _keys, dsk = shape.groups()
    if version > "01":
        raise qr_error(
            "Z-Wave code version must be 0 (S2) or 1 (SmartStart)",
            "QR_VERSION_UNSUPPORTED",
            "version",
        )
    if stored > "65535" or not _checksum_matches(qr):  # fixed width: text order is number order
        raise _checksum_error()
    if max(dsk[i : i + 5] for i in range(0, 40, 5)) > "65535":
        raise qr_error("dsk is out of range", path="dsk")
    raise qr_error("requestedSecurityClasses is out of range", path="requestedSecurityClasses")


def _checksum_error() -> QrFormatError:
    return qr_error("the Z-Wave code checksum does not match", "QR_CHECKSUM_MISMATCH", "checksum")


def from_match(match: re.Match[str], qr: str) -> QrPayload:
    """The code ``qr`` that :data:`CODE` matched (so its numbers are in range), decoded."""
    groups = match.groups()
    if int(groups[1]) != _checksum(qr):
        raise _checksum_error()
    classes = _CLASSES[int(groups[2])]
    if classes is None:
        raise qr_error("unknown security class requested", path="requestedSecurityClasses")
    if groups[0] == "00":
        fmt, version = "zwave-s2", 0
    else:
        fmt, version = "zwave-smartstart", 1
    dsk = "-".join(groups[3:11])
    product = groups[11:17]
    if product[0] is not None:
        device_class, icon, manufacturer, product_type, product_id, app_version = map(int, product)
        fields: dict[str, Any] = {
            "version": version,
            "requestedSecurityClasses": list(classes),
            "dsk": dsk,
            "genericDeviceClass": device_class >> 8,
            "specificDeviceClass": device_class & 0xFF,
            "installerIconType": icon,
            "manufacturerId": manufacturer,
            "productType": product_type,
            "productId": product_id,
            "applicationVersion": f"{app_version >> 8}.{app_version & 0xFF}",
        }
        offset = _PRODUCT_END
        protocols = groups[17]
        if protocols is not None:
            fields["supportedProtocols"] = list(_BITS_LOW[int(protocols)])
            offset += 7
        if len(qr) > offset:
            _tlvs(qr, offset, fields, set())
    else:
        fields = {"version": version, "requestedSecurityClasses": list(classes), "dsk": dsk}
        if not _tlvs(qr, MIN_LENGTH, fields, set()) >= _REQUIRED_TLVS:
            raise qr_error(
                "a Z-Wave code must carry ProductType and ProductId",
                "QR_FIELD_MISSING",
                "productId",
            )
    return _payload(fmt, fields, qr)


def _tlvs(qr: str, offset: int, fields: dict[str, Any], seen: set[int]) -> set[int]:
    """Read the TLV blocks from ``offset`` into ``fields``; return ``seen`` and their types."""
    end = len(qr)
    while offset < end:  # TLV blocks: type<<1|critical (2 digits), length (2), value
        if end - offset < 4:  # noqa: PLR2004 - type and length, 2 digits each
            raise qr_error("incomplete TLV block", path="tlv")
        type_critical = int(qr[offset : offset + 2])
        start = offset + 4
        offset = start + int(qr[offset + 2 : start])
        if offset > end:
            raise qr_error("incomplete TLV block", path="tlv")
        kind = type_critical >> 1
        if not _tlv_data(kind, qr[start:offset], fields) and type_critical & 1:
            raise qr_error(f"unsupported critical TLV block {kind}", path="tlv")
        seen.add(kind)
    return seen


def _classes_of(keys: int) -> tuple[int, ...] | None:
    classes = [bit for bit in range(8) if keys >> bit & 1]
    if any(bit not in _SECURITY_BITS for bit in classes):
        return None
    return tuple(_SECURITY_BITS[b] for b in classes)


#: The digits of a supported-protocols bitmask → the largest value they may hold.
_PROTOCOL_WIDTHS = {2: _LEVEL_MAX, 3: _UINT8_MAX, 5: _UINT16_MAX}
#: A byte → the numbers of its set bits (low byte), and the same plus 8 (high byte).
_BITS_LOW = tuple(tuple(bit for bit in range(8) if byte >> bit & 1) for byte in range(256))
_BITS_HIGH = tuple(tuple(bit + 8 for bit in bits) for bits in _BITS_LOW)

#: requested-keys byte → its security classes, or None when it names an unknown one.
_CLASSES = tuple(_classes_of(keys) for keys in range(_UINT8_MAX + 1))


def _tlv_data(kind: int, data: str, fields: dict[str, Any]) -> bool:  # noqa: PLR0911 - one per type
    if kind <= _TYPE_PRODUCT_ID and _product_fast(kind, data, fields):
        return True
    if kind == _TYPE_PRODUCT_TYPE:
        classes = _number(data, 0, 5, _UINT16_MAX, "genericDeviceClass")
        fields["genericDeviceClass"] = classes >> 8
        fields["specificDeviceClass"] = classes & 0xFF
        fields["installerIconType"] = _number(data, 5, 5, _UINT16_MAX, "installerIconType")
        return True
    if kind == _TYPE_PRODUCT_ID:
        fields["manufacturerId"] = _number(data, 0, 5, _UINT16_MAX, "manufacturerId")
        fields["productType"] = _number(data, 5, 5, _UINT16_MAX, "productType")
        fields["productId"] = _number(data, 10, 5, _UINT16_MAX, "productId")
        version = _number(data, 15, 5, _UINT16_MAX, "applicationVersion")
        fields["applicationVersion"] = f"{version >> 8}.{version & 0xFF}"
        return True
    if kind == _TYPE_MAX_INCLUSION_INTERVAL:
        level = _number(data, 0, 2, _LEVEL_MAX, "maxInclusionRequestInterval")
        fields["maxInclusionRequestInterval"] = 128 * level
        return True
    if kind == _TYPE_UUID16:
        if _number(data, 0, 2, _LEVEL_MAX, "uuid") != 0:
            return False  # only presentation format 0 is defined as 8 blocks
        words = [_number(data, 2 + 5 * i, 5, _UINT16_MAX, "uuid") for i in range(8)]
        fields["uuid"] = "".join(f"{w:04x}" for w in words)
        return True
    if kind == _TYPE_SUPPORTED_PROTOCOLS:
        limit = _PROTOCOL_WIDTHS.get(len(data))
        if limit is None:
            return False
        mask = _number(data, 0, len(data), limit, "supportedProtocols")
        fields["supportedProtocols"] = [*_BITS_LOW[mask & 0xFF], *_BITS_HIGH[mask >> 8]]
        return True
    return False


def _product_fast(kind: int, data: str, fields: dict[str, Any]) -> bool:
    """ProductType / ProductId when every number is there and in range (the usual code).

    False leaves the block to the field-by-field path, which names the field at fault.
    """
    if kind == _TYPE_PRODUCT_TYPE:
        if len(data) < 10 or max(data[0:5], data[5:10]) > "65535":  # noqa: PLR2004
            return False
        classes = int(data[0:5])
        fields["genericDeviceClass"] = classes >> 8
        fields["specificDeviceClass"] = classes & 0xFF
        fields["installerIconType"] = int(data[5:10])
        return True
    if len(data) < 20 or max(data[0:5], data[5:10], data[10:15], data[15:20]) > "65535":  # noqa: PLR2004
        return False
    version = int(data[15:20])
    fields["manufacturerId"] = int(data[0:5])
    fields["productType"] = int(data[5:10])
    fields["productId"] = int(data[10:15])
    fields["applicationVersion"] = f"{version >> 8}.{version & 0xFF}"
    return True


def _checksum(digits: str) -> int:
    """The checksum of a code: the first 16 bits of SHA-1 over its digits from offset 9."""
    return _FROM_BYTES(_SHA1(digits[9:].encode("ascii")).digest()[:2], "big")


def _checksum_matches(digits: str) -> bool:
    """Whether a digit string's stored checksum is that of its tail (nothing else checked)."""
    stored = digits[4:9]
    return stored <= "65535" and int(stored) == _checksum(digits)


def _boundaries(candidate: str) -> list[int]:
    """Where a code starting at 0 could end: after the DSK and after each whole TLV block."""
    ends = [MIN_LENGTH]
    offset = MIN_LENGTH
    while len(candidate) - offset >= 4:  # noqa: PLR2004 - type and length
        length = int(candidate[offset + 2 : offset + 4])
        if len(candidate) - offset - 4 < length:
            break
        offset += 4 + length
        ends.append(offset)
    return ends


def _extract(compact: str) -> QrPayload | None:
    """A valid code inside noisy text, as zwave-js ≥ 15.20 finds one (longest first)."""
    for run in _DIGITS.finditer(compact):
        digits = run.group()
        start = digits.find("90")
        while 0 <= start <= len(digits) - MIN_LENGTH:
            candidate = digits[start:]
            for end in reversed(_boundaries(candidate)):
                code = candidate[:end]
                if not _checksum_matches(code):
                    continue  # what most candidates fail: skip them without an exception
                try:
                    return _parse_strict(code)
                except QrFormatError:
                    continue
            start = digits.find("90", start + 1)
    return None
