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

The package has one module per part: :mod:`.model` (constants, patterns, resources),
:mod:`.parser` (a body into a :class:`Template`), :mod:`.functions` (the intrinsic functions
compiled into closures), :mod:`.evaluator` (:class:`Template` and its evaluation) and
:mod:`.types` (the rules of the ``FLEET_PROVISIONING`` and ``JITP`` template types).
"""

from agent.registry.template.evaluator import Template
from agent.registry.template.model import (
    ATTRIBUTE_NAME_RE,
    ATTRIBUTE_VALUE_RE,
    CERTIFICATE,
    CERTIFICATE_FIELDS,
    CERTIFICATE_ID_RE,
    CERTIFICATE_PREFIX,
    CERTIFICATE_PSEUDO_PARAMETERS,
    GROUP_NAME_RE,
    LOGICAL_ID_RE,
    POLICY,
    POLICY_NAME_RE,
    RESOURCE_TYPES,
    TEMPLATE_BODY_MAX,
    TEMPLATE_DEPTH_MAX,
    THING,
    THING_NAME_RE,
    CertificateMethod,
    CertificateResource,
    Env,
    Evaluation,
    Expr,
    OverrideAction,
    ParameterSpec,
    PolicyResource,
    ThingResource,
    Value,
)
from agent.registry.template.parser import load_template_body, parse_template
from agent.registry.template.types import TemplateType, check_template_type, validate_template_body

__all__ = [
    "ATTRIBUTE_NAME_RE",
    "ATTRIBUTE_VALUE_RE",
    "CERTIFICATE",
    "CERTIFICATE_FIELDS",
    "CERTIFICATE_ID_RE",
    "CERTIFICATE_PREFIX",
    "CERTIFICATE_PSEUDO_PARAMETERS",
    "GROUP_NAME_RE",
    "LOGICAL_ID_RE",
    "POLICY",
    "POLICY_NAME_RE",
    "RESOURCE_TYPES",
    "TEMPLATE_BODY_MAX",
    "TEMPLATE_DEPTH_MAX",
    "THING",
    "THING_NAME_RE",
    "CertificateMethod",
    "CertificateResource",
    "Env",
    "Evaluation",
    "Expr",
    "OverrideAction",
    "ParameterSpec",
    "PolicyResource",
    "Template",
    "TemplateType",
    "ThingResource",
    "Value",
    "check_template_type",
    "load_template_body",
    "parse_template",
    "validate_template_body",
]
