"""Template types: the one rule set for stored templates (``FLEET_PROVISIONING``, ``JITP``).

:func:`validate_template_body` is the template store's body check, on create and on every
new version: the body must parse, and then suit its type (:func:`check_template_type`).
"""

from __future__ import annotations

from typing import Literal

from agent.errors import FieldProblem
from agent.registry.errors import TemplateError
from agent.registry.template.evaluator import Template
from agent.registry.template.parser import parse_template

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


def _prefixed(exc: TemplateError) -> TemplateError:
    fields = [
        f
        if f.path == "templateBody" or f.path.startswith("templateBody.")
        else FieldProblem(f"templateBody.{f.path}", f.message)
        for f in exc.fields
    ]
    return TemplateError(exc.message, reason=exc.reason, fields=fields)


def validate_template_body(body: str, template_type: str) -> None:
    """Check a stored template's body for its type (create, update, create version).

    ``template_type`` is the store's checked enum; anything but ``JITP`` is a
    fleet-provisioning template (the store's default type).

    Raises:
        TemplateError: the body does not parse, or breaks a rule of its type
            (:func:`check_template_type`); field paths are under ``templateBody.``.
    """
    kind: TemplateType = "JITP" if template_type == "JITP" else "FLEET_PROVISIONING"
    try:
        check_template_type(parse_template(body), kind)
    except TemplateError as exc:
        raise _prefixed(exc) from None
