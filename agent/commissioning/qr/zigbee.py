"""Zigbee install-code QR formats.

There is no Zigbee Alliance QR standard; vendors print one of a few de-facto layouts, kept
here as data (:data:`FORMATS`). Each gives the device's EUI-64 and either an install code
(6, 8, 12 or 16 bytes plus a CRC-16/X-25, little-endian) or, in Bosch's link-key form, the
link key itself. The CRC is checked strictly; with ``repair_crc`` a wrong CRC is replaced
(as zigbee-herdsman does) and the result says so (``crcRepaired``).

The link key of an install code is its AES-MMO hash, computed by zigpy's
``convert_install_code``. Parsing checks the install code (length and CRC, all that can make
the hash fail) and leaves the hash to the first use of the key: the radio backend,
``--show-secrets`` output, any read of :attr:`QrPayload.fields`. A redacted answer (every
scan, every ``qr parse`` without ``--show-secrets``) never needs it.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from agent.commissioning.qr.base import NO_MASKS, PENDING, QrPayload, payload, qr_error

_HEX = "[0-9A-Fa-f]"
#: Install code lengths in bytes, CRC included.
INSTALL_CODE_SIZES = (8, 10, 14, 18)


@dataclass(frozen=True, slots=True)
class ZigbeeFormat:
    """One vendor layout: a regex with the named groups ``ieee`` and ``code`` or ``key``.

    ``hint`` is a literal every match contains (tested first: far cheaper than the regex).
    """

    name: str
    pattern: re.Pattern[str]
    anchored: bool
    hint: str
    #: The layout carries the link key itself (group ``key``) instead of an install code.
    link_key: bool = False


FORMATS: tuple[ZigbeeFormat, ...] = (
    # Z:<eui64>$I:<code> with optional leading and trailing records (Ubisys, Inovelli, Somfy,
    # Ledvance, Danfoss "G$M:…%Z:…").
    ZigbeeFormat(
        "zigbee-z",
        re.compile(rf"(?:^|%)Z:(?P<ieee>{_HEX}{{16}})\$I:(?P<code>{_HEX}+)(?=$|[$%])"),
        anchored=False,
        hint="Z:",
    ),
    # eui|code, or |eui|code| (Müller-Licht, Schneider, Innr, frient).
    ZigbeeFormat(
        "zigbee-pipe",
        re.compile(rf"(?P<bar>\|?)(?P<ieee>{_HEX}{{16}})\|(?P<code>{_HEX}+)(?P=bar)"),
        anchored=True,
        hint="|",
    ),
    # Aqara: G$M:…%Z$A:<eui64>$I:<code>, also without the leading record.
    ZigbeeFormat(
        "zigbee-aqara",
        re.compile(rf"(?:^|%)Z\$A:(?P<ieee>{_HEX}{{16}})\$I:(?P<code>{_HEX}+)(?=$|[$%])"),
        anchored=False,
        hint="Z$A:",
    ),
    # Bosch: RB01SG<34 hex><eui64>DLK<install code (36 hex)> or <link key (32 hex)>.
    ZigbeeFormat(
        "zigbee-bosch",
        re.compile(rf"RB01SG{_HEX}{{34}}(?P<ieee>{_HEX}{{16}})DLK(?P<code>{_HEX}{{36}})"),
        anchored=True,
        hint="RB01SG",
    ),
    ZigbeeFormat(
        "zigbee-bosch-link-key",
        re.compile(rf"RB01SG{_HEX}{{34}}(?P<ieee>{_HEX}{{16}})DLK(?P<key>{_HEX}{{32}})"),
        anchored=True,
        hint="RB01SG",
        link_key=True,
    ),
    # Philips Hue: HUE:Z:<code> M:<eui64> and further space-separated records.
    ZigbeeFormat(
        "zigbee-hue",
        re.compile(rf"^HUE:Z:(?P<code>{_HEX}+) M:(?P<ieee>{_HEX}{{16}})(?=$| )"),
        anchored=False,
        hint="HUE:Z:",
    ),
)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_x25_reference(data: bytes) -> int:
    """CRC-16/X-25 byte by byte from its table (the definition :func:`crc16_x25` matches)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


#: Each byte with its bits in reverse order.
_REFLECT = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def crc16_x25(data: bytes) -> int:
    """CRC-16/X-25 (reflected 0x1021, init and xorout 0xFFFF); ``123456789`` → 0x906E.

    The reflected CRC is the plain CRC-CCITT (``binascii.crc_hqx``, in C) of the bytes with
    their bits reversed, its result reversed (the init 0xFFFF reads the same both ways).
    """
    crc = binascii.crc_hqx(data.translate(_REFLECT), 0xFFFF)
    return ((_REFLECT[crc & 0xFF] << 8) | _REFLECT[crc >> 8]) ^ 0xFFFF


def _residue() -> int:
    """What :func:`_reflected_crc` gives for any data followed by its right CRC.

    A reflected CRC run over a message and its own CRC (little-endian) always ends on one
    value, the same for every message; one pass over the whole code then checks it.
    """
    crc = crc16_x25(b"").to_bytes(2, "little")
    return _reflected_crc(crc)


def _reflected_crc(data: bytes) -> int:
    return binascii.crc_hqx(data.translate(_REFLECT), 0xFFFF)


_RESIDUE = _residue()


def install_code_crc_valid(code: bytes) -> bool:
    """Whether the last two bytes of ``code`` are the CRC of the rest (little-endian)."""
    return len(code) >= 2 and _reflected_crc(code) == _RESIDUE  # noqa: PLR2004 - the CRC


def link_key(code: bytes) -> bytes:
    """The link key of a whole install code (CRC included), by zigpy's AES-MMO hash.

    Raises:
        QrFormatError: wrong length or CRC (zigpy's message, which quotes the code, is
            not passed on).
    """
    from zigpy.util import convert_install_code  # noqa: PLC0415 - zigpy takes ~1 s to import

    try:
        return bytes(convert_install_code(code))
    except ValueError:
        raise qr_error("the install code is not valid", path="installCode") from None


def ieee_colon(hex16: str) -> str:
    """``0D6F…`` → ``00:0d:6f:…`` (display order, as printed)."""
    return bytes.fromhex(hex16).hex(":")


def parse_zigbee(text: str, *, repair_crc: bool = False) -> QrPayload | None:
    """Parse a Zigbee install-code QR; ``None`` when no Zigbee layout matches.

    Raises:
        QrFormatError: a layout matches but the code's length or CRC is wrong.
    """
    for fmt in FORMATS:
        if fmt.hint not in text:
            continue
        match = fmt.pattern.fullmatch(text) if fmt.anchored else fmt.pattern.search(text)
        if match is None:
            continue
        ieee = match["ieee"]
        if ieee[10:].lower() == "16a720":
            # Atlantic heaters print their EUI-64 byte-reversed (zigpy's heuristic).
            ieee = bytes.fromhex(ieee)[::-1].hex()
        if fmt.link_key:
            fields: dict[str, Any] = {
                "ieee": ieee_colon(ieee),
                "installCode": None,
                "linkKey": match["key"].upper(),
            }
            return _payload(fmt.name, fields, text)
        hex_code = match["code"]
        code, repaired = _install_code(hex_code, repair_crc=repair_crc)
        fields = {
            "ieee": ieee_colon(ieee),
            "installCode": code.hex().upper() if repaired else hex_code.upper(),
            "linkKey": PENDING,  # derived when first needed: see the module's docstring
        }
        if repaired:
            fields["crcRepaired"] = True
        return _payload(fmt.name, fields, text, partial(_derive_link_key, code))
    return None


def _derive_link_key(code: bytes) -> dict[str, Any]:
    return {"linkKey": link_key(code).hex().upper()}


def _install_code(hex_code: str, *, repair_crc: bool) -> tuple[bytes, bool]:
    """The install code as bytes (CRC checked, or repaired) and whether it was repaired."""
    if len(hex_code) not in _HEX_SIZES:
        raise qr_error(
            "an install code is 6, 8, 12 or 16 bytes plus a 2-byte CRC", path="installCode"
        )
    code = bytes.fromhex(hex_code)
    if install_code_crc_valid(code):
        return code, False
    if not repair_crc:
        raise qr_error(
            "the install code's CRC does not match", "QR_CHECKSUM_MISMATCH", "installCode"
        )
    return code[:-2] + crc16_x25(code[:-2]).to_bytes(2, "little"), True


#: Install code lengths in hex digits.
_HEX_SIZES = frozenset(2 * size for size in INSTALL_CODE_SIZES)


def _payload(
    fmt: str,
    fields: dict[str, Any],
    source: str,
    derive: Callable[[], dict[str, Any]] | None = None,
) -> QrPayload:
    return payload("ZIGBEE_QR_BAR_CODE", fmt, fields, _SECRETS, NO_MASKS, source, derive)


_SECRETS = frozenset({"installCode", "linkKey"})
