"""Provisioning templates: the compiled :class:`Template` and its evaluation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from agent.errors import FieldProblem
from agent.registry.errors import ParameterError
from agent.registry.template.model import (
    ATTRIBUTE_VALUE_RE,
    CERTIFICATE_ID_RE,
    CERTIFICATE_PREFIX,
    CERTIFICATE_PSEUDO_PARAMETERS,
    GROUP_NAME_RE,
    POLICY_NAME_RE,
    THING_NAME_RE,
    CertificateMethod,
    CertificateResource,
    Env,
    Evaluation,
    Expr,
    ParameterSpec,
    PolicyResource,
    ThingResource,
    _Certificate,
    _check,
    _EvalError,
    _fail,
    _is_number,
    _Policy,
    _status,
    _Thing,
    _to_agent_error,
    _want_str,
)


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
