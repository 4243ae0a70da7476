r"""Wi-Fi network QR codes: ``WIFI:T:<type>;S:<ssid>;P:<password>;H:<true|false>;;``.

Read left to right as Android's WifiUriParser does (the ZXing format with its backslash
escapes): fields in any order, spaces before a tag allowed, unknown tags ignored, the
final ``;;`` optional, the first occurrence of a tag wins and an empty field counts as
absent. A ``;`` ends a field unless it is escaped (``\\;``); ``\\x`` stands for ``x``.
"""

from __future__ import annotations

import re
from typing import Any

from agent.commissioning.qr.base import QrPayload, qr_error

PREFIX = "WIFI:"
_HEX_BITMAP = re.compile(r"[0-9A-Fa-f]{1,8}")

#: ``T:`` values, upper-cased, that need a password.
_SECURED = frozenset({"WPA", "WPA2", "WPA3", "SAE", "WEP", "WPA-EAP", "WPA2-EAP", "WPA3-EAP"})
_OPEN = frozenset({"NOPASS", "OWE"})
_ENTERPRISE_TAGS = {"E": "eapMethod", "PH2": "phase2", "A": "anonymousIdentity", "I": "identity"}
_KNOWN_TAGS = frozenset({"T", "S", "P", "H", "R", "K", *_ENTERPRISE_TAGS})


def _tokens(body: str) -> dict[str, str]:
    """Split ``TAG:value;`` pairs, unescaping values; the first occurrence of a tag wins."""
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
    raw = _tokens(text[len(PREFIX) :])
    fields = {tag: value for tag, value in raw.items() if tag in _KNOWN_TAGS and value != ""}
    ssid = fields.get("S")
    if ssid is None:
        raise qr_error("the SSID (S:) is empty or missing", "QR_FIELD_MISSING", "ssid")
    security = fields.get("T", "nopass")
    upper = security.upper()
    if upper == "ADB":
        raise qr_error("an Android debugging pairing code is not a network", path="security")
    if upper not in _SECURED | _OPEN:
        raise qr_error("unknown Wi-Fi security type (T:)", path="security")
    password = fields.get("P")
    if upper in _SECURED and password is None:
        raise qr_error("a secured network needs a password (P:)", "QR_FIELD_MISSING", "password")
    out: dict[str, Any] = {
        "ssid": ssid,
        "password": password,
        "security": "nopass" if upper == "NOPASS" else security,
    }
    out.update(_extras(fields))
    return QrPayload(
        authentication_material_type="WIFI_SETUP_QR_BAR_CODE",
        format="wifi",
        fields=out,
        secrets=frozenset({"password"}),
        source=text,
    )


def _extras(fields: dict[str, str]) -> dict[str, Any]:
    hidden_raw = fields.get("H")
    out: dict[str, Any] = {"hidden": hidden_raw is not None and hidden_raw.lower() == "true"}
    if hidden_raw is not None and hidden_raw.lower() not in {"true", "false"}:
        out["phase2"] = hidden_raw  # the old generators' H: (phase 2 before PH2: existed)
    if "R" in fields:
        if not _HEX_BITMAP.fullmatch(fields["R"]):
            raise qr_error(
                "the transition-disable bitmap (R:) is not hex", path="transitionDisable"
            )
        out["transitionDisable"] = bool(int(fields["R"], 16) & 1)
    for tag, name in _ENTERPRISE_TAGS.items():
        if tag in fields:
            out[name] = fields[tag]
    if "K" in fields:
        out["saePublicKey"] = fields["K"]
    return out
