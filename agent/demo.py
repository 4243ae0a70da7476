"""``edge-agent demo``: the main job on embedded defaults, each step shown as it happens."""

from __future__ import annotations

import argparse
from typing import Any

from agent.errors import EXIT_OK


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    demo = sub.add_parser("demo", help="run the whole provisioning job on embedded defaults")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    del args
    print("edge-agent demo")
    return EXIT_OK
