r"""Wi-Fi network QR codes: ``WIFI:T:<type>;S:<ssid>;P:<password>;H:<true|false>;;``.

Read left to right as Android's WifiUriParser does (the ZXing format with its backslash
escapes): fields in any order, spaces before a tag allowed, unknown tags ignored, the
final ``;;`` optional, the first occurrence of a tag wins and an empty field counts as
absent. A ``;`` ends a field unless it is escaped (``\\;``); ``\\x`` stands for ``x``.
"""

from __future__ import annotations

import re
from typing import Any

from agent.commissioning.qr.base import NO_MASKS, QrPayload, payload, qr_error

PREFIX = "WIFI:"
_HEX_BITMAP = re.compile(r"[0-9A-Fa-f]{1,8}")

#: ``T:`` values, upper-cased, that need a password.
_SECURED = frozenset({"WPA", "WPA2", "WPA3", "SAE", "WEP", "WPA-EAP", "WPA2-EAP", "WPA3-EAP"})
_OPEN = frozenset({"NOPASS", "OWE"})
_ENTERPRISE_TAGS = {"E": "eapMethod", "PH2": "phase2", "A": "anonymousIdentity", "I": "identity"}
_KNOWN_TYPES = _SECURED | _OPEN
#: Tags beyond T, S and P that may add fields (H only when it is not a boolean).
_EXTRA_TAGS = frozenset({"H", "R", "K", *_ENTERPRISE_TAGS})


def _tokens(body: str) -> dict[str, str]:
    """Split ``TAG:value;`` pairs, unescaping values; the first occurrence of a tag wins."""
    if "\\" not in body:  # nothing escaped (the usual code): each ';' ends a field
        fields: dict[str, str] = {}
        for segment in body.split(";"):
            tag, colon, text = segment.lstrip(" ").partition(":")
            if colon:
                fields.setdefault(tag.upper(), text)
        return fields
    return _escaped_tokens(body)


def _escaped_tokens(body: str) -> dict[str, str]:
    """:func:`_tokens` for a body with backslashes: read left to right."""
    fields: dict[str, str] = {}
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] == " ":
            i += 1
        colon = body.find(":", i)
        semi = body.find(";", i)
        if colon < 0 or (0 <= semi < colon):
            # A bare word or an empty segment: skip to after the next ';'.
            if semi < 0:
                break
            i = semi + 1
            continue
        tag = body[i:colon]
        j = body.find(";", colon + 1)
        if j < 0:
            j = n
        if "\\" in body[colon + 1 : j]:
            j, text = _escaped(body, colon + 1)
        else:  # the common case: nothing escaped, the value ends at the next ';'
            text = body[colon + 1 : j]
        fields.setdefault(tag.upper(), text)
        i = j + 1
    return fields


#: A value up to its unescaped ';' (or the end; a lone final backslash is kept as it is).
_ESCAPED_VALUE = re.compile(r"(?:[^;\\]|\\.)*(?:\\\Z)?", re.DOTALL)


def _escaped(body: str, j: int) -> tuple[int, str]:
    """A value with backslash escapes from ``j``: (index of its ending ';' or the end, text)."""
    match = _ESCAPED_VALUE.match(body, j)
    assert match is not None  # noqa: S101 - the pattern matches the empty string
    return match.end(), _unescape(match.group())


def _unescape(raw: str) -> str:
    r"""``\x`` → ``x``; a lone final backslash stays (split on the backslashes: no regex)."""
    parts = raw.split("\\")
    out = [parts[0]]
    i, last = 1, len(parts) - 1
    while i <= last:
        part = parts[i]
        if part:  # its first character was escaped: it is literal, as the rest
            out.append(part)
            i += 1
        elif i < last:  # an escaped backslash, then what follows the next one
            out.append("\\")
            out.append(parts[i + 1])
            i += 2
        else:  # a lone backslash at the very end
            out.append("\\")
            i += 1
    return "".join(out)


def parse_wifi(text: str) -> QrPayload:
    """Parse a ``WIFI:`` code.

    Raises:
        QrFormatError: no SSID, no password for a secured network, an unknown security
            type or a malformed transition-disable bitmap.
    """
    if not text.startswith(PREFIX):
        raise qr_error("a Wi-Fi code starts with WIFI:", "QR_UNKNOWN_FORMAT")
    fields = _tokens(text[len(PREFIX) :])
    ssid = fields.get("S") or None
    if ssid is None:
        raise qr_error("the SSID (S:) is empty or missing", "QR_FIELD_MISSING", "ssid")
    security = fields.get("T") or "nopass"
    upper = security.upper()
    if upper == "ADB":
        raise qr_error("an Android debugging pairing code is not a network", path="security")
    if upper not in _KNOWN_TYPES:
        raise qr_error("unknown Wi-Fi security type (T:)", path="security")
    password = fields.get("P") or None
    if password is None and upper in _SECURED:
        raise qr_error("a secured network needs a password (P:)", "QR_FIELD_MISSING", "password")
    hidden = fields.get("H") or None
    out: dict[str, Any] = {
        "ssid": ssid,
        "password": password,
        "security": "nopass" if upper == "NOPASS" else security,
        "hidden": hidden is not None and hidden.lower() == "true",
    }
    if not _EXTRA_TAGS.isdisjoint(fields):
        _extras(fields, hidden, out)
    return payload("WIFI_SETUP_QR_BAR_CODE", "wifi", out, _SECRETS, NO_MASKS, text)


_SECRETS = frozenset({"password"})


def _extras(fields: dict[str, str], hidden: str | None, out: dict[str, Any]) -> None:
    """The rarer tags (an old phase-2 ``H:``, ``R:``, enterprise, ``K:``) into ``out``."""
    if hidden is not None and hidden.lower() not in {"true", "false"}:
        out["phase2"] = hidden  # the old generators' H: (phase 2 before PH2: existed)
    transition = fields.get("R") or None
    if transition is not None:
        if not _HEX_BITMAP.fullmatch(transition):
            raise qr_error(
                "the transition-disable bitmap (R:) is not hex", path="transitionDisable"
            )
        out["transitionDisable"] = bool(int(transition, 16) & 1)
    for tag, name in _ENTERPRISE_TAGS.items():
        value = fields.get(tag)
        if value:
            out[name] = value
    key = fields.get("K")
    if key:
        out["saePublicKey"] = key
