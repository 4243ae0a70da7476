"""``edge-agent qr parse`` and ``edge-agent things create|list|describe|delete``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import EXIT_OK, FieldProblem, ValidationError

if TYPE_CHECKING:
    from agent.commissioning.notify import CommissioningNotifier
    from agent.commissioning.things import ManagedThings
    from agent.store import Store


def register(sub: Any) -> None:
    """Add the ``qr`` and ``things`` commands."""
    qr = sub.add_parser("qr", help="decode scanned device QR codes")
    qr_sub = qr.add_subparsers(dest="qr_command", required=True, metavar="COMMAND")
    parse = qr_sub.add_parser("parse", help="decode one code and print its fields")
    parse.add_argument("string", metavar="STRING", help="the scanned text")
    parse.add_argument("--json", action="store_true", help="machine-readable output")
    parse.add_argument(
        "--show-secrets",
        action="store_true",
        help="print install codes, link keys, DSK PINs, passwords and passcodes",
    )
    parse.set_defaults(handler=_qr_parse)

    things = sub.add_parser("things", help="managed things (CreateManagedThing)")
    tsub = things.add_subparsers(dest="things_command", required=True, metavar="COMMAND")
    create = tsub.add_parser("create", help="create a managed thing from a JSON request body")
    create.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="request body file, - for stdin"
    )
    listing = tsub.add_parser("list", help="list managed things")
    listing.add_argument("--status", default=None, help="only things with this status")
    describe = tsub.add_parser("describe", help="show one managed thing")
    describe.add_argument("id", metavar="ID")
    describe.add_argument("--show-secrets", action="store_true", help="include the code")
    delete = tsub.add_parser("delete", help="forget a managed thing")
    delete.add_argument("id", metavar="ID")
    scan = sub.add_parser(
        "scan", help="answer QR scans and commission devices with the configured radios"
    )
    scan.add_argument(
        "--source",
        default=None,
        metavar="SOURCE",
        help="stdin or a serial device (default: commissioning.scanner)",
    )
    for cmd, handler in (
        (scan, _scan),
        (create, _things_create),
        (listing, _things_list),
        (describe, _things_describe),
        (delete, _things_delete),
    ):
        cmd.add_argument("--database", type=Path, default=None, help="override the database")
        cmd.set_defaults(handler=handler)


def _qr_parse(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.commissioning.qr import parse
    from agent.config import load_config

    repair = load_config(args.config).commissioning.zigbee_crc == "repair"
    payload = parse(args.string, repair_zigbee_crc=repair).to_dict(show_secrets=args.show_secrets)
    if args.json:
        print_json(payload)
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")
    return EXIT_OK


def _open_store(args: argparse.Namespace) -> Store:
    from agent.config import load_config
    from agent.fsutil import ensure_dir
    from agent.store import Store

    path = args.database or load_config(args.config).commissioning_database()
    ensure_dir(path.parent)
    return Store(path)


def _things(
    args: argparse.Namespace, notifier: CommissioningNotifier | None = None
) -> tuple[ManagedThings, Store]:
    from agent.commissioning.things import ManagedThings
    from agent.config import load_config

    config = load_config(args.config)
    store = _open_store(args)
    return ManagedThings(
        store,
        region=config.registry.region,
        account=config.registry.account,
        repair_zigbee_crc=config.commissioning.zigbee_crc == "repair",
        notifier=notifier,
    ), store


def _read_body(source: str) -> Any:
    from agent.jsonutil import loads_strict

    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise ValidationError(
            f"cannot read {source}: {exc.strerror}",
            reason="INPUT_UNREADABLE",
            fields=[FieldProblem("<body>", "cannot be read")],
        ) from exc
    try:
        return loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(
            "the request body is not valid JSON",
            reason="INVALID_JSON",
            fields=[FieldProblem("<body>", type(exc).__name__)],
        ) from None


def _things_create(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    body = _read_body(args.input)
    things, store = _things(args)
    with store:
        result = things.create(body)
    print_json(result.body)
    return EXIT_OK


def _things_list(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    things, store = _things(args)
    with store:
        print_json({"Items": things.list(status=args.status)})
    return EXIT_OK


def _things_describe(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    things, store = _things(args)
    with store:
        print_json(things.describe(args.id, show_secrets=args.show_secrets))
    return EXIT_OK


def _things_delete(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    things, store = _things(args)
    with store:
        things.delete(args.id)
    print_json({"Id": args.id, "Deleted": True})
    return EXIT_OK


def _scan(args: argparse.Namespace) -> int:
    import asyncio

    from agent.commissioning.notify import FanOutNotifier, JournalNotifier, PrintNotifier
    from agent.commissioning.service import run_scanner, scan_source
    from agent.config import load_config

    config = load_config(args.config)
    spec = args.source or config.commissioning.scanner
    if not spec:
        raise ValidationError(
            "no scanner: pass --source or set commissioning.scanner",
            reason="SCANNER_NOT_CONFIGURED",
            fields=[FieldProblem("commissioning.scanner", "empty")],
        )
    with _open_store(args) as store:
        asyncio.run(
            run_scanner(
                config,
                store,
                FanOutNotifier(JournalNotifier(), PrintNotifier()),
                scan_source(spec, config.commissioning),
            )
        )
    return EXIT_OK
