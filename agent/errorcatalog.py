"""The catalogue of every error reason the agent can report, read from its own source.

Reasons are stable upper-snake strings (``CERTIFICATE_EXPIRED``) given where an error is
raised. This module finds them all without running anything: each error class's
``default_reason``, each ``reason="..."`` keyword, and module constants passed as
``reason=NAME``. With the error classes (``AgentError.registry``) it attributes each reason to
its seed exception name, HTTP status and exit code, and renders ``docs/errors.md``, so the
documentation is generated and a test keeps it current::

    python -m agent.errorcatalog            # print the Markdown
    python -m agent.errorcatalog --write docs/errors.md
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import agent
from agent.errors import AgentError

REASON = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
PACKAGE_DIR = Path(agent.__file__).resolve().parent
#: Modules not imported for the class registry (``__main__`` runs the command line).
_SKIP_IMPORT = frozenset({"agent.__main__"})


@dataclass
class Reason:
    """One reason: the error classes that carry it and the modules that raise it."""

    reason: str
    classes: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    message: str = ""


def _error_classes() -> dict[str, type[AgentError]]:
    for info in pkgutil.walk_packages(agent.__path__, prefix="agent."):
        if info.name not in _SKIP_IMPORT:
            importlib.import_module(info.name)
    return dict(AgentError.registry)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _callee(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _message(node: ast.Call) -> str:
    """The human message a raise site passes first, with ``…`` for its computed parts."""
    if not node.args:
        return ""
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    if isinstance(first, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "…"
            for v in first.values
        )
    return ""


def _reason_positions(trees: dict[str, ast.Module]) -> dict[str, int]:
    """Callables taking a reason, with its positional index.

    Functions with a ``reason`` parameter and classes with a ``reason`` field (dataclasses,
    named tuples), so a reason passed positionally to a helper is found too.
    """
    positions: dict[str, int] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                if names and names[0] in {"self", "cls"}:
                    names = names[1:]
                if "reason" in names:
                    positions.setdefault(node.name, names.index("reason"))
            elif isinstance(node, ast.ClassDef):
                fields = [
                    n.target.id
                    for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                ]
                for init in node.body:  # a class whose __init__ takes the reason
                    if isinstance(init, ast.FunctionDef) and init.name == "__init__":
                        fields = [a.arg for a in init.args.posonlyargs + init.args.args][1:]
                if "reason" in fields:
                    positions.setdefault(node.name, fields.index("reason"))
    return positions


def _reason_arguments(node: ast.Call, positions: dict[str, int]) -> Iterator[ast.expr]:
    """The expressions a call passes as its reason."""
    for kw in node.keywords:
        if kw.arg == "reason":
            yield kw.value
    index = positions.get(_callee(node))
    if index is not None and index < len(node.args):
        yield node.args[index]


class _Collector:
    """Accumulates reasons found in the parsed modules."""

    def __init__(self, classes: dict[str, type[AgentError]]) -> None:
        self.classes = classes
        self.found: dict[str, Reason] = {}
        #: Names of constants passed as a reason (``reason=DENIED``, ``fail(fc.PATTERN)``).
        self.constant_names: set[str] = set()

    def note(self, reason: str, module: str, cls: str | None, message: str = "") -> None:
        entry = self.found.setdefault(reason, Reason(reason))
        entry.modules.add(module)
        if cls is not None:
            entry.classes.add(cls)
        if message and not entry.message:
            entry.message = message

    def call(self, module: str, node: ast.Call, positions: dict[str, int]) -> None:
        for value in _reason_arguments(node, positions):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                name = _callee(node)
                cls_name = name if name in self.classes else None
                self.note(value.value, module, cls_name, _message(node) if cls_name else "")
            elif isinstance(value, ast.Name):
                self.constant_names.add(value.id)
            elif isinstance(value, ast.Attribute):
                self.constant_names.add(value.attr)

    def constants(self, module: str, tree: ast.Module) -> None:
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)):
                continue
            value = node.value.value
            if not (isinstance(value, str) and REASON.match(value)):
                continue
            if any(isinstance(t, ast.Name) and t.id in self.constant_names for t in node.targets):
                self.note(value, module, None)


def collect() -> dict[str, Reason]:
    """Every reason in the package, by name."""
    collector = _Collector(_error_classes())
    trees = {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        for p in sorted(PACKAGE_DIR.rglob("*.py"))
    }
    positions = _reason_positions(trees)
    for cls_name, cls in collector.classes.items():
        collector.note(cls.default_reason, cls.__module__, cls_name)
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                collector.call(module, node, positions)
    for module, tree in trees.items():
        collector.constants(module, tree)
    return {k: v for k, v in collector.found.items() if REASON.match(k)}


def _class_cells(entry: Reason, classes: dict[str, type[AgentError]]) -> tuple[str, str, str]:
    kinds = sorted(
        {(c.code, c.status_code, c.exit_code) for n in entry.classes if (c := classes.get(n))}
    )
    if not kinds:
        return "(set by the caller)", "", ""
    return (
        "<br>".join(dict.fromkeys(k[0] for k in kinds)),
        ", ".join(dict.fromkeys(str(k[1]) for k in kinds)),
        ", ".join(dict.fromkeys(str(k[2]) for k in kinds)),
    )


def render() -> str:
    """``docs/errors.md``."""
    classes = _error_classes()
    reasons = collect()
    by_area: dict[str, list[Reason]] = defaultdict(list)
    for entry in reasons.values():
        top = min(entry.modules).split(".")
        by_area[".".join(top[:2]) if len(top) > 2 else top[0]].append(entry)  # noqa: PLR2004
    lines = [
        "# Error reasons",
        "",
        "Generated from the source by `python -m agent.errorcatalog --write docs/errors.md`;",
        "a test fails when this page and the code disagree. Every error has the shape",
        '`{"error": {"code", "statusCode", "reason", "message", "fields"?}}` (see',
        "[cli.md](cli.md)); `code` is the seed exception name, `reason` one of the values",
        "below. Messages shown are the raise site's text with `…` for computed parts;",
        "they never carry key material.",
        "",
        f"{len(reasons)} reasons.",
    ]
    for area in sorted(by_area):
        lines += [
            "",
            f"## `{area}`",
            "",
            "| reason | code | status | exit | raised in | message |",
            "|---|---|---|---|---|---|",
        ]
        for entry in sorted(by_area[area], key=lambda e: e.reason):
            code, status, exit_code = _class_cells(entry, classes)
            modules = ", ".join(f"`{m}`" for m in sorted(entry.modules))
            message = entry.message.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| `{entry.reason}` | {code} | {status} | {exit_code} | {modules} | {message} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print or write the catalogue."""
    parser = argparse.ArgumentParser(prog="python -m agent.errorcatalog")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the Markdown to FILE")
    args = parser.parse_args(argv)
    text = render()
    if args.write is None:
        sys.stdout.write(text)
    else:
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
