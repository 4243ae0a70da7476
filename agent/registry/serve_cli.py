"""``edge-agent registry serve``: the fleet-provisioning endpoint."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``registry serve`` command."""
    registry = sub.add_parser("registry", help="the registry's fleet-provisioning endpoint")
    registry_sub = registry.add_subparsers(
        dest="registry_command", required=True, metavar="COMMAND"
    )
    serve = registry_sub.add_parser(
        "serve",
        help="answer the AWS IoT fleet-provisioning MQTT API (mosquitto, plugin, worker)",
    )
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="HOST:PORT", help="run mosquitto on this TLS address")
    where.add_argument(
        "--broker",
        metavar="URL",
        help="attach the worker to a mosquitto that loads the plugin "
        "(unix:///PATH, mqtt://HOST:PORT, mqtts://HOST:PORT)",
    )
    serve.add_argument("--server-cert", type=Path, metavar="PEM", help="TLS server certificate")
    serve.add_argument("--server-key", type=Path, metavar="PEM", help="TLS server private key")
    serve.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="with --broker: the registry identity's password (the plugin's "
        "registry_password_file)",
    )
    serve.add_argument(
        "--broker-ca", type=Path, metavar="PEM", help="with an mqtts:// --broker: its CA bundle"
    )
    serve.add_argument(
        "--threads", type=int, default=4, metavar="N", help="request threads (default 4)"
    )
    serve.add_argument(
        "--api-socket",
        type=Path,
        metavar="PATH",
        help="also serve the registry's HTTP routes (templates, things, bulk tasks) on this "
        "Unix socket, created 0660 ([api] group owns it)",
    )
    serve.add_argument("--database", type=Path, default=None, help="override registry.database")
    serve.add_argument("--ca-dir", type=Path, default=None, help="override registry.ca_dir")
    serve.set_defaults(handler=_serve, parser=serve)


def _serve(args: argparse.Namespace) -> int:
    from agent.config import load_config  # noqa: PLC0415 - lazy, as every subcommand
    from agent.registry.cli import _section  # noqa: PLC0415
    from agent.registry.serve import HttpApi, serve_broker, serve_local  # noqa: PLC0415

    parser: argparse.ArgumentParser = args.parser
    if not 1 <= args.threads <= 64:  # noqa: PLR2004
        parser.error("--threads must be between 1 and 64")
    section = _section(args)
    api = None
    if args.api_socket is not None:
        config = dataclasses.replace(load_config(args.config), registry=section)
        api = HttpApi(args.api_socket, config, group=config.api.group)
    if args.listen is not None:
        if args.server_cert is None or args.server_key is None:
            parser.error("--listen needs --server-cert and --server-key")
        return serve_local(
            section,
            listen=args.listen,
            server_cert=args.server_cert,
            server_key=args.server_key,
            threads=args.threads,
            api=api,
        )
    if args.password_file is None:
        parser.error("--broker needs --password-file")
    return serve_broker(
        section,
        broker=args.broker,
        password_file=args.password_file,
        ca_file=args.broker_ca,
        threads=args.threads,
        api=api,
    )
