"""``edge-agent net plan|apply|status|recover``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import EXIT_OK, FieldProblem, InvalidRequestError
from agent.netconf.factory import NETWORK_BACKENDS
from agent.netconf.plan import describe_plan

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.netconf.base import NetworkBackend, TimeBackend
    from agent.netconf.plan import NetworkPlan
    from agent.netconf.rollback import ApplyResult, NetConf
    from agent.store import Store


def register(sub: Any) -> None:
    """Add the ``net`` command."""
    net = sub.add_parser("net", help="Ethernet0/Ethernet1 and NTP with verified rollback")
    net_sub = net.add_subparsers(dest="net_command", required=True, metavar="COMMAND")

    plan = net_sub.add_parser("plan", help="show exactly what applying FILE would change")
    _common(plan)
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=_plan)

    apply = net_sub.add_parser("apply", help="apply FILE as a trial; commit or roll back")
    _common(apply)
    apply.add_argument(
        "--probe-timeout",
        type=float,
        metavar="S",
        default=None,
        help="seconds the trial has to pass the probe (default: network.probe_timeout_seconds)",
    )
    apply.add_argument(
        "--probe-endpoint",
        metavar="HOST:PORT",
        default=None,
        help="also require a TCP connection to this endpoint (default: network.probe_endpoint)",
    )
    apply.add_argument("--json", action="store_true", help="machine-readable output")
    apply.set_defaults(handler=_apply)

    status = net_sub.add_parser("status", help="port and NTP status (Panorama shapes)")
    status.add_argument("--board", metavar="B", default=None, help="board profile name or file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    recover = net_sub.add_parser(
        "recover",
        help="start-up hook: revert an interrupted trial, else re-apply the committed plan",
    )
    recover.add_argument(
        "--force",
        action="store_true",
        help="revert the trial even if its process seems alive, and end it even if the "
        "backend it used is unavailable (manual repair)",
    )
    recover.add_argument("--json", action="store_true", help="machine-readable output")
    recover.set_defaults(handler=_recover)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="NetworkingConfiguration JSON")
    parser.add_argument("--board", metavar="B", default=None, help="board profile name or file")
    parser.add_argument(
        "--backend",
        choices=NETWORK_BACKENDS,
        default=None,
        help="network backend (default: config)",
    )


def _config(args: argparse.Namespace) -> AgentConfig:
    from agent.config import load_config

    return load_config(args.config)


def _interfaces(args: argparse.Namespace, config: AgentConfig) -> tuple[str, dict[str, str]]:
    from agent.netconf.boards import load_board, resolve_interfaces

    board = load_board(args.board or config.network.board, config.network.boards_dir)
    return board.name, resolve_interfaces(board)


def _read_plan(args: argparse.Namespace, config: AgentConfig) -> tuple[str, NetworkPlan]:
    from agent.netconf.plan import NetworkConfigurationError, plan_from_json

    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(
            f"cannot read {args.file}: {exc.strerror}", reason="FILE_UNREADABLE"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NetworkConfigurationError(
            f"{args.file} is not valid JSON: {exc.msg} at line {exc.lineno}",
            fields=[FieldProblem("NetworkingConfiguration", f"not valid JSON: {exc.msg}")],
        ) from exc
    board, interfaces = _interfaces(args, config)
    return board, plan_from_json(data, interfaces, board_name=board)


def _backends(config: AgentConfig, backend_name: str) -> tuple[NetworkBackend, TimeBackend]:
    """The network backend by name and its time backend (dry-run renders NTP under its root)."""
    from agent.netconf.factory import dry_run_time_backend, network_backend, time_backend

    network = network_backend(backend_name, config)
    if backend_name == "dry-run":
        return network, dry_run_time_backend(config.network.dry_run_root)
    return network, time_backend(config.ntp.backend, config)


def _netconf(config: AgentConfig, backend_name: str, store: Store) -> NetConf:
    from agent.netconf.factory import network_backend, time_backend
    from agent.netconf.rollback import NetConf

    network, clock = _backends(config, backend_name)
    return NetConf(
        store,
        network,
        clock,
        sync_timeout=config.ntp.sync_timeout_seconds,
        backend_for=lambda name: network_backend(name, config),
        time_backend_for=lambda name: time_backend(name, config),
    )


def _store(config: AgentConfig) -> Store:
    from agent.fsutil import ensure_dir
    from agent.store import Store

    ensure_dir(config.agent.state_dir)
    return Store(config.agent.state_dir / "state.db")


def _plan(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    board, plan = _read_plan(args, config)
    backend, clock = _backends(config, args.backend or config.network.backend)
    changes = backend.changes(plan)
    if plan.ntp is not None:
        changes += clock.changes(plan.ntp)
    if args.json:
        print_json(
            {
                "board": board,
                "backend": backend.name,
                "timeBackend": clock.name,
                "plan": plan.to_json(),
                "changes": [c.to_json() for c in changes],
            }
        )
        return EXIT_OK
    print(f"board {board}, backend {backend.name}, NTP backend {clock.name}")
    for line in describe_plan(plan):
        print(f"  {line}")
    print("changes:" if changes else "changes: none")
    for change in changes:
        print(f"  {change.action:6} {change.target}: {change.detail}")
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.netconf.probe import parse_endpoint

    config = _config(args)
    _, plan = _read_plan(args, config)
    endpoint_text = args.probe_endpoint
    if endpoint_text is None:
        endpoint_text = config.network.probe_endpoint
    endpoint = None
    if endpoint_text:
        try:
            endpoint = parse_endpoint(endpoint_text)
        except ValueError as exc:
            raise InvalidRequestError(
                f"--probe-endpoint {endpoint_text!r} is not HOST:PORT",
                reason="PROBE_ENDPOINT_INVALID",
            ) from exc
    timeout = args.probe_timeout
    if timeout is None:
        timeout = config.network.probe_timeout_seconds
    if not 0 < timeout <= 3600:  # noqa: PLR2004
        raise InvalidRequestError(
            "--probe-timeout must be more than 0 and at most 3600 seconds",
            reason="PROBE_TIMEOUT_INVALID",
        )
    with _store(config) as store:
        netconf = _netconf(config, args.backend or config.network.backend, store)
        result = netconf.apply(plan, probe_timeout=timeout, endpoint=endpoint)
    if result.outcome == "reverted":
        raise _rolled_back(result)
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    print(f"committed ({result.backend}): {result.message}")
    for line in describe_plan(plan):
        print(f"  {line}")
    if result.sync is not None:
        trusted = "trusted" if result.sync.trusted else "NOT trusted"
        waited = f"{result.sync.waited_seconds:.1f} s"
        print(f"clock {trusted} after {waited} ({result.sync.status.detail})")
    return EXIT_OK


def _rolled_back(result: ApplyResult) -> Exception:
    from agent.netconf.rollback import NetworkRolledBackError

    back = "is back"
    if result.revert_failures:
        back = f"is back except: {'; '.join(result.revert_failures)}"
    return NetworkRolledBackError(
        f"the new configuration failed its probe and the previous one {back}: {result.message}",
        reason=result.reason,
    )


def _status(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.netconf.boards import load_board, resolve_interfaces
    from agent.netconf.factory import time_backend
    from agent.netconf.rollback import load_history, load_marker
    from agent.netconf.status import networking_status
    from agent.store import Store

    config = _config(args)
    board = load_board(args.board or config.network.board, config.network.boards_dir)
    interfaces = resolve_interfaces(board)
    trial: set[str] = set()
    history: list[dict[str, str]] = []
    db = config.agent.state_dir / "state.db"
    if db.exists():
        with Store(db) as store:
            marker = load_marker(store)
            if marker is not None:
                trial = {p.ifname for p in marker.plan.ports}
            history = load_history(store, 1)
    status = networking_status(interfaces, time_backend(config.ntp.backend, config), trial)
    out = {
        "NetworkingStatus": status,
        "board": board.name,
        "interfaces": interfaces,
        "trialInProgress": bool(trial),
        "lastOutcome": history[0] if history else None,
    }
    if args.json:
        print_json(out)
        return EXIT_OK
    for port in ("Ethernet0", "Ethernet1"):
        entry = status.get(f"{port}Status")
        if entry is not None:
            print(
                f"{port} ({interfaces[port]}): {entry['ConnectionStatus']} "
                f"{entry['IpAddress'] or '-'} {entry['HwAddress'] or '-'}"
            )
    ntp = status["NtpStatus"]
    print(f"NTP: {ntp['ConnectionStatus']} {ntp['NtpServerName'] or '-'}")
    if trial:
        print("a trial configuration is being probed")
    return EXIT_OK


def _recover(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    with _store(config) as store:
        result = _netconf(config, config.network.backend, store).startup(force=args.force)
    if args.json:
        print_json(result)
    else:
        print(f"net recover: {result['action']}")
        for failure in result.get("failures", []):
            print(f"  not restored: {failure}")
    return EXIT_OK
