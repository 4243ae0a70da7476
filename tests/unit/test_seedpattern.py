"""Seed patterns: whole-value matches with Java/ECMA semantics."""

from __future__ import annotations

import pytest

from agent.seedpattern import seed_match, seed_pattern


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        (r"^[a-zA-Z0-9\-\_]+$", "dev-1", True),
        (r"^[a-zA-Z0-9\-\_]+$", "dev-1\n", False),  # Python's $ matches before a final \n
        (r"^.*$", "", True),
        (r"^.*$", "one line", True),
        (r"^.*$", "a\nb", False),
        (r"^.*$", "a\r", False),
        (r"^.*$", "a\u2028", False),
        (r"^.*$", "a\u2029", False),
        (r"^.*$", "a\x85", False),
        (r"^.+$", "\t tab is fine", True),
        (r"^\d+$", "123", True),
        (r"^\d+$", "\u0661\u0662", False),  # Arabic-Indic digits are not \d in the seeds
        (r"^\w+$", "\u00e9", False),
        (r"[.]", ".", True),  # a dot in a class stays a literal dot
        (r"[.]", "\r", False),
        (r"a\.b", "a.b", True),
        (r"a\.b", "axb", False),
        (r"[\]x]", "]", True),
        (r"^cost\$$", "cost$", True),
        (r"abc", "xabcx", False),  # always the whole value
    ],
)
def test_seed_semantics(pattern: str, value: str, *, expected: bool) -> None:
    assert seed_match(pattern, value) is expected
    assert (seed_pattern(pattern).fullmatch(value) is not None) is expected


def test_compiled_patterns_are_cached() -> None:
    assert seed_pattern("^x+$") is seed_pattern("^x+$")
    assert seed_match(seed_pattern("^x+$"), "xx")
