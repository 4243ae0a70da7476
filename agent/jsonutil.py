"""Strict JSON decoding for untrusted input (archives, templates, API bodies)."""

from __future__ import annotations

import json
from typing import Any


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses an object naming the same key twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def loads_strict(data: str | bytes) -> Any:
    """Parse JSON (bytes must be UTF-8), refusing duplicate keys, NaN and Infinity.

    Raises:
        ValueError: not valid JSON (``json.JSONDecodeError`` is a subclass), a duplicate key,
            a non-finite number, or bytes that are not UTF-8 (``UnicodeDecodeError``).
        RecursionError: nesting too deep for the decoder.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=reject_duplicate_keys, parse_constant=_no_constants)
