"""Wi-Fi Easy Connect (DPP) bootstrapping URIs: ``DPP:[C:…;][M:…;][I:…;][V:…;][H:…;]K:…;;``.

Checked as hostap's ``dpp_parse_uri`` does: ``K:`` (base64 DER SubjectPublicKeyInfo of an EC
key on a named curve DPP allows) is required; the first occurrence of a tag wins; unknown
tags and stray ``;`` are ignored; ``C:`` is ``opclass/channel`` items where a bare channel
reuses the previous class; ``M:`` is 12 hex digits; ``I:`` printable ASCII; ``V:`` the DPP
version; ``H:`` a host for DPP over TCP (``ip``, ``ip:port``, ``[v6]:port``, default 8908);
``B:`` a supported-curves bitmap.
"""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
import re
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from agent.commissioning.qr.base import NO_MASKS, QrPayload, payload, qr_error

PREFIX = "DPP:"
DEFAULT_TCP_PORT = 8908

#: cryptography's curve name → the name hostap prints.
CURVES = {
    "secp256r1": "prime256v1",
    "secp384r1": "secp384r1",
    "secp521r1": "secp521r1",
    "brainpoolP256r1": "brainpoolP256r1",
    "brainpoolP384r1": "brainpoolP384r1",
    "brainpoolP512r1": "brainpoolP512r1",
}
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_NUMBER = re.compile(r"[0-9]{1,3}")
_MAC = re.compile(r"[0-9A-Fa-f]{12}")
_INFO = re.compile(r"[\x20-\x3a\x3c-\x7e]*")
_VERSION = re.compile(r"[1-9]")
_CURVE_BITMAP = re.compile(r"[0-9A-Fa-f]{1,2}")
_PORT = re.compile(r"[0-9]{1,5}")
_OCTET_MAX = 255
_PORT_MAX = 65535


def _tags(body: str) -> dict[str, str]:
    """``X:value;`` parameters as hostap reads them.

    Empty ones (``;;``) are skipped, the first occurrence of a tag wins, and a last part
    without its ``;`` is ignored.
    """
    out: dict[str, str] = {}
    for token in body.split(";")[:-1]:
        if len(token) >= 2 and token[1] == ":":  # noqa: PLR2004 - one-letter tag and ':'
            out.setdefault(token[0], token[2:])
    return out


def _public_key(b64: str) -> dict[str, Any]:
    if not _B64.fullmatch(b64):
        raise qr_error("K: is not base64", path="publicKey")
    try:  # b64decode(validate=True), without its wrapper
        der = binascii.a2b_base64(b64, strict_mode=True)
    except (binascii.Error, ValueError):
        raise qr_error("K: is not base64", path="publicKey") from None
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError):
        raise qr_error("K: is not a DER public key on a named curve", path="publicKey") from None
    except Exception:  # noqa: BLE001 - the Rust parser raises a few unrelated types
        raise qr_error("K: is not a DER public key", path="publicKey") from None
    if not _is_ec_key(type(key)):
        raise qr_error("K: must be an elliptic-curve key", path="publicKey")
    curve = CURVES.get(cast("ec.EllipticCurvePublicKey", key).curve.name)
    if curve is None:
        raise qr_error("K: uses a curve DPP does not allow", path="publicKey")
    return {
        "publicKey": binascii.b2a_base64(der, newline=False).decode("ascii"),
        "curve": curve,
        "pkhash": hashlib.sha256(der).hexdigest(),
    }


#: Key classes seen so far → whether they are EC public keys (an ABC check is slow).
_EC_KEY_TYPES: dict[type, bool] = {}


def _is_ec_key(cls: type) -> bool:
    known = _EC_KEY_TYPES.get(cls)
    if known is None:
        known = _EC_KEY_TYPES[cls] = issubclass(cls, ec.EllipticCurvePublicKey)
    return known


def _channels(value: str) -> list[list[int]]:
    out: list[list[int]] = []
    opclass: int | None = None
    for item in value.split(","):
        left, slash, right = item.partition("/")
        if slash:
            if not _NUMBER.fullmatch(left):
                raise qr_error("C: has an invalid operating class", path="channels")
            opclass = int(left)
            chan_text = right
        else:
            chan_text = left
        if opclass is None or not _NUMBER.fullmatch(chan_text):
            raise qr_error("C: has an invalid channel", path="channels")
        channel = int(chan_text)
        if opclass > _OCTET_MAX or channel > _OCTET_MAX:
            raise qr_error("C: operating class and channel are 0-255", path="channels")
        out.append([opclass, channel])
    return out


def _host(value: str) -> dict[str, Any]:
    text, port = value, DEFAULT_TCP_PORT
    if value.startswith("["):
        close = value.find("]")
        rest = value[close + 1 :] if close > 0 else ""
        if close < 0 or (rest and not rest.startswith(":")):
            raise qr_error("H: has an invalid bracketed address", path="host")
        text = value[1:close]
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        text, _, port_text = value.partition(":")
    else:
        port_text = ""
    if port_text:
        if not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= _PORT_MAX:
            raise qr_error("H: has an invalid port", path="host")
        port = int(port_text)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise qr_error("H: is not an IP address", path="host") from None
    return {"ip": str(address), "port": port}


def parse_dpp(text: str) -> QrPayload:
    """Parse a ``DPP:`` bootstrapping URI.

    Raises:
        QrFormatError: no or an unusable ``K:``, or a malformed ``C:``/``M:``/``I:``/``V:``/
            ``H:``/``B:``.
    """
    if not text.startswith(PREFIX):
        raise qr_error("a DPP URI starts with DPP:", "QR_UNKNOWN_FORMAT")
    tags = _tags(text[len(PREFIX) :])
    if "K" not in tags:
        raise qr_error("a DPP URI needs its public key (K:)", "QR_FIELD_MISSING", "publicKey")
    fields: dict[str, Any] = _public_key(tags["K"])
    fields["channels"] = _channels(tags["C"]) if "C" in tags else []
    mac = tags.get("M")
    if mac is not None and not _MAC.fullmatch(mac):
        raise qr_error("M: is 12 hex digits", path="mac")
    fields["mac"] = bytes.fromhex(mac).hex(":") if mac else None
    info = tags.get("I")
    if info is not None and not _INFO.fullmatch(info):
        raise qr_error("I: is printable ASCII", path="info")
    fields["info"] = info
    fields["host"] = _host(tags["H"]) if "H" in tags else None
    version = tags.get("V")
    if version is not None and not _VERSION.fullmatch(version):
        raise qr_error("V: is a DPP version number", path="version")
    fields["version"] = int(version) if version is not None else None
    if "B" in tags:
        if not _CURVE_BITMAP.fullmatch(tags["B"]):
            raise qr_error("B: is up to two hex digits", path="supportedCurves")
        fields["supportedCurves"] = tags["B"].lower()
    return payload("WIFI_SETUP_QR_BAR_CODE", "dpp", fields, frozenset(), NO_MASKS, text)
