"""Provisioning templates: decoding and validating a body into a :class:`Template`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, cast

from agent.errors import FieldProblem
from agent.jsonutil import reject_duplicate_keys
from agent.registry.errors import TemplateError
from agent.registry.template.evaluator import Template
from agent.registry.template.functions import FunctionCompiler, _const, _has_function, _is_intrinsic
from agent.registry.template.model import (
    _CERTIFICATE_ID_LITERAL_RE,
    _CERTIFICATE_METHODS,
    _CERTIFICATE_PROPERTIES,
    _OVERRIDES,
    _THING_PROPERTIES,
    _TOP_LEVEL,
    _TOP_LEVEL_IGNORED,
    ATTRIBUTE_NAME_RE,
    ATTRIBUTE_VALUE_RE,
    CERTIFICATE,
    GROUP_NAME_RE,
    LOGICAL_ID_RE,
    POLICY_NAME_RE,
    RESOURCE_TYPES,
    TEMPLATE_BODY_MAX,
    TEMPLATE_DEPTH_MAX,
    THING,
    THING_NAME_RE,
    Expr,
    OverrideAction,
    ParameterSpec,
    Value,
    _Certificate,
    _is_number,
    _Policy,
    _Thing,
)

# --- parsing ------------------------------------------------------------------------------


def load_template_body(body: str | Mapping[str, Any]) -> dict[str, Any]:
    """Decode a template body (JSON text of at most 10,240 characters, or an object).

    Raises:
        TemplateError: too long, not JSON, duplicate keys, or not a JSON object.
    """
    if isinstance(body, Mapping):
        return dict(body)
    if len(body) > TEMPLATE_BODY_MAX:
        raise TemplateError(
            f"the template body has {len(body)} characters; at most {TEMPLATE_BODY_MAX} "
            "are allowed",
            reason="TEMPLATE_TOO_LARGE",
            fields=[FieldProblem("templateBody", f"at most {TEMPLATE_BODY_MAX} characters")],
        )
    try:
        data = json.loads(body, object_pairs_hook=reject_duplicate_keys)
    except RecursionError:
        raise _too_deep("templateBody") from None
    except json.JSONDecodeError as exc:
        raise TemplateError(
            f"the template body is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}",
            fields=[FieldProblem("templateBody", f"not valid JSON: {exc.msg}")],
        ) from None
    except ValueError as exc:
        raise TemplateError(
            f"the template body is not valid: {exc}",
            fields=[FieldProblem("templateBody", str(exc))],
        ) from None
    if not isinstance(data, dict):
        raise TemplateError(
            "the template body must be a JSON object",
            fields=[FieldProblem("templateBody", "must be a JSON object")],
        )
    return data


def parse_template(body: str | Mapping[str, Any]) -> Template:
    """Parse and validate a whole provisioning template.

    Args:
        body: the template as JSON text (``templateBody``) or as an already decoded object.

    Returns:
        The compiled template, ready to be evaluated many times.

    Raises:
        TemplateError: ``InvalidRequestException`` (400), reason ``TEMPLATE_INVALID`` (or
            ``TEMPLATE_TOO_LARGE``), listing every problem with its JSON path in ``fields``.
    """
    data = load_template_body(body)
    deep = _too_deep_path(data, "", 0)
    if deep is not None:
        raise _too_deep(deep)
    parser = _Parser(data)
    template = parser.parse()
    if parser.problems:
        count = len(parser.problems)
        first = parser.problems[0]
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise TemplateError(
            f"the template is not valid: {first.path}: {first.message}{more}",
            fields=parser.problems,
        )
    return template


def _too_deep(path: str) -> TemplateError:
    return TemplateError(
        f"the template nests deeper than {TEMPLATE_DEPTH_MAX} levels at {path}",
        fields=[FieldProblem(path, f"nested deeper than {TEMPLATE_DEPTH_MAX} levels")],
    )


def _too_deep_path(node: Any, path: str, depth: int) -> str | None:
    """The path of the first value nested deeper than the limit, or None."""
    if depth > TEMPLATE_DEPTH_MAX:
        return path or "templateBody"
    if isinstance(node, dict):
        for key, value in node.items():
            found = _too_deep_path(value, f"{path}.{key}" if path else key, depth + 1)
            if found is not None:
                return found
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found = _too_deep_path(value, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


class _Parser(FunctionCompiler):
    """Validates a template and compiles its values into closures."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.problems: list[FieldProblem] = []
        self.parameters: dict[str, ParameterSpec] = {}
        self.mappings: dict[str, dict[str, dict[str, Value]]] = {}
        self.certificate_references: set[str] = set()

    def parse(self) -> Template:
        for key in self.data:
            if key not in _TOP_LEVEL and key not in _TOP_LEVEL_IGNORED:
                self.problem(key, "unknown top-level section")
        self._parameters(self.data.get("Parameters", {}))
        self._mappings(self.data.get("Mappings", {}))
        resource_types, thing, certificate, policies = self._resources(self.data.get("Resources"))
        config = self._device_configuration(self.data.get("DeviceConfiguration", {}))
        return Template(
            self.data,
            parameters=self.parameters,
            resource_types=resource_types,
            thing=thing,
            certificate=certificate,
            policies=tuple(policies),
            device_configuration=config,
            certificate_references=frozenset(self.certificate_references),
        )

    def _resources(  # noqa: C901 - one branch per resource type and shape check
        self, resources: Any
    ) -> tuple[dict[str, str], _Thing | None, _Certificate | None, list[_Policy]]:
        resource_types: dict[str, str] = {}
        thing: _Thing | None = None
        certificate: _Certificate | None = None
        policies: list[_Policy] = []
        if resources is None:
            self.problem("Resources", "is required")
            resources = {}
        elif not isinstance(resources, dict):
            self.problem("Resources", "must be an object")
            resources = {}
        elif not resources:
            self.problem("Resources", "must declare at least one resource")
        for logical_id, resource in resources.items():
            path = f"Resources.{logical_id}"
            kind = self._resource_header(logical_id, resource, path)
            if kind is None:
                continue
            resource_types[logical_id] = kind
            props = resource["Properties"]
            overrides = self._overrides(kind, resource.get("OverrideSettings"), path)
            if kind == THING:
                parsed_thing = self._thing(logical_id, props, overrides, path)
                if thing is not None:
                    self.problem(path, "a template may declare only one AWS::IoT::Thing")
                thing = thing or parsed_thing
            elif kind == CERTIFICATE:
                parsed_cert = self._certificate(logical_id, props, overrides, path)
                if certificate is not None:
                    self.problem(path, "a template may declare only one AWS::IoT::Certificate")
                certificate = certificate or parsed_cert
            else:
                parsed_policy = self._policy(logical_id, props, path)
                if parsed_policy is not None:
                    policies.append(parsed_policy)
        return resource_types, thing, certificate, policies

    # sections

    def _parameters(self, params: Any) -> None:
        if not isinstance(params, dict):
            self.problem("Parameters", "must be an object")
            return
        for name, spec in params.items():
            parsed = self._parameter(name, spec, f"Parameters.{name}")
            if parsed is not None:
                self.parameters[name] = parsed

    def _parameter(  # noqa: C901 - one check per rule, each with its own path
        self, name: str, spec: Any, path: str
    ) -> ParameterSpec | None:
        if not name or len(name) > 2048:  # noqa: PLR2004 - the seed's key length
            self.problem(path, "a parameter name has 1 to 2048 characters")
            return None
        if not isinstance(spec, dict):
            self.problem(path, "must be an object with a Type")
            return None
        for key in spec:
            if key not in ("Type", "Default", "Description"):
                self.problem(f"{path}.{key}", "unknown parameter property")
        kind = spec.get("Type")
        if kind not in ("String", "Number"):
            self.problem(f"{path}.Type", "must be String or Number")
            return None
        raw = spec.get("Default")
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)
        default: str | None = raw if isinstance(raw, str) else None
        problem = None
        if raw is not None and default is None:
            problem = "must be a string"
        elif default is not None and len(default) > 4096:  # noqa: PLR2004 - value limit
            problem = "at most 4096 characters"
        elif kind == "Number" and default is not None and not _is_number(default):
            problem = "must be a number"
        if problem is not None:
            self.problem(f"{path}.Default", problem)
            return None
        return ParameterSpec(name, kind, default)

    def _mappings(self, mappings: Any) -> None:
        if not isinstance(mappings, dict):
            self.problem("Mappings", "must be an object")
            return
        for map_name, top in mappings.items():
            path = f"Mappings.{map_name}"
            if not isinstance(top, dict) or not top:
                self.problem(path, "must be a non-empty object of objects")
                continue
            table: dict[str, dict[str, Value]] = {}
            for top_key, second in top.items():
                tpath = f"{path}.{top_key}"
                if not isinstance(second, dict) or not second:
                    self.problem(tpath, "must be a non-empty object")
                    continue
                row: dict[str, Value] = {}
                for key, value in second.items():
                    leaf = self._mapping_value(value, f"{tpath}.{key}")
                    if leaf is not None:
                        row[key] = leaf
                table[top_key] = row
            self.mappings[map_name] = table

    def _mapping_value(self, value: Any, path: str) -> Value | None:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, dict):
            self.problem(path, "Mappings may not contain parameters or functions")
        else:
            self.problem(path, "must be a string or a list of strings")
        return None

    def _resource_header(self, logical_id: str, resource: Any, path: str) -> str | None:
        if not LOGICAL_ID_RE.fullmatch(logical_id):
            self.problem(path, "a logical resource name has 1 to 255 of [A-Za-z0-9_-]")
        if not isinstance(resource, dict):
            self.problem(path, "must be an object with Type and Properties")
            return None
        for key in resource:
            if key not in ("Type", "Properties", "OverrideSettings"):
                self.problem(f"{path}.{key}", "unknown resource key")
        kind = resource.get("Type")
        if kind not in RESOURCE_TYPES:
            self.problem(f"{path}.Type", f"must be one of {', '.join(RESOURCE_TYPES)}")
            return None
        props = resource.get("Properties")
        if not isinstance(props, dict):
            self.problem(f"{path}.Properties", "is required and must be an object")
            return None
        return cast("str", kind)

    def _overrides(self, kind: str, settings: Any, path: str) -> dict[str, OverrideAction]:
        if settings is None:
            return {}
        opath = f"{path}.OverrideSettings"
        allowed = _OVERRIDES.get(kind)
        if allowed is None:
            self.problem(opath, f"OverrideSettings are not supported for {kind}")
            return {}
        if not isinstance(settings, dict):
            self.problem(opath, "must be an object")
            return {}
        result: dict[str, OverrideAction] = {}
        for key, action in settings.items():
            if key not in allowed:
                self.problem(f"{opath}.{key}", f"must be one of {', '.join(allowed)}")
            elif action not in allowed[key]:
                self.problem(f"{opath}.{key}", f"must be one of {', '.join(allowed[key])}")
            else:
                result[key] = cast("OverrideAction", action)
        return result

    def _unknown(self, props: dict[str, Any], known: tuple[str, ...], path: str) -> None:
        for key in props:
            if key not in known:
                self.problem(f"{path}.Properties.{key}", "unknown property")

    def _thing(
        self,
        logical_id: str,
        props: dict[str, Any],
        overrides: dict[str, OverrideAction],
        path: str,
    ) -> _Thing | None:
        self._unknown(props, _THING_PROPERTIES, path)
        base = f"{path}.Properties"
        if "ThingName" not in props:
            self.problem(f"{base}.ThingName", "is required")
            return None
        name = self.string(props["ThingName"], f"{base}.ThingName", THING_NAME_RE)
        attributes: tuple[tuple[str, str, Expr], ...] | None = None
        if "AttributePayload" in props:
            payload = props["AttributePayload"]
            apath = f"{base}.AttributePayload"
            if not isinstance(payload, dict) or _is_intrinsic(payload):
                self.problem(apath, "must be an object of attribute names and values")
            else:
                items = []
                for key, value in payload.items():
                    if not ATTRIBUTE_NAME_RE.fullmatch(key):
                        self.problem(f"{apath}.{key}", "attribute names match [a-zA-Z0-9_.,@/:#-]")
                    vpath = f"{apath}.{key}"
                    items.append((key, vpath, self.string(value, vpath, ATTRIBUTE_VALUE_RE)))
                attributes = tuple(items)
        type_name = self._optional_string(props, "ThingTypeName", base, GROUP_NAME_RE)
        groups = None
        if "ThingGroups" in props:
            groups = self.string_list(props["ThingGroups"], f"{base}.ThingGroups", GROUP_NAME_RE)
        billing = self._optional_string(props, "BillingGroup", base, GROUP_NAME_RE)
        return _Thing(logical_id, path, name, attributes, type_name, groups, billing, overrides)

    def _optional_string(
        self,
        props: dict[str, Any],
        key: str,
        base: str,
        pattern: re.Pattern[str] | None = None,
    ) -> Expr | None:
        return self.string(props[key], f"{base}.{key}", pattern) if key in props else None

    def _certificate(
        self,
        logical_id: str,
        props: dict[str, Any],
        overrides: dict[str, OverrideAction],
        path: str,
    ) -> _Certificate | None:
        self._unknown(props, _CERTIFICATE_PROPERTIES, path)
        base = f"{path}.Properties"
        methods = [m for m in _CERTIFICATE_METHODS if m in props]
        if len(methods) != 1:
            self.problem(
                base,
                "must have exactly one of CertificateId, CertificateSigningRequest, "
                f"CertificatePem (has {len(methods)})",
            )
            return None
        method = methods[0]
        if "CACertificatePem" in props and method != "CertificatePem":
            self.problem(f"{base}.CACertificatePem", "is only allowed with CertificatePem")
        value = self.string(
            props[method],
            f"{base}.{method}",
            _CERTIFICATE_ID_LITERAL_RE if method == "CertificateId" else None,
        )
        ca_pem = self._optional_string(props, "CACertificatePem", base)
        status = None
        if "Status" in props:
            raw = props["Status"]
            if isinstance(raw, str) and raw.upper() not in ("ACTIVE", "INACTIVE"):
                self.problem(f"{base}.Status", "must be ACTIVE or INACTIVE")
            status = self.string(raw, f"{base}.Status")
        return _Certificate(logical_id, path, method, value, ca_pem, status, overrides)

    def _policy(self, logical_id: str, props: dict[str, Any], path: str) -> _Policy | None:
        self._unknown(props, ("PolicyName", "PolicyDocument"), path)
        base = f"{path}.Properties"
        has_name, has_doc = "PolicyName" in props, "PolicyDocument" in props
        if has_name == has_doc:
            self.problem(base, "must have exactly one of PolicyName, PolicyDocument")
            return None
        if has_name:
            return _Policy(
                logical_id,
                path,
                self.string(props["PolicyName"], f"{base}.PolicyName", POLICY_NAME_RE),
                None,
            )
        raw = props["PolicyDocument"]
        document = self._policy_document(raw, f"{base}.PolicyDocument")
        if document is None:
            return None
        constant = None
        if isinstance(raw, str) or (isinstance(raw, dict) and not _has_function(raw)):
            parsed = json.loads(raw) if isinstance(raw, str) else raw
            constant = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
        return _Policy(logical_id, path, None, document, constant)

    def _policy_document(self, doc: Any, path: str) -> Expr | None:
        if isinstance(doc, str):
            try:
                parsed = json.loads(doc)
            except json.JSONDecodeError as exc:
                self.problem(path, f"is not valid JSON: {exc.msg}")
                return None
            if not isinstance(parsed, dict):
                self.problem(path, "must be a JSON object")
                return None
            return _const(doc)
        if isinstance(doc, dict) and not _is_intrinsic(doc):
            return self.json_value(doc, path)
        return self.string(doc, path)

    def _device_configuration(self, config: Any) -> tuple[tuple[str, str, Expr], ...]:
        if not isinstance(config, dict) or _is_intrinsic(config):
            self.problem("DeviceConfiguration", "must be an object of keys and values")
            return ()
        items = []
        for key, value in config.items():
            path = f"DeviceConfiguration.{key}"
            node = json.dumps(value) if isinstance(value, int | float | bool) else value
            if isinstance(node, dict) and not _is_intrinsic(node):
                self.problem(path, "DeviceConfiguration may not contain nested objects")
                continue
            if isinstance(node, list):
                self.problem(path, "DeviceConfiguration values are strings")
                continue
            items.append((key, path, self.string(node, path)))
        return tuple(items)
