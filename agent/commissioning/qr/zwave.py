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
from agent.commissioning.qr.base import QrPayload, qr_error

MIN_LENGTH = 52
_DIGITS = re.compile(r"[0-9]+")
_CANDIDATE_START = re.compile(r"90[0-9]{50}")
_DSK = re.compile(r"[0-9]{5}(?:-[0-9]{5}){7}")
DSK_PREFIX = "zws2dsk:"

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


def parse_zwave(text: str) -> QrPayload:
    """Parse an S2 or SmartStart code, tolerating scanner noise around it.

    Raises:
        QrFormatError: no valid code in ``text``; the reason is that of the whole string.
    """
    compact = text if text.isdigit() else "".join(text.split())
    try:
        return _parse_strict(compact)
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
    return value.startswith(DSK_PREFIX) or _DSK.fullmatch(value) is not None


def dsk_mask(dsk: str) -> str:
    """The DSK with its first block (the PIN printed on the device) hidden."""
    return "*****" + dsk[5:]


def _payload(fmt: str, fields: dict[str, Any], source: str) -> QrPayload:
    return QrPayload(
        "ZWAVE_QR_BAR_CODE",
        fmt,
        fields,
        secrets=_SECRETS,
        masks={"dsk": "*****" + fields["dsk"][5:]},
        source=source,
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


def _checksum(qr: str) -> int:
    return int.from_bytes(hashlib.sha1(qr[9:].encode("ascii")).digest()[:2], "big")  # noqa: S324 - the format's checksum, not security


_FIXED = re.compile(r"90([0-9]{2})([0-9]{5})([0-9]{3})" + r"([0-9]{5})" * 8 + r"[0-9]*")


def _parse_strict(qr: str) -> QrPayload:
    fixed = _FIXED.fullmatch(qr)
    if fixed is None:
        if not qr.startswith("90"):
            raise qr_error("a Z-Wave code starts with 90", "QR_UNKNOWN_FORMAT")
        if len(qr) < MIN_LENGTH:
            raise qr_error("a Z-Wave code has at least 52 digits")
        raise qr_error("a Z-Wave code has only digits")
    version_text, stored_text, keys_text, *block_texts = fixed.groups()
    version = int(version_text)
    if version > 1:
        raise qr_error(
            "Z-Wave code version must be 0 (S2) or 1 (SmartStart)",
            "QR_VERSION_UNSUPPORTED",
            "version",
        )
    stored = int(stored_text)
    if stored > _UINT16_MAX or stored != _checksum(qr):
        raise qr_error(
            "the Z-Wave code checksum does not match", "QR_CHECKSUM_MISMATCH", "checksum"
        )
    if max(block_texts) > "65535":  # five digits each: text order is number order
        raise qr_error("dsk is out of range", path="dsk")
    fields: dict[str, Any] = {
        "version": version,
        "requestedSecurityClasses": _security_classes(int(keys_text)),
        "dsk": "-".join(block_texts),
    }
    if not _tlvs(qr, fields) >= _REQUIRED_TLVS:
        raise qr_error(
            "a Z-Wave code must carry ProductType and ProductId", "QR_FIELD_MISSING", "productId"
        )
    fmt = "zwave-smartstart" if version == 1 else "zwave-s2"
    return _payload(fmt, fields, qr)


#: ProductType then ProductId, non-critical, right after the DSK: how codes are printed.
_PRODUCT_BLOCKS = re.compile(
    r"0010([0-9]{5})([0-9]{5})0220([0-9]{5})([0-9]{5})([0-9]{5})([0-9]{5})"
)


def _product_blocks(qr: str, fields: dict[str, Any]) -> int:
    """Read the usual ProductType and ProductId blocks at once; return where they end (or 0).

    Anything else (another order, a critical bit, a number out of range) is left to the
    block-by-block reading.
    """
    match = _PRODUCT_BLOCKS.match(qr, MIN_LENGTH)
    if match is None or max(match.groups()) > "65535":
        return 0
    classes, icon, manufacturer, product_type, product_id, version = map(int, match.groups())
    fields["genericDeviceClass"] = classes >> 8
    fields["specificDeviceClass"] = classes & 0xFF
    fields["installerIconType"] = icon
    fields["manufacturerId"] = manufacturer
    fields["productType"] = product_type
    fields["productId"] = product_id
    fields["applicationVersion"] = f"{version >> 8}.{version & 0xFF}"
    return match.end()


def _tlvs(qr: str, fields: dict[str, Any]) -> set[int]:
    """Read the TLV blocks after the DSK into ``fields``; return the types seen."""
    end = len(qr)
    offset = _product_blocks(qr, fields)
    if offset:
        seen = {_TYPE_PRODUCT_TYPE, _TYPE_PRODUCT_ID}
    else:
        offset, seen = MIN_LENGTH, set()
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


#: requested-keys byte → its security classes, or None when it names an unknown one.
_CLASSES = tuple(_classes_of(keys) for keys in range(_UINT8_MAX + 1))


def _security_classes(keys: int) -> list[int]:
    if keys > _UINT8_MAX:
        raise qr_error("requestedSecurityClasses is out of range", path="requestedSecurityClasses")
    classes = _CLASSES[keys]
    if classes is None:
        raise qr_error("unknown security class requested", path="requestedSecurityClasses")
    return list(classes)


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
        widths = {2: _LEVEL_MAX, 3: _UINT8_MAX, 5: _UINT16_MAX}
        if len(data) not in widths:
            return False
        mask = _number(data, 0, len(data), widths[len(data)], "supportedProtocols")
        fields["supportedProtocols"] = [bit for bit in range(16) if mask >> bit & 1]
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
                try:
                    return _parse_strict(candidate[:end])
                except QrFormatError:
                    continue
            start = digits.find("90", start + 1)
    return None
