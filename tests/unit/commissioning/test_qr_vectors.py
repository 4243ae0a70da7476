"""Every public QR vector, mapped to the agent's field names."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr import parse
from agent.commissioning.qr.base import PENDING
from agent.commissioning.qr.matter import base38_decode
from agent.commissioning.qr.zigbee import (
    crc16_x25,
    crc16_x25_reference,
    install_code_crc_valid,
    link_key,
)
from tests.unit.commissioning.vectors import load_vectors, vector_id

VECTORS = load_vectors()
WHOLE = [v for v in VECTORS if "kind" not in v or v["kind"].startswith("dsk")]
BLOCKS = [v for v in VECTORS if v not in WHOLE]

ZWAVE_FIELDS = (
    "version",
    "requestedSecurityClasses",
    "dsk",
    "genericDeviceClass",
    "specificDeviceClass",
    "installerIconType",
    "manufacturerId",
    "productType",
    "productId",
    "applicationVersion",
    "maxInclusionRequestInterval",
    "uuid",
    "supportedProtocols",
)
RENAMES = {
    "zigbee": {"ieee": "ieee", "install_code": "installCode", "link_key": "linkKey"},
    "wifi": {"ssid": "ssid", "password": "password", "type": "security"},
    "dpp": {
        "public_key_b64": "publicKey",
        "curve": "curve",
        "pkhash": "pkhash",
        "channels": "channels",
        "mac": "mac",
        "host": "host",
        "info": "info",
    },
    "matter": {
        "version": "version",
        "vendorId": "vendorId",
        "productId": "productId",
        "commissioningFlow": "commissioningFlow",
        "discoveryCapabilities": "discoveryCapabilities",
        "discriminator": "discriminator",
        "passcode": "passcode",
        "tlv_hex": "tlv",
    },
}
MATERIAL_TYPES = {
    "zwave": "ZWAVE_QR_BAR_CODE",
    "zigbee": "ZIGBEE_QR_BAR_CODE",
    "wifi": "WIFI_SETUP_QR_BAR_CODE",
    "dpp": "WIFI_SETUP_QR_BAR_CODE",
    "matter": None,
}


def _expected(vector: dict[str, Any]) -> dict[str, Any]:
    exp = vector["expected"]
    if vector["format"] == "zwave":
        return {k: exp[k] for k in ZWAVE_FIELDS if k in exp}
    names = RENAMES[vector["format"]]
    out = {names[k]: v for k, v in exp.items() if k in names}
    if "transition_disable" in exp:
        out["transitionDisable"] = exp["transition_disable"]
    return out


def _repaired_by_another_library(vector: dict[str, Any]) -> bool:
    """A library that rewrites wrong CRCs produced the expected value: strict refuses."""
    exp = vector.get("expected", {})
    return "install_code_as_printed" in exp and exp.get("crc_valid_as_printed") is False


@pytest.mark.parametrize("vector", WHOLE, ids=vector_id)
def test_vector(vector: dict[str, Any]) -> None:
    if "error" in vector or _repaired_by_another_library(vector):
        with pytest.raises(QrFormatError) as info:
            parse(vector["input"])
        wire = info.value.to_dict()["error"]
        assert wire["code"] == "ValidationException"
        assert wire["statusCode"] == 400
        assert wire["reason"].startswith("QR_")
        assert vector["input"].strip() not in wire["message"] or len(vector["input"]) < 8
        return
    payload = parse(vector["input"])
    fields = payload.to_dict(show_secrets=True)
    assert fields["authenticationMaterialType"] == MATERIAL_TYPES[vector["format"]]
    exp = vector["expected"]
    if exp.get("install_code_as_printed") and exp.get("crc_valid_as_printed") is None:
        # 16 bytes after Bosch's DLK: the link key itself (zigpy's reading).
        assert fields["format"] == "zigbee-bosch-link-key"
        assert fields["linkKey"] == vector["zigpy_2_4_0"]["link_key"]
        assert fields["ieee"] == exp["ieee"]
        return
    for key, value in _expected(vector).items():
        assert fields[key] == value, key
    if "dsk_hex" in exp:
        blocks = [int(b) for b in fields["dsk"].split("-")]
        assert b"".join(b.to_bytes(2, "big") for b in blocks).hex() == exp["dsk_hex"]


@pytest.mark.parametrize(
    "vector", [v for v in WHOLE if _repaired_by_another_library(v)], ids=vector_id
)
def test_crc_repair_when_configured(vector: dict[str, Any]) -> None:
    fields = parse(vector["input"], repair_zigbee_crc=True).to_dict(show_secrets=True)
    assert fields["crcRepaired"] is True
    assert fields["installCode"] == vector["expected"]["install_code"]
    assert fields["linkKey"] == vector["expected"]["link_key"]


def test_strict_crc_is_not_marked_repaired() -> None:
    good = next(v for v in WHOLE if v["format"] == "zigbee" and "expected" in v)
    fields = parse(good["input"], repair_zigbee_crc=True).to_dict(show_secrets=True)
    assert "crcRepaired" not in fields


@pytest.mark.parametrize("vector", BLOCKS, ids=vector_id)
def test_building_block(vector: dict[str, Any]) -> None:
    exp = vector["expected"]
    kind = vector["kind"]
    if kind == "base38_decode":
        assert base38_decode(vector["input"]).hex() == exp["bytes_hex"]
        return
    data = bytes.fromhex(vector["input"])
    if kind == "crc16_x25_check":
        assert crc16_x25(data) == int(exp["crc16_x25"], 16)
        return
    assert install_code_crc_valid(data) is exp["crc_valid"]
    if "crc16_x25" in exp:
        assert crc16_x25(data[:-2]) == int(exp["crc16_x25"], 16)
    key = exp.get("link_key", exp.get("aes_mmo_hash"))
    assert link_key(data).hex().upper() == key


def test_every_vector_is_used() -> None:
    assert len(WHOLE) + len(BLOCKS) == len(VECTORS)
    assert {v["format"] for v in VECTORS} == set(MATERIAL_TYPES)


def _base38(data: bytes) -> str:
    from agent.commissioning.qr.matter import ALPHABET

    out = []
    for i in range(0, len(data), 3):
        chunk = data[i : i + 3]
        value = int.from_bytes(chunk, "little")
        for _ in range({3: 5, 2: 4, 1: 2}[len(chunk)]):
            value, digit = divmod(value, 38)
            out.append(ALPHABET[digit])
    return "".join(out)


def test_matter_optional_tlv() -> None:
    header = base38_decode("M5L90MP500K64J00000"[:20])
    # Anonymous structure: context tag 0 (serial number, UTF-8 "SN-1"), vendor tag 0x81 (uint8 7).
    tlv = bytes([0x15, 0x2C, 0x00, 0x04]) + b"SN-1" + bytes([0x24, 0x81, 0x07, 0x18])
    fields = parse("MT:" + _base38(header + tlv)).to_dict()
    assert fields["vendorId"] == 12
    assert fields["optionalData"] == {"serialNumber": "SN-1", "129": 7}
    with pytest.raises(QrFormatError):
        parse("MT:" + _base38(header + tlv[:-1]))  # not closed
    with pytest.raises(QrFormatError):
        parse("MT:" + _base38(header + bytes([0x15, 0x2C, 0x00, 0x09]) + b"x"))  # cut short


def test_link_key_is_derived_on_first_use_only() -> None:
    """A redacted answer never runs the AES-MMO hash; the first use gives zigpy's key."""
    good = next(
        v
        for v in WHOLE
        if v["format"] == "zigbee" and "expected" in v and v["expected"].get("install_code")
    )
    payload = parse(good["input"])
    redacted = payload.to_dict()
    assert redacted["linkKey"] == "<redacted>"
    assert payload._fields["linkKey"] is PENDING  # the hash has not run
    assert list(redacted) == list(payload.to_dict(show_secrets=True))  # same keys, same order
    assert payload.fields["linkKey"] == good["expected"]["link_key"]
    assert (
        payload.fields["linkKey"]
        == link_key(bytes.fromhex(payload.fields["installCode"])).hex().upper()
    )
    assert payload == parse(good["input"])  # equality derives on both sides


@given(st.binary(max_size=64))
def test_crc_matches_its_table_definition(data: bytes) -> None:
    assert crc16_x25(data) == crc16_x25_reference(data)
