"""Provisioning templates: the model (constants, patterns, resources, compiled specs).

Shared by :mod:`~agent.registry.template.parser`, :mod:`~agent.registry.template.functions`
and :mod:`~agent.registry.template.evaluator`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, cast

from agent.errors import FieldProblem
from agent.registry.errors import ParameterError, TemplateError
from agent.seedpattern import seed_pattern

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

THING_NAME_RE = seed_pattern(r"[a-zA-Z0-9:_-]{1,128}")
GROUP_NAME_RE = THING_NAME_RE  # ThingTypeName, ThingGroupName and BillingGroupName alike
ATTRIBUTE_NAME_RE = seed_pattern(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
ATTRIBUTE_VALUE_RE = seed_pattern(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
POLICY_NAME_RE = seed_pattern(r"[\w+=,.@-]{1,128}")
CERTIFICATE_ID_RE = seed_pattern(r"[a-f0-9]{64}")
_CERTIFICATE_ID_LITERAL_RE = seed_pattern(r"(0x)?[a-fA-F0-9]{64}")
LOGICAL_ID_RE = seed_pattern(r"[A-Za-z0-9_-]{1,255}")
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
