"""Provisioning templates: compiling the intrinsic functions into closures.

``Ref``, ``Fn::Join``, ``Fn::Select``, ``Fn::Split``, ``Fn::FindInMap`` and ``Fn::Sub`` each
compile once, at parse time, into a closure over the parameters; evaluation only calls them.
"""

from __future__ import annotations

import re
from typing import Any, cast

from agent.errors import FieldProblem
from agent.registry.template.model import (
    _SUB_RE,
    CERTIFICATE_PSEUDO_PARAMETERS,
    Env,
    Expr,
    ParameterSpec,
    Value,
    _EvalError,
)


class FunctionCompiler:
    """Compiles values and intrinsic functions; :class:`~agent.registry.template.parser`'s base."""

    parameters: dict[str, ParameterSpec]
    mappings: dict[str, dict[str, dict[str, Value]]]
    certificate_references: set[str]
    problems: list[FieldProblem]

    def problem(self, path: str, message: str) -> None:
        """Record one problem at ``path``."""
        self.problems.append(FieldProblem(path, message))

    # values

    def string(self, node: Any, path: str, pattern: re.Pattern[str] | None = None) -> Expr:
        """Compile a value that must evaluate to a string (a literal must match ``pattern``)."""
        if isinstance(node, str):
            if pattern is not None and pattern.fullmatch(node) is None:
                self.problem(path, f"{node[:80]!r} does not match {pattern.pattern}")
            return _const(node)
        if isinstance(node, dict) and _is_intrinsic(node):
            name = next(iter(node))
            if name == "Fn::Split":
                self.problem(f"{path}.{name}", "returns a list where a string is expected")
            expr = self.intrinsic(node, path)
            if name == "Fn::FindInMap":
                # A mapping value may be a list: check where a string is needed.
                return _string_only(expr, f"{path}.{name}")
            return expr
        self.problem(path, "must be a string or a function returning one")
        return _const("")

    def string_list(self, node: Any, path: str, pattern: re.Pattern[str] | None = None) -> Expr:
        """Compile a value that must evaluate to a list of strings."""
        if isinstance(node, list):
            items = tuple(self.string(v, f"{path}[{i}]", pattern) for i, v in enumerate(node))
            return lambda env: [item(env) for item in items]
        if isinstance(node, dict) and _is_intrinsic(node):
            name = next(iter(node))
            if name not in ("Fn::Split", "Fn::FindInMap"):
                self.problem(f"{path}.{name}", "returns a string where a list is expected")
            return self.intrinsic(node, path)
        self.problem(path, "must be a list or a function returning one")
        return _const([])

    def json_value(self, node: Any, path: str) -> Expr:
        """Compile a JSON value that may hold functions anywhere (policy documents)."""
        if isinstance(node, dict):
            if _is_intrinsic(node):
                return self.intrinsic(node, path)
            members = tuple((k, self.json_value(v, f"{path}.{k}")) for k, v in node.items())
            return lambda env: {k: e(env) for k, e in members}
        if isinstance(node, list):
            elements = tuple(self.json_value(v, f"{path}[{i}]") for i, v in enumerate(node))
            return lambda env: [e(env) for e in elements]
        return _const(node)

    def intrinsic(self, node: dict[str, Any], path: str) -> Expr:
        """Compile ``{"Ref": ...}`` or ``{"Fn::...": ...}``."""
        name, args = next(iter(node.items()))
        fpath = f"{path}.{name}"
        compile_function = {
            "Ref": self._ref,
            "Fn::Join": self._join,
            "Fn::Select": self._select,
            "Fn::Split": self._split,
            "Fn::FindInMap": self._find_in_map,
            "Fn::Sub": self._sub,
        }.get(name)
        if compile_function is None:
            self.problem(
                fpath,
                "unsupported function (Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap "
                "and Fn::Sub are supported)",
            )
            return _const("")
        return compile_function(args, fpath)

    def _known_name(self, name: str) -> bool:
        if name in CERTIFICATE_PSEUDO_PARAMETERS:
            self.certificate_references.add(name)
            return True
        return name in self.parameters

    def _ref(self, args: Any, path: str) -> Expr:
        if not isinstance(args, str):
            self.problem(path, "must be the name of a parameter")
            return _const("")
        if not self._known_name(args):
            self.problem(path, f"{args!r} is not a declared parameter")
            return _const("")
        return _lookup(args, path)

    def _join(self, args: Any, path: str) -> Expr:
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], str)):  # noqa: PLR2004
            self.problem(path, "must be [delimiter, [values...]]")
            return _const("")
        delimiter = args[0]
        values = self.string_list(args[1], f"{path}[1]")

        def join(env: Env) -> str:
            items = values(env)
            if not isinstance(items, list):
                raise _EvalError("TEMPLATE_EVALUATION_FAILED", f"{path}[1]", "must be a list")
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    raise _EvalError(
                        "TEMPLATE_EVALUATION_FAILED", f"{path}[1][{i}]", "must be a string"
                    )
            return delimiter.join(items)

        return join

    def _select(self, args: Any, path: str) -> Expr:
        if not (isinstance(args, list) and len(args) == 2):  # noqa: PLR2004
            self.problem(path, "must be [index, [values...]]")
            return _const("")
        index_node = args[0]
        index: Expr
        if isinstance(index_node, int) and not isinstance(index_node, bool):
            index = _const(index_node)
        elif isinstance(index_node, str) and not index_node.isdigit():
            self.problem(f"{path}[0]", "must be a non-negative integer")
            index = _const(0)
        else:
            index = self.string(index_node, f"{path}[0]")
        values = self.string_list(args[1], f"{path}[1]")

        def select(env: Env) -> Any:
            raw = index(env)
            try:
                position = int(raw)
            except ValueError:
                raise _EvalError(
                    "TEMPLATE_EVALUATION_FAILED", f"{path}[0]", f"{raw!r} is not an integer"
                ) from None
            items = values(env)
            if not isinstance(items, list):
                raise _EvalError("TEMPLATE_EVALUATION_FAILED", f"{path}[1]", "must be a list")
            if not 0 <= position < len(items):
                raise _EvalError(
                    "TEMPLATE_EVALUATION_FAILED",
                    f"{path}[0]",
                    f"index {position} is out of range for a list of {len(items)}",
                )
            return items[position]

        return select

    def _split(self, args: Any, path: str) -> Expr:
        if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], str)):  # noqa: PLR2004
            self.problem(path, "must be [delimiter, source string]")
            return _const([])
        delimiter = args[0]
        if not delimiter:
            self.problem(f"{path}[0]", "the delimiter must not be empty")
            return _const([])
        source = self.string(args[1], f"{path}[1]")
        return lambda env: source(env).split(delimiter)

    def _find_in_map(self, args: Any, path: str) -> Expr:
        if not (isinstance(args, list) and len(args) == 3):  # noqa: PLR2004
            self.problem(path, "must be [MapName, TopLevelKey, SecondLevelKey]")
            return _const("")
        if isinstance(args[0], str) and args[0] not in self.mappings:
            self.problem(f"{path}[0]", f"{args[0]!r} is not declared in Mappings")
            return _const("")
        keys = tuple(self.string(a, f"{path}[{i}]") for i, a in enumerate(args))
        mappings = self.mappings

        def find(env: Env) -> Value:
            map_name, top, second = (k(env) for k in keys)
            table = mappings.get(map_name)
            if table is None:
                raise _EvalError(
                    "MAPPING_KEY_NOT_FOUND", f"{path}[0]", f"no mapping named {map_name!r}"
                )
            row = table.get(top)
            if row is None:
                raise _EvalError(
                    "MAPPING_KEY_NOT_FOUND", f"{path}[1]", f"{top!r} is not a key of {map_name}"
                )
            value = row.get(second)
            if value is None:
                raise _EvalError(
                    "MAPPING_KEY_NOT_FOUND",
                    f"{path}[2]",
                    f"{second!r} is not a key of {map_name}.{top}",
                )
            return value

        return find

    def _sub(self, args: Any, path: str) -> Expr:
        variables: dict[str, Expr] = {}
        if isinstance(args, str):
            text, tpath = args, path
        elif (
            isinstance(args, list)
            and len(args) == 2  # noqa: PLR2004
            and isinstance(args[0], str)
            and isinstance(args[1], dict)
        ):
            text, tpath = args[0], f"{path}[0]"
            for key, value in args[1].items():
                variables[key] = self.string(value, f"{path}[1].{key}")
        else:
            self.problem(path, "must be a string or [string, {variable: value}]")
            return _const("")
        compiled = self._sub_parts(text, variables, tpath)
        if all(isinstance(p, str) for p in compiled):
            return _const("".join(cast("tuple[str, ...]", compiled)))

        def sub(env: Env) -> str:
            return "".join(p if isinstance(p, str) else p(env) for p in compiled)

        return sub

    def _sub_parts(
        self, text: str, variables: dict[str, Expr], path: str
    ) -> tuple[str | Expr, ...]:
        parts: list[str | Expr] = []
        last = 0
        for match in _SUB_RE.finditer(text):
            parts.append(text[last : match.start()])
            last = match.end()
            name = match.group(1)
            if name.startswith("!"):
                parts.append("${" + name[1:] + "}")
            elif name in variables:
                parts.append(variables[name])
            elif self._known_name(name):
                parts.append(_lookup(name, path))
            else:
                self.problem(path, f"${{{name}}} is not a declared parameter or variable")
        parts.append(text[last:])
        return tuple(p for p in parts if p != "")


def _has_function(node: Any) -> bool:
    if isinstance(node, dict):
        return _is_intrinsic(node) or any(_has_function(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_function(v) for v in node)
    return False


def _is_intrinsic(node: dict[str, Any]) -> bool:
    if len(node) != 1:
        return False
    key = next(iter(node))
    return key == "Ref" or key.startswith("Fn::")


def _string_only(expr: Expr, path: str) -> Expr:
    def checked(env: Env) -> str:
        value = expr(env)
        if type(value) is not str:
            raise _EvalError("TEMPLATE_EVALUATION_FAILED", path, "must evaluate to a string")
        return value

    return checked


def _const(value: Any) -> Expr:
    return lambda _env: value


def _lookup(name: str, path: str) -> Expr:
    def ref(env: Env) -> str:
        try:
            return env[name]
        except KeyError:
            raise _EvalError(
                "PARAMETER_MISSING",
                path,
                f"parameter {name!r} has no value and no Default",
            ) from None

    return ref
