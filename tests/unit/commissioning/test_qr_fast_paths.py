"""The parsers' shortcuts give what their plain definitions give.

Each fast path (a range checked by a regex, a CRC checked by its residue, fields split at
once when nothing is escaped, a factory instead of the keyword constructor) is compared
here with the slow reading it replaces, over every value or over generated input.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr import parse
from agent.commissioning.qr.base import PENDING, REDACTED, QrPayload
from agent.commissioning.qr.wifi import _escaped_tokens, _tokens
from agent.commissioning.qr.zigbee import crc16_x25, install_code_crc_valid
from agent.commissioning.qr.zwave import _BITS_HIGH, _BITS_LOW, _U16


def test_u16_pattern_is_exactly_0_to_65535() -> None:
    pattern = re.compile(_U16)
    accepted = [n for n in range(100_000) if pattern.fullmatch(f"{n:05d}")]
    assert accepted == list(range(65_536))


def test_protocol_bit_tables() -> None:
    for mask in range(65_536):
        expected = [bit for bit in range(16) if mask >> bit & 1]
        assert [*_BITS_LOW[mask & 0xFF], *_BITS_HIGH[mask >> 8]] == expected


def _zwave(tail: str) -> str:
    checksum = int.from_bytes(hashlib.sha1(tail.encode()).digest()[:2], "big")  # noqa: S324
    return f"9001{checksum:05d}{tail}"


PRODUCT = "0010" + "01025" + "00003" + "0220" + "00134" + "00001" + "00002" + "00513"
DSK = "".join(f"{n:05d}" for n in (1, 2, 3, 4, 5, 6, 7, 8))


@pytest.mark.parametrize("mask", [1, 3, 128, 255])
def test_supported_protocols_read_alike_wherever_the_block_is(mask: int) -> None:
    """Right after the product blocks (read with them) or later (read block by block)."""
    protocols = f"0803{mask:03d}"
    uuid = "0642" + "00" + "00001" * 8
    first = parse(_zwave("003" + DSK + PRODUCT + protocols + uuid)).fields
    later = parse(_zwave("003" + DSK + PRODUCT + uuid + protocols)).fields
    assert first == later
    assert first["supportedProtocols"] == [bit for bit in range(8) if mask >> bit & 1]


def test_out_of_range_numbers_are_named_as_before() -> None:
    """A number past 65535 fails the code's regex; the shape reading names it."""
    with pytest.raises(QrFormatError, match="dsk is out of range"):
        parse(_zwave("003" + "65536" + DSK[5:] + PRODUCT))
    with pytest.raises(QrFormatError, match="requestedSecurityClasses is out of range"):
        parse(_zwave("256" + DSK + PRODUCT))
    with pytest.raises(QrFormatError, match="genericDeviceClass is out of range"):
        parse(_zwave("003" + DSK + PRODUCT.replace("01025", "70000", 1)))
    version_two = "9002" + _zwave("003" + DSK + PRODUCT)[4:]
    with pytest.raises(QrFormatError, match="version must be 0"):
        parse(version_two)


@given(st.binary(min_size=2, max_size=40))
def test_crc_residue_is_the_crc_of_the_rest(code: bytes) -> None:
    by_definition = crc16_x25(code[:-2]).to_bytes(2, "little") == code[-2:]
    assert install_code_crc_valid(code) is by_definition


@given(st.binary(max_size=30))
def test_crc_residue_accepts_every_right_crc(body: bytes) -> None:
    assert install_code_crc_valid(body + crc16_x25(body).to_bytes(2, "little"))


@given(st.text("ST:PH;; \nabx", max_size=40))
def test_wifi_split_reads_as_the_left_to_right_reader(body: str) -> None:
    """Without backslashes, splitting at every ';' is the ZXing reading."""
    assert _tokens(body) == _escaped_tokens(body)


def test_payload_is_read_only() -> None:
    payload = parse("WIFI:T:WPA;S:home;P:secret123;;")
    for name in ("format", "source", "secrets", "masks", "fields"):
        with pytest.raises(AttributeError):
            setattr(payload, name, None)
    payload.masks["password"] = "shown"  # a copy: the payload keeps its own
    assert payload.to_dict()["password"] == REDACTED


def test_derived_public_field_is_shown_redacted() -> None:
    """A field derived on use that is not secret appears with its value."""
    calls = []

    def derive() -> dict[str, object]:
        calls.append(1)
        return {"checksum": 7}

    payload = QrPayload(
        "WIFI_SETUP_QR_BAR_CODE",
        "wifi",
        {"ssid": "x", "password": "p", "checksum": PENDING},
        secrets=frozenset({"password"}),
        derive=derive,
    )
    assert payload.to_dict() == {
        "authenticationMaterialType": "WIFI_SETUP_QR_BAR_CODE",
        "format": "wifi",
        "ssid": "x",
        "password": REDACTED,
        "checksum": 7,
    }
    assert payload.to_dict(show_secrets=True)["password"] == "p"
    assert calls == [1]
