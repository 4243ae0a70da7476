"""The run's network step: the archive's payload as a netconf trial with rollback."""

from __future__ import annotations

from agent.archive.network import NetworkPayload
from agent.config import AgentConfig
from agent.fsutil import ensure_dir
from agent.netconf.base import NetworkApplyError, NetworkBackend, TimeBackend
from agent.netconf.boards import load_board, resolve_interfaces
from agent.netconf.factory import dry_run_time_backend, network_backend, time_backend
from agent.netconf.plan import build_plan
from agent.netconf.rollback import NetConf
from agent.netconf.timesync import SyncResult
from agent.store import Store


class NetworkProbeError(NetworkApplyError):
    """The trial configuration failed its probe and was rolled back."""

    status_code = 503
    default_reason = "NETWORK_PROBE_FAILED"


def _backends(config: AgentConfig) -> tuple[NetworkBackend, TimeBackend]:
    network = network_backend(config.network.backend, config)
    if config.network.backend == "dry-run":
        return network, dry_run_time_backend(config.network.dry_run_root)
    return network, time_backend(config.ntp.backend, config)


def open_netconf(config: AgentConfig, store: Store) -> NetConf:
    """NetConf for the configured backends (as ``net apply`` and ``net recover`` build it)."""
    network, clock = _backends(config)
    return NetConf(
        store,
        network,
        clock,
        sync_timeout=config.ntp.sync_timeout_seconds,
        backend_for=lambda name: network_backend(name, config),
        time_backend_for=lambda name: time_backend(name, config),
    )


def netconf_store(config: AgentConfig) -> Store:
    """The network state database (the one ``net`` uses)."""
    return Store(ensure_dir(config.agent.state_dir) / "state.db")


def recover(config: AgentConfig) -> dict[str, object]:
    """``net recover`` at start: revert an interrupted trial, else re-apply the committed plan."""
    with netconf_store(config) as store:
        return open_netconf(config, store).startup()


def apply_payload(
    config: AgentConfig, payload: NetworkPayload, budget: float
) -> tuple[str, SyncResult | None]:
    """Apply ``payload`` as a trial probed within ``budget`` seconds.

    Returns:
        A description of the outcome, and the bounded wait for NTP synchronisation after
        the commit (None when no live time backend was given servers).

    Raises:
        NetworkConfigurationError: the payload does not fit this board (FAILED).
        NetworkProbeError: the probe failed; the previous configuration is back (ERROR).
        NetworkRolledBackError: applying failed; the previous configuration is back.
    """
    board = load_board(config.network.board, config.network.boards_dir)
    plan = build_plan(payload, resolve_interfaces(board), board_name=board.name)
    endpoint = None
    if config.network.probe_endpoint:
        host, _, port = config.network.probe_endpoint.rpartition(":")
        endpoint = (host, int(port))
    with netconf_store(config) as store:
        netconf = open_netconf(config, store)
        netconf.sync_timeout = min(netconf.sync_timeout, budget)
        result = netconf.apply(plan, probe_timeout=budget, endpoint=endpoint)
    if result.outcome != "committed":
        raise NetworkProbeError(
            f"the network configuration was rolled back: {result.message}",
            reason=result.reason or "NETWORK_PROBE_FAILED",
        )
    where = f" under {config.network.dry_run_root}" if result.backend == "dry-run" else ""
    return f"{result.outcome} with the {result.backend} backend{where}", result.sync
