"""Backends built from the configuration, by name."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig
from agent.errors import ConfigError, FieldProblem
from agent.netconf.base import NetworkBackend, TimeBackend

NETWORK_BACKENDS = ("networkd", "netlink", "dry-run")
TIME_BACKENDS = ("chrony", "timesyncd", "none")


def network_backend(
    name: str, config: AgentConfig, *, dry_run_root: Path | None = None
) -> NetworkBackend:
    """The network backend called ``name``, set up from ``config``."""
    net = config.network
    if name == "netlink":
        from agent.netconf.dhcp import Dhcpcd  # noqa: PLC0415
        from agent.netconf.netlink import NetlinkBackend  # noqa: PLC0415 - pyroute2 is heavy

        client = Dhcpcd(
            run_dir=config.agent.runtime_dir / "dhcpcd",
            lease_dir=config.agent.state_dir / "dhcpcd",
            resolv_conf=net.resolv_conf,
            command=net.dhcp_command,
        )
        return NetlinkBackend(resolv_conf=net.resolv_conf, dhcp_client=client)
    if name == "networkd":
        from agent.netconf.networkd import NetworkdBackend  # noqa: PLC0415

        return NetworkdBackend(
            runtime_dir=net.networkd_runtime_dir,
            persist_dir=net.networkd_persist_dir,
            reload_command=net.networkd_reload_command,
            reconfigure_command=net.networkd_reconfigure_command,
            dist_dirs=net.networkd_dist_dirs,
        )
    if name == "dry-run":
        from agent.netconf.dryrun import DryRunBackend  # noqa: PLC0415

        return DryRunBackend(dry_run_root or net.dry_run_root)
    raise ConfigError(
        f"unknown network backend {name!r} (choose {', '.join(NETWORK_BACKENDS)})",
        fields=[FieldProblem("network.backend", f"must be one of {', '.join(NETWORK_BACKENDS)}")],
    )


def time_backend(name: str, config: AgentConfig) -> TimeBackend:
    """The time backend called ``name``, set up from ``config``."""
    from agent.netconf.timesync import (  # noqa: PLC0415
        ChronyBackend,
        NoTimeBackend,
        TimesyncdBackend,
    )

    ntp = config.ntp
    if name == "chrony":
        return ChronyBackend(
            sources_dir=ntp.chrony_sources_dir,
            chronyc=ntp.chronyc_command,
            source_options=ntp.chrony_source_options,
        )
    if name == "timesyncd":
        return TimesyncdBackend(
            dropin_dir=ntp.timesyncd_dropin_dir,
            restart_command=ntp.timesyncd_restart_command,
            synced_flag=ntp.timesyncd_synced_flag,
        )
    if name == "none":
        return NoTimeBackend()
    raise ConfigError(
        f"unknown NTP backend {name!r} (choose {', '.join(TIME_BACKENDS)})",
        fields=[FieldProblem("ntp.backend", f"must be one of {', '.join(TIME_BACKENDS)}")],
    )


def dry_run_time_backend(root: Path) -> TimeBackend:
    """Chrony's sources file rendered under ``root``; no daemon is touched."""
    from agent.netconf.timesync import ChronyBackend  # noqa: PLC0415

    return ChronyBackend(sources_dir=root / "etc/chrony/sources.d", chronyc=())
