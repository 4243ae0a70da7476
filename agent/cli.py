"""The ``edge-agent`` command line.

Each responsibility registers its own subcommands (``register(subparsers)`` in its ``cli``
module), so this module only wires them together and maps errors to exit codes:
0 success, 1 input rejected (the error JSON on stdout), 2 usage or configuration error,
3 runtime failure. A reader that closes the pipe early (``| head``) ends the command quietly
with the shell's SIGPIPE status, 141.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.errors import EXIT_RUNTIME, AgentError, InternalError

#: Modules with a ``register(subparsers)`` function, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.demo",
    "agent.daemon",
    "agent.archive.cli",
    "agent.netconf.cli",
    "agent.registry.cli",
    "agent.registry.bulk_cli",
    "agent.registry.serve_cli",
)

#: The status a shell reports for a command ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141

_log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="On-device provisioning agent.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: /etc/edge-agent/agent.toml if present)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def print_json(data: object) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(data, indent=2, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    try:
        try:
            code = _run(argv)
        finally:
            # inside the guard, also after argparse's SystemExit (--help): a closed pipe
            # shows up here at the latest
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``). Point stdout at /dev/null so the interpreter's
        # final flush stays quiet too, and end like a command killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.handler(args)
    except BrokenPipeError:
        raise
    except AgentError as exc:
        print_json(exc.to_dict())
        print(f"edge-agent: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the top of the command: log, report, exit 3
        _log.exception("unexpected failure")
        error = InternalError(f"unexpected failure: {type(exc).__name__}")
        print_json(error.to_dict())
        return EXIT_RUNTIME
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
