"""``edge-agent ca ...`` and ``edge-agent archive ...``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.errors import EXIT_OK


def register(sub: Any) -> None:
    """Add the ``ca`` and ``archive`` commands."""
    ca = sub.add_parser("ca", help="provisioning certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    init = ca_sub.add_parser(
        "init", help="create a provisioning root CA and an archive-signing certificate"
    )
    init.add_argument("--out", type=Path, required=True, help="directory to create the CA in")
    init.set_defaults(handler=_ca_init)


def _ca_init(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.registry.ca import init_ca

    ca = init_ca(args.out)
    print_json(
        {
            "caCertificate": str(args.out / "ca.pem"),
            "signerCertificate": str(args.out / "signer.pem"),
            "subject": ca.root_cert.subject.rfc4514_string(),
        }
    )
    return EXIT_OK
