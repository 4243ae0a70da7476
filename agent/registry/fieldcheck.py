"""Field checks for registry requests, with the seeds' lengths, patterns and enums.

Each check appends :class:`Problem` items (field path, reason, sentence) instead of raising,
so a request with several bad fields is reported at once. :func:`raise_problems` turns the
list into one :class:`~agent.errors.InvalidRequestError` whose ``reason`` is the first
problem's reason and whose ``fields`` name every offending path.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import FieldProblem, InvalidRequestError

#: ``\p{C}``: control, format, surrogate, private use and unassigned code points.
_OTHER_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})

#: Problem reasons (stable, part of the error contract).
REQUIRED = "FIELD_REQUIRED"
WRONG_TYPE = "FIELD_TYPE_INVALID"
TOO_SHORT = "FIELD_TOO_SHORT"
TOO_LONG = "FIELD_TOO_LONG"
PATTERN = "FIELD_PATTERN_MISMATCH"
ENUM = "FIELD_VALUE_NOT_ALLOWED"
UNKNOWN = "FIELD_UNKNOWN"


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem with one request field."""

    path: str
    reason: str
    message: str


def raise_problems(problems: list[Problem], what: str) -> None:
    """Raise one InvalidRequestError listing ``problems`` (nothing when the list is empty).

    Args:
        problems: the problems found, in request order.
        what: the request's name for the message (``"CreateProvisioningTemplate"``).

    Raises:
        InvalidRequestError: when ``problems`` is not empty.
    """
    if not problems:
        return
    listing = "; ".join(f"{p.path}: {p.message}" for p in problems)
    raise InvalidRequestError(
        f"the {what} request is not valid: {listing}",
        reason=problems[0].reason,
        fields=[FieldProblem(p.path, p.message) for p in problems],
    )


def has_other_characters(text: str) -> bool:
    r"""True when ``text`` contains a ``\p{C}`` character (control, format, unassigned ...)."""
    return any(unicodedata.category(ch) in _OTHER_CATEGORIES for ch in text)


def check_unknown(
    data: Mapping[str, Any], known: Iterable[str], problems: list[Problem], prefix: str = ""
) -> None:
    """Report every key of ``data`` that is not in ``known``."""
    allowed = set(known)
    problems.extend(
        Problem(f"{prefix}{key}", UNKNOWN, "is not a field of this request")
        for key in data
        if key not in allowed
    )


def check_string(  # noqa: PLR0911 - one return per failed constraint
    data: Mapping[str, Any],
    key: str,
    problems: list[Problem],
    *,
    required: bool,
    min_len: int = 0,
    max_len: int | None = None,
    pattern: re.Pattern[str] | None = None,
    no_other_chars: bool = False,
    prefix: str = "",
) -> str | None:
    """Check one string field; return its value when it is valid, else ``None``."""
    path = f"{prefix}{key}"
    if key not in data or data[key] is None:
        if required:
            problems.append(Problem(path, REQUIRED, "is required"))
        return None
    value = data[key]
    if not isinstance(value, str):
        problems.append(Problem(path, WRONG_TYPE, "must be a string"))
        return None
    if len(value) < min_len:
        problems.append(Problem(path, TOO_SHORT, f"must be at least {min_len} characters long"))
        return None
    if max_len is not None and len(value) > max_len:
        problems.append(Problem(path, TOO_LONG, f"must be at most {max_len} characters long"))
        return None
    if pattern is not None and not pattern.fullmatch(value):
        problems.append(Problem(path, PATTERN, f"must match {pattern.pattern}"))
        return None
    if no_other_chars and has_other_characters(value):
        problems.append(Problem(path, PATTERN, "must not contain control or unassigned characters"))
        return None
    return value


def check_bool(
    data: Mapping[str, Any], key: str, problems: list[Problem], *, prefix: str = ""
) -> bool | None:
    """Check an optional boolean field; return its value, or ``None`` when absent or bad."""
    if key not in data or data[key] is None:
        return None
    value = data[key]
    if not isinstance(value, bool):
        problems.append(Problem(f"{prefix}{key}", WRONG_TYPE, "must be true or false"))
        return None
    return value


def check_int(
    data: Mapping[str, Any],
    key: str,
    problems: list[Problem],
    *,
    required: bool,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    """Check an integer field (booleans are not integers here)."""
    if key not in data or data[key] is None:
        if required:
            problems.append(Problem(key, REQUIRED, "is required"))
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(Problem(key, WRONG_TYPE, "must be an integer"))
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        problems.append(Problem(key, ENUM, f"must be between {low} and {high}"))
        return None
    return value


def check_enum(
    data: Mapping[str, Any],
    key: str,
    choices: tuple[str, ...],
    problems: list[Problem],
    *,
    default: str | None = None,
) -> str | None:
    """Check an optional enum field; return its value or ``default``."""
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if not isinstance(value, str) or value not in choices:
        problems.append(Problem(key, ENUM, f"must be one of {' | '.join(choices)}"))
        return None
    return value
