"""Text rendering of a plan: systemd-networkd ``.network`` files and ``resolv.conf``."""

from __future__ import annotations

from agent.netconf.plan import NetworkPlan, PortPlan


def trial_name(port: str) -> str:
    """File name of a port's trial file (sorts before the committed one, so it wins)."""
    return f"09-edge-agent-trial-{port.lower()}.network"


def persistent_name(port: str) -> str:
    """File name of a port's committed file."""
    return f"10-edge-agent-{port.lower()}.network"


def render_network_file(port: PortPlan) -> str:
    """The ``.network`` file for one port."""
    lines = [
        f"# {port.port}, written by edge-agent from the provisioning archive.",
        "[Match]",
        f"Name={port.ifname}",
        "",
        "[Link]",
        "RequiredForOnline=yes",
        "",
        "[Network]",
    ]
    if port.mode == "dhcp":
        lines += ["DHCP=ipv4", "", "[DHCPv4]", f"RouteMetric={port.metric}"]
    else:
        lines.append(f"Address={port.address}")
        lines += [f"DNS={d}" for d in port.dns]
        if port.gateway is not None:
            lines += ["", "[Route]", f"Gateway={port.gateway}", f"Metric={port.metric}"]
    return "\n".join(lines) + "\n"


def render_resolv_conf(plan: NetworkPlan) -> str | None:
    """``resolv.conf`` text for the plan's DNS servers (None when the plan names none)."""
    servers: list[str] = []
    for port in plan.ports:
        servers.extend(str(d) for d in port.dns if str(d) not in servers)
    if not servers:
        return None
    lines = ["# Written by edge-agent from the provisioning archive."]
    lines += [f"nameserver {s}" for s in servers]
    return "\n".join(lines) + "\n"
