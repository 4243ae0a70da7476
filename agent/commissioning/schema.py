r"""Validation of a ``CreateManagedThing`` request body, exactly as the seed states it.

Patterns are matched whole (``fullmatch``: no trailing newline slips through), with the
seed's classes spelled out: Java's ``\\s`` is ASCII whitespace and its ``.`` excludes every
line terminator, and ``\\p{L}``/``\\p{N}`` come from the ``regex`` package. Lengths count
code points. Every problem is reported at once, each with its field path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import regex

from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr import QrPayload, parse_as
from agent.errors import FieldProblem, ValidationError

MATERIAL_TYPES = ("WIFI_SETUP_QR_BAR_CODE", "ZWAVE_QR_BAR_CODE", "ZIGBEE_QR_BAR_CODE")
ROLES = ("CONTROLLER", "DEVICE")
MAX_MAP_ENTRIES = 50

_NOT_LINE_END = r"[^\n\r\u0085\u2028\u2029]"
_JAVA_SPACE = r" \t\n\x0b\f\r"

#: name → (min length, max length, pattern or None)
_STRINGS: dict[str, tuple[int, int, regex.Pattern[str] | None]] = {
    "AuthenticationMaterial": (
        1,
        512,
        regex.compile(r"[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~/: ]+"),
    ),
    "Brand": (1, 128, regex.compile(r"[A-Za-z0-9\-_ ]+")),
    "Capabilities": (
        1,
        65535,
        regex.compile(rf"[a-zA-Z0-9{_JAVA_SPACE}'\",.:\\/{{$}}\[\]=_\-+]+"),
    ),
    "Classification": (1, 64, None),
    "ClientToken": (1, 64, regex.compile(r"[a-zA-Z0-9=_\-]+")),
    "CredentialLockerId": (1, 64, regex.compile(r"[a-zA-Z0-9]*")),
    "Model": (1, 128, regex.compile(r"[A-Za-z0-9\-_ ]+")),
    "Name": (1, 128, regex.compile(r"[\p{L}\p{N} ._\-]+")),
    "Owner": (1, 64, regex.compile(r"[a-zA-Z0-9_.,@\-]+")),
    "SerialNumber": (1, 128, regex.compile(r"[A-Za-z0-9\-_ ]+")),
}
_ENUMS = {"AuthenticationMaterialType": MATERIAL_TYPES, "Role": ROLES}
_REQUIRED = ("AuthenticationMaterial", "AuthenticationMaterialType", "Role")
_META_KEY = regex.compile(rf"{_NOT_LINE_END}*[a-zA-Z0-9_.,@/:#\-]+{_NOT_LINE_END}*")
_META_VALUE = regex.compile(rf"{_NOT_LINE_END}*")
_MAPS = ("MetaData", "Tags")
_TOP_LEVEL = frozenset({*_STRINGS, *_ENUMS, "CapabilityReport", *_MAPS})


def _string(
    value: Any, path: str, spec: tuple[int, int, regex.Pattern[str] | None], out: list[FieldProblem]
) -> None:
    low, high, pattern = spec
    if not isinstance(value, str):
        out.append(FieldProblem(path, "must be a string"))
    elif not low <= len(value) <= high:
        out.append(FieldProblem(path, f"length must be {low} to {high}"))
    elif pattern is not None and pattern.fullmatch(value) is None:
        out.append(FieldProblem(path, "does not match the allowed pattern"))


def _map(
    value: Any,
    path: str,
    *,
    key_len: tuple[int, int],
    value_len: tuple[int, int],
    patterns: tuple[regex.Pattern[str], regex.Pattern[str]] | None,
    out: list[FieldProblem],
) -> None:
    if not isinstance(value, dict):
        out.append(FieldProblem(path, "must be an object of strings"))
        return
    if len(value) > MAX_MAP_ENTRIES:
        out.append(FieldProblem(path, f"at most {MAX_MAP_ENTRIES} entries"))
    for key, item in value.items():
        where = f"{path}.{key}"
        kp, vp = patterns or (None, None)
        _string(key, f"{path} key", (*key_len, kp), out)
        _string(item, where, (*value_len, vp), out)


def _string_list(value: Any, path: str, out: list[FieldProblem]) -> None:
    if not isinstance(value, list):
        out.append(FieldProblem(path, "must be an array of strings"))
        return
    for i, item in enumerate(value):
        _string(item, f"{path}[{i}]", (1, 256, None), out)


def _object(
    value: Any,
    path: str,
    required: dict[str, Callable[[Any, str, list[FieldProblem]], None]],
    optional: dict[str, Callable[[Any, str, list[FieldProblem]], None]],
    out: list[FieldProblem],
) -> None:
    if not isinstance(value, dict):
        out.append(FieldProblem(path, "must be an object"))
        return
    out.extend(
        FieldProblem(f"{path}.{key}", "unknown field")
        for key in value
        if key not in required and key not in optional
    )
    for key, check in required.items():
        if key not in value:
            out.append(FieldProblem(f"{path}.{key}", "is required"))
        else:
            check(value[key], f"{path}.{key}", out)
    for key, check in optional.items():
        if key in value:
            check(value[key], f"{path}.{key}", out)


def _text(value: Any, path: str, out: list[FieldProblem]) -> None:
    _string(value, path, (1, 256, None), out)


def _array_of(
    check: Callable[[Any, str, list[FieldProblem]], None],
) -> Callable[[Any, str, list[FieldProblem]], None]:
    def run(value: Any, path: str, out: list[FieldProblem]) -> None:
        if not isinstance(value, list):
            out.append(FieldProblem(path, "must be an array"))
            return
        for i, item in enumerate(value):
            check(item, f"{path}[{i}]", out)

    return run


def _capability(value: Any, path: str, out: list[FieldProblem]) -> None:
    lists = dict.fromkeys(("actions", "events", "properties"), _string_list)
    texts = dict.fromkeys(("id", "name", "version"), _text)
    _object(value, path, {**lists, **texts}, {}, out)


def _endpoint(value: Any, path: str, out: list[FieldProblem]) -> None:
    _object(
        value,
        path,
        {"capabilities": _array_of(_capability), "deviceTypes": _string_list, "id": _text},
        {},
        out,
    )


def _capability_report(value: Any, path: str, out: list[FieldProblem]) -> None:
    _object(
        value,
        path,
        {"endpoints": _array_of(_endpoint), "version": _text},
        {"nodeId": _text},
        out,
    )


def validate_create_request(
    body: Any, *, repair_zigbee_crc: bool = False
) -> tuple[dict[str, Any], QrPayload]:
    """Check a request body; return it with the parsed ``AuthenticationMaterial``.

    Raises:
        ValidationError: every problem found, each with its field path; the material is
            only parsed once the fields themselves are valid (its message names the QR
            problem and never quotes the code).
    """
    _check_fields(body)
    try:
        payload = parse_as(
            body["AuthenticationMaterial"],
            body["AuthenticationMaterialType"],
            repair_zigbee_crc=repair_zigbee_crc,
        )
    except QrFormatError as exc:
        raise ValidationError(
            f"AuthenticationMaterial is not a valid {body['AuthenticationMaterialType']}: "
            f"{exc.message}",
            reason=exc.reason,
            fields=[FieldProblem("AuthenticationMaterial", exc.message)],
        ) from None
    return body, payload


def _check_fields(body: Any) -> None:
    out: list[FieldProblem] = []
    if not isinstance(body, dict):
        raise ValidationError(
            "the request body must be a JSON object",
            fields=[FieldProblem("<body>", "not an object")],
        )
    out.extend(FieldProblem(key, "unknown field") for key in body if key not in _TOP_LEVEL)
    out.extend(FieldProblem(key, "is required") for key in _REQUIRED if key not in body)
    for key, spec in _STRINGS.items():
        if key in body:
            _string(body[key], key, spec, out)
    for key, choices in _ENUMS.items():
        if key in body and body[key] not in choices:
            out.append(FieldProblem(key, f"must be one of {', '.join(choices)}"))
    if "CapabilityReport" in body:
        _capability_report(body["CapabilityReport"], "CapabilityReport", out)
    if "MetaData" in body:
        _map(
            body["MetaData"],
            "MetaData",
            key_len=(0, 128),
            value_len=(0, 800),
            patterns=(_META_KEY, _META_VALUE),
            out=out,
        )
    if "Tags" in body:
        _map(body["Tags"], "Tags", key_len=(1, 128), value_len=(0, 256), patterns=None, out=out)
    if out:
        listing = "; ".join(f"{p.path}: {p.message}" for p in out[:10])
        raise ValidationError(f"the request has {len(out)} invalid field(s): {listing}", fields=out)
