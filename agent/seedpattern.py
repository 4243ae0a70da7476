r"""The seeds' field patterns, matched the way the service models mean them.

The seeds' patterns are Java/ECMAScript regular expressions matched against the whole
value. Python's ``re`` differs in three ways that let bad input through: ``$`` also matches
before a trailing ``\\n``, ``\\d``/``\\w`` accept non-ASCII digits and letters, and ``.``
accepts ``\\r``, U+0085, U+2028 and U+2029. :func:`seed_pattern` compiles a seed pattern so
that it is matched whole (``fullmatch``; the ``^``/``$`` anchors are dropped), with ASCII
classes, and with ``.`` refusing every line terminator. Every seed pattern in the archive
and registry code is compiled here.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: What ``.`` matches in Java and ECMAScript: anything but a line terminator.
_DOT = "[^\\n\\r\\x85\\u2028\\u2029]"


def _translate(pattern: str) -> str:
    body = pattern.removeprefix("^")
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    out: list[str] = []
    in_class = False
    escaped = False
    for ch in body:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif in_class:
            out.append(ch)
            in_class = ch != "]" or out[-2:-1] == ["["]
        elif ch == "[":
            out.append(ch)
            in_class = True
        elif ch == ".":
            out.append(_DOT)
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=256)
def seed_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a seed pattern for whole-value matching with Java/ECMA semantics.

    Use the result only with ``fullmatch`` (or :func:`seed_match`).

    Args:
        pattern: the pattern as the seed writes it, anchors optional.
    """
    return re.compile(_translate(pattern), re.ASCII)


def seed_match(pattern: str | re.Pattern[str], value: str) -> bool:
    """True when the whole of ``value`` matches the seed pattern ``pattern``."""
    compiled = pattern if isinstance(pattern, re.Pattern) else seed_pattern(pattern)
    return compiled.fullmatch(value) is not None


def is_unicode_text(value: str) -> bool:
    """False for text UTF-8 cannot encode (lone surrogates); no seed field accepts them.

    They arrive from undecodable command-line bytes and from JSON escapes of surrogates.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
