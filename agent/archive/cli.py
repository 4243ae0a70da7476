"""``edge-agent ca ...`` and ``edge-agent archive ...``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import EXIT_OK, FieldProblem, ValidationError

if TYPE_CHECKING:
    from agent.archive.clock import Clock
    from agent.archive.verify import Policy
    from agent.config import AgentConfig


def _rfc3339_arg(text: str) -> dt.datetime:
    from agent.config import parse_rfc3339

    try:
        return parse_rfc3339(text)
    except ValueError:
        msg = f"{text!r} is not an RFC 3339 date-time with an offset (2026-11-23T10:00:00Z)"
        raise argparse.ArgumentTypeError(msg) from None


def register(sub: Any) -> None:
    """Add the ``ca`` and ``archive`` commands."""
    ca = sub.add_parser("ca", help="provisioning certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    init = ca_sub.add_parser(
        "init",
        help="create the offline root, the archive signer, the claim and device issuers",
    )
    init.add_argument(
        "--out", type=Path, required=True, help="private directory to create the PKI in"
    )
    init.add_argument("--name", default="edge-agent provisioning CA", help="CA common name")
    init.set_defaults(handler=_ca_init)
    code = ca_sub.add_parser(
        "registration-code", help="the code a CA's verification certificate must carry"
    )
    code.add_argument("--ca-dir", type=Path, help="registry CA directory (registry.ca_dir)")
    code.set_defaults(handler=_ca_registration_code)
    reg = ca_sub.add_parser(
        "register", help="accept a further CA for CertificatePem (RegisterCACertificate)"
    )
    reg.add_argument("--ca-dir", type=Path, help="registry CA directory (registry.ca_dir)")
    reg.add_argument("--ca-certificate", type=Path, required=True, help="the CA's PEM")
    reg.add_argument(
        "--verification-certificate",
        type=Path,
        required=True,
        help="PEM signed by the CA's key with the registration code as CN",
    )
    reg.add_argument("--inactive", action="store_true", help="register as INACTIVE")
    reg.set_defaults(handler=_ca_register)

    archive = sub.add_parser("archive", help="provisioning archives: make, validate, install")
    a_sub = archive.add_subparsers(dest="archive_command", required=True, metavar="COMMAND")

    make = a_sub.add_parser("make", help="issue a claim certificate and write a signed archive")
    make.add_argument("--name", required=True, help="device name (the seed's Name)")
    make.add_argument(
        "--ca", type=Path, required=True, help="factory keys from 'ca init' (no root key needed)"
    )
    make.add_argument("--out", type=Path, required=True, help="directory to write the zip to")
    make.add_argument("--networking", type=Path, help="JSON file: the NetworkingConfiguration")
    make.add_argument("--endpoint", default="localhost:8883", help="MQTT endpoint HOST:PORT")
    make.add_argument("--template", default="edge-agent-fleet", help="provisioning template")
    make.add_argument("--lifetime", type=int, default=300, help="certificate lifetime, seconds")
    make.add_argument("--not-before", type=_rfc3339_arg, help="certificate start (RFC 3339)")
    make.add_argument("--description", help="device description (the seed's Description)")
    make.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)"
    )
    make.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a provisioning template parameter (repeatable)",
    )
    make.set_defaults(handler=_make)

    for name, helptext, handler in (
        ("validate", "check an archive; write nothing", _validate),
        ("install", "check an archive and install its credentials", _install),
    ):
        cmd = a_sub.add_parser(name, help=helptext)
        cmd.add_argument("zip", type=Path, help="certificates-omni_<device-name>.zip")
        cmd.add_argument("--trust", type=Path, required=True, help="trust anchor PEM")
        cmd.add_argument(
            "--now",
            type=_rfc3339_arg,
            help="the current time (RFC 3339); counts as a trusted clock",
        )
        cmd.add_argument("--json", action="store_true", help="compact one-line JSON")
        if name == "install":
            cmd.add_argument("--state-dir", type=Path, required=True, help="agent state dir")
        cmd.set_defaults(handler=handler)


def _emit(data: object, compact: bool) -> None:
    from agent.cli import print_json

    if compact:
        print(json.dumps(data, separators=(",", ":")))
    else:
        print_json(data)


def _ca_init(args: argparse.Namespace) -> int:
    from agent.registry.ca import (
        CLAIM_ISSUER_CERT,
        DEVICE_ISSUER_CERT,
        FACTORY_FILES,
        REGISTRY_FILES,
        ROOT_CERT,
        ROOT_KEY,
        SIGNER_CERT,
        init_ca,
    )

    ca = init_ca(args.out, name=args.name)
    _emit(
        {
            "caCertificate": str(args.out / ROOT_CERT),
            "signerCertificate": str(args.out / SIGNER_CERT),
            "claimIssuerCertificate": str(args.out / CLAIM_ISSUER_CERT),
            "deviceIssuerCertificate": str(args.out / DEVICE_ISSUER_CERT),
            "subject": ca.root_cert.subject.rfc4514_string(),
            "offlineKey": str(args.out / ROOT_KEY),
            "factoryFiles": list(FACTORY_FILES),
            "registryFiles": list(REGISTRY_FILES),
        },
        compact=False,
    )
    return EXIT_OK


def _registry_ca_dir(args: argparse.Namespace) -> Path:
    if args.ca_dir is not None:
        return Path(args.ca_dir)
    return _config(args).registry.ca_dir


def _ca_registration_code(args: argparse.Namespace) -> int:
    from agent.registry.cacerts import registration_code

    _emit({"registrationCode": registration_code(_registry_ca_dir(args))}, compact=False)
    return EXIT_OK


def _read_text(path: Path, field: str) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(
            f"cannot read {path} as text",
            reason="CERTIFICATE_UNREADABLE",
            fields=[FieldProblem(field, "unreadable")],
        ) from exc


def _ca_register(args: argparse.Namespace) -> int:
    from agent.registry.cacerts import register_ca_certificate

    config = _config(args).registry
    registered = register_ca_certificate(
        _registry_ca_dir(args),
        _read_text(args.ca_certificate, "caCertificate"),
        _read_text(args.verification_certificate, "verificationCertificate"),
        region=config.region,
        account=config.account,
        set_as_active=not args.inactive,
    )
    _emit(registered.to_json(), compact=False)
    return EXIT_OK


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValidationError(
                f"{what} {item!r} must be KEY=VALUE", reason="FIELD_VALIDATION_FAILED"
            )
        out[key] = value
    return out


def _load_networking(path: Path) -> Any:
    from agent.archive.network import parse_network_payload
    from agent.jsonutil import loads_strict

    try:
        data = loads_strict(path.read_bytes())
    except OSError as exc:
        raise ValidationError(
            f"cannot read {path}: {exc.strerror}", reason="NETWORK_CONFIGURATION_UNREADABLE"
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(
            f"{path} is not valid JSON: {exc}", reason="NETWORK_CONFIGURATION_INVALID"
        ) from None
    return parse_network_payload(data)


def _config(args: argparse.Namespace) -> AgentConfig:
    from agent.config import load_config

    return load_config(args.config)


def _make(args: argparse.Namespace) -> int:
    from agent.archive.make import DeviceRequest, build_archive, write_archive
    from agent.registry.ca import load_factory_keys

    config = _config(args)
    request = DeviceRequest(
        name=args.name,
        description=args.description,
        networking=_load_networking(args.networking) if args.networking else None,
        tags=_pairs(args.tag, "tag"),
        endpoint=args.endpoint,
        template=args.template,
        template_parameters=_pairs(args.parameter, "parameter") or None,
        lifetime=dt.timedelta(seconds=args.lifetime),
        not_before=args.not_before,
    )
    keys = load_factory_keys(args.ca)
    built = build_archive(
        keys, request, region=config.registry.region, account=config.registry.account
    )
    write_archive(built, args.out)
    _emit(built.response(), compact=True)
    return EXIT_OK


def _policy_and_clock(args: argparse.Namespace) -> tuple[Policy, Clock]:
    from agent.archive.clock import FixedClock, SystemClock
    from agent.archive.reader import Limits
    from agent.archive.verify import Policy, load_trust_anchors

    config = _config(args).archive
    policy = Policy(
        trust_anchors=load_trust_anchors(args.trust),
        limits=Limits(
            max_archive_bytes=config.max_archive_bytes,
            max_entry_bytes=config.max_entry_bytes,
            max_total_bytes=config.max_total_bytes,
            max_compression_ratio=config.max_compression_ratio,
        ),
        max_lifetime=dt.timedelta(seconds=config.max_lifetime_seconds),
        clock_skew=dt.timedelta(seconds=config.clock_skew_seconds),
    )
    clock: Clock = (
        FixedClock(args.now)
        if args.now
        else SystemClock(config.build_time_floor, config.require_synchronized_clock)
    )
    return policy, clock


def _validate(args: argparse.Namespace) -> int:
    from agent.archive.verify import verify_archive

    policy, clock = _policy_and_clock(args)
    verified = verify_archive(args.zip, policy, clock)
    _emit(verified.summary(), compact=args.json)
    return EXIT_OK


def _install(args: argparse.Namespace) -> int:
    from agent.archive.install import provision_from_file

    policy, clock = _policy_and_clock(args)
    _, result = provision_from_file(args.zip, policy, clock, args.state_dir)
    _emit(result.to_json(), compact=args.json)
    return EXIT_OK
