"""Provisioning templates: parsing, validation and evaluation.

:func:`parse_template` checks a whole template at once and compiles every value into a small
closure, so a template is parsed once and evaluated many times (bulk registration evaluates
the same template for every input line). Every problem names its JSON path
(``Resources.thing.Properties.ThingName.Fn::Join[1][0]``) in the error's ``fields``.

Supported grammar (AWS IoT provisioning templates): ``Parameters`` (``Type`` ``String`` or
``Number``, ``Default``), ``Mappings`` (two-level, literal values only), ``Resources`` of type
``AWS::IoT::Thing``, ``AWS::IoT::Certificate`` and ``AWS::IoT::Policy`` with
``OverrideSettings``, a flat ``DeviceConfiguration``, and the intrinsic functions ``Ref``,
``Fn::Join``, ``Fn::Select``, ``Fn::Split``, ``Fn::FindInMap`` and ``Fn::Sub``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, cast

from agent.errors import FieldProblem
from agent.jsonutil import reject_duplicate_keys
from agent.registry.errors import ParameterError, TemplateError

TEMPLATE_BODY_MAX = 10240
#: Deepest JSON nesting a template may have (functions nest; evaluation recurses).
TEMPLATE_DEPTH_MAX = 32

THING = "AWS::IoT::Thing"
CERTIFICATE = "AWS::IoT::Certificate"
POLICY = "AWS::IoT::Policy"
RESOURCE_TYPES = (THING, CERTIFICATE, POLICY)

CERTIFICATE_PREFIX = "AWS::IoT::Certificate::"
#: Certificate pseudo-parameters: ``Id`` is the registry's certificate id, the others come
#: from the certificate's subject.
CERTIFICATE_FIELDS = (
    "Id",
    "CommonName",
    "Country",
    "Organization",
    "OrganizationalUnit",
    "DistinguishedNameQualifier",
    "StateName",
    "SerialNumber",
)
CERTIFICATE_PSEUDO_PARAMETERS = tuple(CERTIFICATE_PREFIX + f for f in CERTIFICATE_FIELDS)

OverrideAction = Literal["DO_NOTHING", "REPLACE", "FAIL", "MERGE"]
CertificateMethod = Literal["CertificateId", "CertificateSigningRequest", "CertificatePem"]

THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
GROUP_NAME_RE = THING_NAME_RE  # ThingTypeName, ThingGroupName and BillingGroupName alike
ATTRIBUTE_NAME_RE = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
ATTRIBUTE_VALUE_RE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
POLICY_NAME_RE = re.compile(r"[\w+=,.@-]{1,128}")
CERTIFICATE_ID_RE = re.compile(r"[a-f0-9]{64}")
_CERTIFICATE_ID_LITERAL_RE = re.compile(r"(0x)?[a-fA-F0-9]{64}")
LOGICAL_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SUB_RE = re.compile(r"\$\{([^}]*)\}")

_TOP_LEVEL = ("Parameters", "Mappings", "Resources", "DeviceConfiguration")
_TOP_LEVEL_IGNORED = ("AWSTemplateFormatVersion", "Description")
_OVERRIDES: dict[str, dict[str, tuple[str, ...]]] = {
    THING: {
        "AttributePayload": ("DO_NOTHING", "REPLACE", "FAIL", "MERGE"),
        "ThingTypeName": ("DO_NOTHING", "REPLACE", "FAIL"),
        "ThingGroups": ("DO_NOTHING", "REPLACE", "FAIL", "MERGE"),
    },
    CERTIFICATE: {"Status": ("DO_NOTHING", "REPLACE", "FAIL")},
}
_THING_PROPERTIES = (
    "ThingName",
    "AttributePayload",
    "ThingTypeName",
    "ThingGroups",
    "BillingGroup",
)
_CERTIFICATE_METHODS: tuple[CertificateMethod, ...] = (
    "CertificateId",
    "CertificateSigningRequest",
    "CertificatePem",
)
_CERTIFICATE_PROPERTIES = (*_CERTIFICATE_METHODS, "CACertificatePem", "Status")

Value = str | list[str]
Env = Mapping[str, str]
Expr = Callable[[Env], Any]


# --- evaluated resources ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """One declared parameter."""

    name: str
    type: Literal["String", "Number"] = "String"
    default: str | None = None


@dataclass(frozen=True, slots=True)
class ThingResource:
    """An ``AWS::IoT::Thing`` after evaluation (None: the template does not set it)."""

    logical_id: str
    thing_name: str
    attributes: dict[str, str] | None = None
    thing_type_name: str | None = None
    thing_groups: tuple[str, ...] | None = None
    billing_group: str | None = None
    overrides: Mapping[str, OverrideAction] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CertificateResource:
    """An ``AWS::IoT::Certificate`` after evaluation: exactly one of the three methods."""

    logical_id: str
    method: CertificateMethod
    value: str
    ca_certificate_pem: str | None = None
    status: Literal["ACTIVE", "INACTIVE"] | None = None
    overrides: Mapping[str, OverrideAction] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicyResource:
    """An ``AWS::IoT::Policy`` after evaluation: a name, or a document (compact JSON text)."""

    logical_id: str
    policy_name: str | None = None
    policy_document: str | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A template evaluated against one set of parameters."""

    parameters: Mapping[str, str]
    thing: ThingResource | None
    certificate: CertificateResource | None
    policies: tuple[PolicyResource, ...]
    device_configuration: dict[str, str]


class _EvalError(Exception):
    def __init__(self, reason: str, path: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path
        self.message = message


def _to_agent_error(exc: _EvalError) -> TemplateError | ParameterError:
    problem = [FieldProblem(exc.path, exc.message)]
    if exc.reason == "PARAMETER_MISSING":
        return ParameterError(exc.message, reason=exc.reason, fields=problem)
    return TemplateError(exc.message, reason=exc.reason, fields=problem)


# --- the compiled template ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Thing:
    logical_id: str
    path: str
    name: Expr
    #: (attribute name, its JSON path, its value)
    attributes: tuple[tuple[str, str, Expr], ...] | None
    thing_type_name: Expr | None
    thing_groups: Expr | None
    billing_group: Expr | None
    overrides: Mapping[str, OverrideAction]


@dataclass(frozen=True, slots=True)
class _Certificate:
    logical_id: str
    path: str
    method: CertificateMethod
    value: Expr
    ca_certificate_pem: Expr | None
    status: Expr | None
    overrides: Mapping[str, OverrideAction]


@dataclass(frozen=True, slots=True)
class _Policy:
    logical_id: str
    path: str
    name: Expr | None
    document: Expr | None
    #: The canonical document when it holds no function (computed once, at parse time).
    constant_document: str | None = None


class Template:
    """A parsed, validated provisioning template; evaluate it with :meth:`evaluate`.

    Attributes:
        body: the template as a JSON object.
        parameters: the declared parameters by name.
        resource_types: every logical resource name with its type, in template order.
        certificate_method: how the certificate resource names its certificate (or None when
            the template has no certificate resource).
        certificate_logical_id: the certificate resource's logical name (or None).
        certificate_fields: certificate pseudo-parameters the template declares or refers to
            (other than ``AWS::IoT::Certificate::Id``); the certificate must carry every one
            of them, and only the certificate supplies them.
    """

    def __init__(
        self,
        body: dict[str, Any],
        *,
        parameters: dict[str, ParameterSpec],
        resource_types: dict[str, str],
        thing: _Thing | None,
        certificate: _Certificate | None,
        policies: tuple[_Policy, ...],
        device_configuration: tuple[tuple[str, str, Expr], ...],
        certificate_references: frozenset[str] = frozenset(),
    ) -> None:
        self.body = body
        self.parameters = parameters
        self.resource_types = resource_types
        self._thing = thing
        self._certificate = certificate
        self._policies = policies
        self._device_configuration = device_configuration
        # A certificate pseudo-parameter comes only from the certificate, never a Default.
        self._defaults = {
            n: p.default
            for n, p in parameters.items()
            if p.default is not None and not n.startswith(CERTIFICATE_PREFIX)
        }
        self._numbers = tuple(n for n, p in parameters.items() if p.type == "Number")
        self.certificate_method: CertificateMethod | None = (
            certificate.method if certificate else None
        )
        self.certificate_logical_id: str | None = certificate.logical_id if certificate else None
        self.certificate_fields: tuple[str, ...] = tuple(
            n
            for n in CERTIFICATE_PSEUDO_PARAMETERS
            if (n in parameters or n in certificate_references) and n != CERTIFICATE_PREFIX + "Id"
        )

    def resolve_parameters(self, parameters: Mapping[str, str]) -> dict[str, str]:
        """The caller's parameters completed with the declared defaults."""
        resolved = {**self._defaults, **parameters}
        for name in self._numbers:
            value = resolved.get(name)
            if value is not None and not _is_number(value):
                raise ParameterError(
                    f"parameter {name!r} is declared as a Number but is {value!r}",
                    reason="PARAMETER_INVALID",
                    fields=[FieldProblem(f"parameters.{name}", "must be a number")],
                )
        return resolved

    def evaluate_certificate(self, parameters: Env) -> CertificateResource | None:
        """Evaluate only the certificate resource (it must be known before the rest).

        Args:
            parameters: resolved parameters (see :meth:`resolve_parameters`).

        Raises:
            TemplateError: a function failed (its JSON path is in ``fields``).
            ParameterError: a referenced parameter has no value.
        """
        if self._certificate is None:
            return None
        try:
            return self._eval_certificate(self._certificate, parameters)
        except _EvalError as exc:
            raise _to_agent_error(exc) from None

    def evaluate(self, parameters: Env) -> Evaluation:
        """Evaluate every resource and the device configuration.

        Args:
            parameters: resolved parameters, including the certificate pseudo-parameters.

        Raises:
            TemplateError: a function failed or a value breaks a resource's rules (its JSON
                path is in ``fields``).
            ParameterError: a referenced parameter has no value.
        """
        try:
            thing = self._eval_thing(self._thing, parameters) if self._thing else None
            certificate = (
                self._eval_certificate(self._certificate, parameters) if self._certificate else None
            )
            policies = tuple(self._eval_policy(p, parameters) for p in self._policies)
            config: dict[str, str] = {}
            for key, path, expr in self._device_configuration:
                config[key] = _want_str(expr(parameters), path)
        except _EvalError as exc:
            raise _to_agent_error(exc) from None
        return Evaluation(parameters, thing, certificate, policies, config)

    @staticmethod
    def _eval_thing(  # noqa: C901 - one inline check per property (hot path)
        spec: _Thing, env: Env
    ) -> ThingResource:
        # Hot path of bulk registration: paths are built only when something fails.
        name = spec.name(env)
        if type(name) is not str or THING_NAME_RE.fullmatch(name) is None:
            _fail(name, THING_NAME_RE, f"{spec.path}.Properties.ThingName")
        attributes: dict[str, str] | None = None
        if spec.attributes is not None:
            attributes = {}
            for key, path, expr in spec.attributes:
                value = expr(env)
                if type(value) is not str or ATTRIBUTE_VALUE_RE.fullmatch(value) is None:
                    _fail(value, ATTRIBUTE_VALUE_RE, path)
                attributes[key] = value
        type_name = None
        if spec.thing_type_name is not None:
            type_name = spec.thing_type_name(env)
            if type(type_name) is not str or GROUP_NAME_RE.fullmatch(type_name) is None:
                _fail(type_name, GROUP_NAME_RE, f"{spec.path}.Properties.ThingTypeName")
        groups = None
        if spec.thing_groups is not None:
            raw = spec.thing_groups(env)
            if not isinstance(raw, list):
                raise _EvalError(
                    "TEMPLATE_EVALUATION_FAILED",
                    f"{spec.path}.Properties.ThingGroups",
                    "must be a list",
                )
            for i, group in enumerate(raw):
                if type(group) is not str or GROUP_NAME_RE.fullmatch(group) is None:
                    _fail(group, GROUP_NAME_RE, f"{spec.path}.Properties.ThingGroups[{i}]")
            groups = tuple(raw)
        billing = None
        if spec.billing_group is not None:
            billing = spec.billing_group(env)
            if type(billing) is not str or GROUP_NAME_RE.fullmatch(billing) is None:
                _fail(billing, GROUP_NAME_RE, f"{spec.path}.Properties.BillingGroup")
        return ThingResource(
            spec.logical_id, name, attributes, type_name, groups, billing, spec.overrides
        )

    @staticmethod
    def _eval_certificate(spec: _Certificate, env: Env) -> CertificateResource:
        base = f"{spec.path}.Properties"
        path = f"{base}.{spec.method}"
        value = _want_str(spec.value(env), path)
        if spec.method == "CertificateId":
            value = value.lower().removeprefix("0x")
            _check(value, CERTIFICATE_ID_RE, path, "must be a 64-character hex certificate id")
        elif not value.strip():
            raise _EvalError("TEMPLATE_EVALUATION_FAILED", path, "must not be empty")
        ca_pem = None
        if spec.ca_certificate_pem is not None:
            ca_pem = _want_str(spec.ca_certificate_pem(env), f"{base}.CACertificatePem")
        status: Literal["ACTIVE", "INACTIVE"] | None = None
        if spec.status is not None:
            status = _status(_want_str(spec.status(env), f"{base}.Status"), f"{base}.Status")
        return CertificateResource(
            spec.logical_id, spec.method, value, ca_pem, status, spec.overrides
        )

    @staticmethod
    def _eval_policy(spec: _Policy, env: Env) -> PolicyResource:
        base = f"{spec.path}.Properties"
        if spec.name is not None:
            path = f"{base}.PolicyName"
            name = _check(_want_str(spec.name(env), path), POLICY_NAME_RE, path)
            return PolicyResource(spec.logical_id, policy_name=name)
        if spec.constant_document is not None:
            return PolicyResource(spec.logical_id, policy_document=spec.constant_document)
        assert spec.document is not None  # noqa: S101 - parse_template guarantees one of them
        path = f"{base}.PolicyDocument"
        raw = spec.document(env)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _EvalError(
                    "POLICY_DOCUMENT_INVALID", path, f"is not valid JSON: {exc.msg}"
                ) from None
        if not isinstance(raw, dict):
            raise _EvalError("POLICY_DOCUMENT_INVALID", path, "must be a JSON object")
        document = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        return PolicyResource(spec.logical_id, policy_document=document)


TemplateType = Literal["FLEET_PROVISIONING", "JITP"]


def check_template_type(template: Template, template_type: TemplateType) -> None:
    """Check the rules that depend on a stored template's ``type``.

    Both types name their certificate by ``CertificateId`` (fleet provisioning injects
    ``AWS::IoT::Certificate::Id``; JITP registers the device's certificate first).
    ``Mappings`` and ``DeviceConfiguration`` exist only in fleet-provisioning templates.

    Raises:
        TemplateError: ``TEMPLATE_INVALID`` with the offending paths.
    """
    problems: list[FieldProblem] = []
    method = template.certificate_method
    if method is not None and method != "CertificateId":
        problems.append(
            FieldProblem(
                f"Resources.{template.certificate_logical_id}.Properties.{method}",
                f"a {template_type} template names its certificate by CertificateId",
            )
        )
    if template_type == "JITP":
        problems.extend(
            FieldProblem(section, "only fleet-provisioning templates have this section")
            for section in ("Mappings", "DeviceConfiguration")
            if section in template.body
        )
    if problems:
        raise TemplateError(
            f"the template does not suit type {template_type}: "
            f"{problems[0].path}: {problems[0].message}",
            fields=problems,
        )


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _want_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _EvalError("TEMPLATE_EVALUATION_FAILED", path, "must evaluate to a string")
    return value


def _check(value: str, pattern: re.Pattern[str], path: str, message: str | None = None) -> str:
    if pattern.fullmatch(value) is None:
        raise _EvalError(
            "TEMPLATE_EVALUATION_FAILED",
            path,
            message or f"{value[:80]!r} does not match {pattern.pattern}",
        )
    return value


def _fail(value: Any, pattern: re.Pattern[str], path: str) -> NoReturn:
    _check(_want_str(value, path), pattern, path)
    raise AssertionError(path)  # pragma: no cover - _check raised


def _status(value: str, path: str) -> Literal["ACTIVE", "INACTIVE"]:
    upper = value.upper()
    if upper not in ("ACTIVE", "INACTIVE"):
        raise _EvalError("TEMPLATE_EVALUATION_FAILED", path, "must be ACTIVE or INACTIVE")
    return cast("Literal['ACTIVE', 'INACTIVE']", upper)


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


class _Parser:
    """Validates a template and compiles its values into closures."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.problems: list[FieldProblem] = []
        self.parameters: dict[str, ParameterSpec] = {}
        self.mappings: dict[str, dict[str, dict[str, Value]]] = {}
        self.certificate_references: set[str] = set()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(FieldProblem(path, message))

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
