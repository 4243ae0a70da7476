"""Field checks of provisioning-template requests, and the list calls' paging tokens.

The template store (:mod:`agent.registry.templates_store`) checks every request field with
the seed's lengths and patterns; the rules shared by create, update and the path
parameters live here: tags, the pre-provisioning hook, the template name, ``maxResults``
and ``nextToken``.
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Mapping
from typing import Any

from agent.errors import FieldProblem, InvalidRequestError
from agent.registry import fieldcheck as fc
from agent.seedpattern import seed_pattern

TEMPLATE_NAME_RE = seed_pattern(r"^[0-9A-Za-z_-]+$")
PAYLOAD_VERSION_RE = seed_pattern(r"^[0-9-]+$")
MAX_TAGS = 50

_TAG_KEY_EXTRA = frozenset("_.:/=+-@")


def _tag_key_ok(key: str) -> bool:
    return all(ch in _TAG_KEY_EXTRA or unicodedata.category(ch)[0] in {"L", "Z", "N"} for ch in key)


def check_tags(data: Mapping[str, Any], problems: list[fc.Problem]) -> list[dict[str, str]]:
    """Validate ``tags`` (a list of ``{Key, Value}``); return the normalised list."""
    raw = data.get("tags")
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(fc.Problem("tags", fc.WRONG_TYPE, "must be a list of {Key, Value}"))
        return []
    if len(raw) > MAX_TAGS:
        problems.append(fc.Problem("tags", fc.TOO_LONG, f"must hold at most {MAX_TAGS} tags"))
        return []
    tags: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        prefix = f"tags[{i}]."
        if not isinstance(item, dict):
            problems.append(fc.Problem(f"tags[{i}]", fc.WRONG_TYPE, "must be an object"))
            continue
        fc.check_unknown(item, ("Key", "Value"), problems, prefix)
        key = fc.check_string(
            item, "Key", problems, required=True, min_len=1, max_len=128, prefix=prefix
        )
        value = fc.check_string(item, "Value", problems, required=False, max_len=256, prefix=prefix)
        if key is None:
            continue
        if not _tag_key_ok(key):
            problems.append(
                fc.Problem(
                    f"{prefix}Key", fc.PATTERN, r"must match ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"
                )
            )
            continue
        if key in seen:
            problems.append(fc.Problem(f"{prefix}Key", fc.ENUM, f"repeats the tag key {key!r}"))
            continue
        seen.add(key)
        tag = {"Key": key}
        if value is not None:
            tag["Value"] = value
        tags.append(tag)
    return tags


def check_hook(
    data: Mapping[str, Any], problems: list[fc.Problem], key: str = "preProvisioningHook"
) -> dict[str, str] | None:
    """Validate a ``{targetArn, payloadVersion}`` hook; return it or ``None``."""
    raw = data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(fc.Problem(key, fc.WRONG_TYPE, "must be an object"))
        return None
    prefix = f"{key}."
    before = len(problems)
    fc.check_unknown(raw, ("targetArn", "payloadVersion"), problems, prefix)
    target = fc.check_string(
        raw, "targetArn", problems, required=True, min_len=1, max_len=2048, prefix=prefix
    )
    version = fc.check_string(
        raw,
        "payloadVersion",
        problems,
        required=False,
        min_len=10,
        max_len=32,
        pattern=PAYLOAD_VERSION_RE,
        prefix=prefix,
    )
    if len(problems) > before or target is None:
        return None
    hook = {"targetArn": target}
    if version is not None:
        hook["payloadVersion"] = version
    return hook


def check_template_name(name: Any) -> str:
    """Validate a template name given on its own (path parameter); return it.

    Raises:
        InvalidRequestError: the name breaks the seed's length or pattern.
    """
    problems: list[fc.Problem] = []
    value = fc.check_string(
        {"templateName": name},
        "templateName",
        problems,
        required=True,
        min_len=1,
        max_len=36,
        pattern=TEMPLATE_NAME_RE,
    )
    fc.raise_problems(problems, "provisioning template")
    assert value is not None  # noqa: S101 - raise_problems raised otherwise
    return value


def page_size(max_results: int | None) -> int:
    """The page size of a list call: ``maxResults`` (1-250), 250 when absent."""
    if max_results is None:
        return 250
    if isinstance(max_results, bool) or not 1 <= max_results <= 250:  # noqa: PLR2004
        raise InvalidRequestError(
            "maxResults must be between 1 and 250",
            reason=fc.ENUM,
            fields=[FieldProblem("maxResults", "must be between 1 and 250")],
        )
    return max_results


def encode_token(value: str) -> str:
    """The ``nextToken`` that resumes a listing after ``value``."""
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_token(token: str | None) -> str:
    """Where a listing resumes (``""``: from the start) for a ``nextToken`` it issued."""
    if token is None:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError as exc:
        raise InvalidRequestError(
            "nextToken is not a token this store issued",
            reason="INVALID_NEXT_TOKEN",
            fields=[FieldProblem("nextToken", "not recognised")],
        ) from exc
