"""The network step of ``edge-agent demo``: plan and apply with the dry-run backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.archive.network import NetworkPayload
from agent.netconf.boards import load_board, resolve_interfaces
from agent.netconf.dryrun import DryRunBackend
from agent.netconf.factory import dry_run_time_backend
from agent.netconf.plan import build_plan, describe_plan
from agent.netconf.rollback import NetConf
from agent.store import Store


def run_demo_step(payload: NetworkPayload, root: Path, echo: Callable[[str], None]) -> None:
    """Plan ``payload`` for the generic board and apply it under ``root`` (nothing else changes).

    Args:
        payload: The seed-valid networking configuration (from the archive's manifest).
        root: Directory the rendered files and the demo's state database go under.
        echo: Receives one line per step.

    Raises:
        NetworkConfigurationError: The payload cannot be applied (every problem listed).
    """
    board = load_board("generic")
    plan = build_plan(payload, resolve_interfaces(board), board_name=board.name)
    for line in describe_plan(plan):
        echo(f"network: {line}")
    backend = DryRunBackend(root)
    clock = dry_run_time_backend(root)
    changes = backend.changes(plan) + (clock.changes(plan.ntp) if plan.ntp is not None else [])
    root.mkdir(parents=True, exist_ok=True)
    with Store(root / "state.db") as store:
        result = NetConf(store, backend, clock).apply(plan)
    for change in changes:
        echo(f"network: {change.action} {change.target}")
    echo(f"network: {result.outcome} with the dry-run backend under {root}")
