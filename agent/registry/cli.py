"""``edge-agent register-thing``, ``describe-thing`` and ``policy create``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.errors import EXIT_OK, FieldProblem
from agent.registry.errors import ParameterError, TemplateError


def register(sub: Any) -> None:
    """Add the ``register-thing`` and ``policy`` commands."""
    reg = sub.add_parser(
        "register-thing",
        help="evaluate a provisioning template and register its thing, certificate, policies",
    )
    reg.add_argument(
        "--template-body", type=Path, required=True, help="template file (JSON)", metavar="FILE"
    )
    reg.add_argument(
        "--parameters",
        default=None,
        metavar="JSON",
        help='parameters as a JSON object, e.g. \'{"SerialNumber": "123"}\' (or @FILE)',
    )
    reg.add_argument(
        "--hook",
        default=None,
        metavar="TARGET",
        help="pre-provisioning hook: an absolute path to an executable or an https:// URL",
    )
    reg.add_argument(
        "--certificate-id",
        default=None,
        metavar="ID",
        help="a registered certificate the request is made with (its pseudo-parameters)",
    )
    reg.add_argument("--database", type=Path, default=None, help="override registry.database")
    reg.add_argument("--ca-dir", type=Path, default=None, help="override registry.ca_dir")
    reg.set_defaults(handler=_register_thing)

    describe = sub.add_parser(
        "describe-thing", help="show a thing with its certificates and their policies"
    )
    describe.add_argument("name", help="thing name")
    describe.add_argument("--json", action="store_true", help="machine-readable output")
    describe.add_argument("--database", type=Path, default=None, help="override registry.database")
    describe.set_defaults(handler=_describe_thing)

    policy = sub.add_parser("policy", help="IoT policies in the local registry")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    create = policy_sub.add_parser("create", help="create or replace a named policy")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--document", type=Path, required=True, help="policy document (JSON)", metavar="FILE"
    )
    create.add_argument("--database", type=Path, default=None, help="override registry.database")
    create.set_defaults(handler=_policy_create)


def _section(args: argparse.Namespace) -> Any:
    import dataclasses

    from agent.config import load_config

    section = load_config(args.config).registry
    changes: dict[str, Any] = {}
    if getattr(args, "database", None) is not None:
        changes["database"] = args.database
    if getattr(args, "ca_dir", None) is not None:
        changes["ca_dir"] = args.ca_dir
    return dataclasses.replace(section, **changes)


def _read_text(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(
            f"cannot read {path}: {exc}",
            reason="INPUT_UNREADABLE",
            fields=[FieldProblem(field, "cannot be read")],
        ) from exc


def _parameters(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.startswith("@"):
        text = _read_text(Path(text[1:]), "parameters")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParameterError(
            f"--parameters is not valid JSON: {exc.msg}",
            fields=[FieldProblem("parameters", "not valid JSON")],
        ) from None
    except RecursionError:
        raise ParameterError(
            "--parameters nests too deeply",
            fields=[FieldProblem("parameters", "nested too deeply")],
        ) from None
    if not isinstance(value, dict):
        raise ParameterError(
            "--parameters must be a JSON object",
            fields=[FieldProblem("parameters", "must be an object")],
        )
    return value


def _register_thing(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.registry.hook import PreProvisioningHook
    from agent.registry.register import Registry

    body = _read_text(args.template_body, "templateBody")
    parameters = _parameters(args.parameters)
    section = _section(args)
    registry = Registry.from_config(section)
    try:
        hook = None
        if args.hook:
            hook = PreProvisioningHook(args.hook, timeout=section.hook_timeout_seconds)
        result = registry.register_thing(
            body, parameters, hook=hook, certificate_id=args.certificate_id
        )
    finally:
        registry.storage.close()
    print_json(result.to_dict())
    return EXIT_OK


def _policy_create(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.registry.storage import PolicyRecord, SqliteRegistryStorage
    from agent.registry.template import POLICY_NAME_RE

    if not POLICY_NAME_RE.fullmatch(args.name):
        raise ParameterError(
            "the policy name must match [\\w+=,.@-]{1,128}",
            fields=[FieldProblem("policyName", "does not match [\\w+=,.@-]{1,128}")],
        )
    text = _read_text(args.document, "policyDocument")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParameterError(
            f"the policy document is not valid JSON: {exc.msg}",
            fields=[FieldProblem("policyDocument", "not valid JSON")],
        ) from None
    if not isinstance(document, dict):
        raise ParameterError(
            "the policy document must be a JSON object",
            fields=[FieldProblem("policyDocument", "must be an object")],
        )
    section = _section(args)
    with SqliteRegistryStorage.open(section.database) as storage, storage.transaction() as tx:
        tx.put_policy(PolicyRecord(args.name, json.dumps(document, separators=(",", ":"))))
    print_json(
        {
            "policyName": args.name,
            "policyArn": f"arn:aws:iot:{section.region}:{section.account}:policy/{args.name}",
        }
    )
    return EXIT_OK


def _describe_thing(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.errors import ResourceNotFoundError
    from agent.registry.storage import SqliteRegistryStorage

    section = _section(args)
    prefix = f"arn:aws:iot:{section.region}:{section.account}:"
    with SqliteRegistryStorage.open(section.database) as storage:
        thing = storage.get_thing(args.name)
        if thing is None:
            raise ResourceNotFoundError(
                f"no thing named {args.name!r} is registered",
                fields=[FieldProblem("thingName", "no such thing")],
            )
        certificates = []
        for certificate_id in storage.thing_principals(thing.name):
            record = storage.get_certificate(certificate_id)
            certificates.append(
                {
                    "certificateId": certificate_id,
                    "certificateArn": f"{prefix}cert/{certificate_id}",
                    "status": record.status if record else "UNKNOWN",
                    "policies": list(storage.certificate_policies(certificate_id)),
                }
            )
    body = {
        "thingName": thing.name,
        "thingId": thing.thing_id,
        "thingArn": f"{prefix}thing/{thing.name}",
        "thingTypeName": thing.thing_type_name,
        "attributes": thing.attributes,
        "thingGroups": list(thing.thing_groups),
        "billingGroup": thing.billing_group,
        "version": thing.version,
        "certificates": certificates,
    }
    if args.json:
        print_json(body)
        return EXIT_OK
    print(f"{thing.name} ({body['thingArn']}), version {thing.version}")
    print(f"  type: {thing.thing_type_name or '-'}  billing group: {thing.billing_group or '-'}")
    print(f"  groups: {', '.join(thing.thing_groups) or '-'}")
    for key, value in thing.attributes.items():
        print(f"  attribute {key} = {value}")
    for cert in certificates:
        policies = ", ".join(cert["policies"]) or "-"
        print(f"  certificate {cert['certificateId']} {cert['status']} policies: {policies}")
    return EXIT_OK
