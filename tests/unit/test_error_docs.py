"""docs/errors.md is generated from the source and must match it."""

from __future__ import annotations

from pathlib import Path

from agent.errorcatalog import collect, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_errors_page_matches_the_source() -> None:
    page = (DOCS / "errors.md").read_text(encoding="utf-8")
    assert page == render(), "run: .venv/bin/python -m agent.errorcatalog --write docs/errors.md"


def test_every_way_of_giving_a_reason_is_found() -> None:
    reasons = collect()
    # a reason= keyword on an error class
    assert "TemplateError" in reasons["INPUT_UNREADABLE"].classes
    assert "agent.registry.cli" in reasons["INPUT_UNREADABLE"].modules
    # a module constant handed to a helper
    assert "agent.registry.hook" in reasons["HOOK_DENIED"].modules
    # a positional argument of a helper with a ``reason`` parameter
    assert "agent.netconf.probe" in reasons["PROBE_NO_CARRIER"].modules
    # a class's default
    assert "CorruptStateError" in reasons["STATE_CORRUPT"].classes
    # constants of a field-check module passed as reason=module.NAME
    assert "FIELD_REQUIRED" in reasons
    assert all(r.reason.isupper() and " " not in r.reason for r in reasons.values())


def test_the_page_lists_each_reason_once() -> None:
    rows = [
        line.split("|")[1].strip()
        for line in (DOCS / "errors.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    ]
    assert len(rows) == len(set(rows)) == len(collect())
