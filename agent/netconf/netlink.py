"""The ``netlink`` backend: addresses and routes set directly through rtnetlink (pyroute2).

The kernel forgets this configuration at reboot, so the committed plan is kept in the state
store and :meth:`NetlinkBackend.reapply` puts it back at start-up.

DHCP: the agent does not speak DHCP itself. A port set to ``DHCP`` is handed back to the
system's DHCP client: its static IPv4 addresses and routes are removed, the link is brought
up and ``dhcp_command`` (default ``dhclient -nw {ifname}``) is run; the trial then waits for
the client to obtain an address. When a port goes static (or a DHCP trial is reverted)
``dhcp_stop_command`` (default ``dhclient -x {ifname}``) stops that client first.

DNS servers of static ports are written to ``resolv_conf`` (Ethernet0's first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from agent.netconf import live
from agent.netconf.base import Change, Snapshot, expand, run_command
from agent.netconf.files import read_optional, restore_file
from agent.netconf.plan import NetworkPlan, PortPlan
from agent.netconf.render import render_resolv_conf

_log = logging.getLogger(__name__)

DEFAULT_DHCP_COMMAND = ("dhclient", "-nw", "{ifname}")
DEFAULT_DHCP_STOP_COMMAND = ("dhclient", "-x", "{ifname}")


class NetlinkBackend:
    """Sets the plan with rtnetlink in the agent's own network namespace."""

    name = "netlink"
    live = True

    def __init__(
        self,
        *,
        resolv_conf: Path = Path("/etc/resolv.conf"),
        dhcp_command: Sequence[str] = DEFAULT_DHCP_COMMAND,
        dhcp_stop_command: Sequence[str] = DEFAULT_DHCP_STOP_COMMAND,
    ) -> None:
        self.resolv_conf = resolv_conf
        self.dhcp_command = tuple(dhcp_command)
        self.dhcp_stop_command = tuple(dhcp_stop_command)

    def changes(self, plan: NetworkPlan) -> list[Change]:
        """Addresses and routes to remove and add, commands to run, files to write."""
        out: list[Change] = []
        with live.ipr() as route:
            for port in plan.ports:
                out.extend(_port_changes(route, port, self.dhcp_command, self.dhcp_stop_command))
        text = render_resolv_conf(plan)
        if text is not None and read_optional(self.resolv_conf) != text:
            out.append(Change(str(self.resolv_conf), "write", text.strip().replace("\n", "; ")))
        return out

    def snapshot(self, plan: NetworkPlan) -> Snapshot:
        """Live addresses and routes of the plan's interfaces, and ``resolv.conf``."""
        with live.ipr() as route:
            ports = [live.snapshot_port(route, p.ifname) for p in plan.ports]
        return {
            "ports": ports,
            "dhcp_ifnames": [p.ifname for p in plan.ports if p.mode == "dhcp"],
            "resolv_conf": {
                "path": str(self.resolv_conf),
                "content": read_optional(self.resolv_conf),
            },
        }

    def apply(self, plan: NetworkPlan) -> None:
        """Set each port; DHCP ports are handed to the DHCP client."""
        with live.ipr() as route:
            for port in plan.ports:
                live.require_link(route, port.ifname)
            for port in plan.ports:
                self._apply_port(route, port)
        text = render_resolv_conf(plan)
        if text is not None:
            restore_file(self.resolv_conf, text)

    def _apply_port(self, route: object, port: PortPlan) -> None:
        try:
            if port.mode == "static" and port.address is not None:
                if self.dhcp_stop_command:
                    run_command(
                        expand(self.dhcp_stop_command, ifname=port.ifname),
                        what=f"stop the DHCP client on {port.ifname}",
                        check=False,
                    )
                live.set_static(route, port.ifname, port.address, port.gateway, port.metric)
            else:
                live.clear(route, port.ifname)
                if self.dhcp_command:
                    run_command(
                        expand(self.dhcp_command, ifname=port.ifname),
                        what=f"start the DHCP client on {port.ifname}",
                    )
        except NetlinkError as exc:
            raise live.translate(exc, f"configure {port.ifname}") from exc

    def commit(self, plan: NetworkPlan) -> None:
        """Nothing to do: the live state is the configuration (the caller stores the plan)."""
        del plan

    def revert(self, snapshot: Snapshot) -> None:
        """Stop DHCP clients the trial started, restore addresses, routes and resolv.conf."""
        for ifname in snapshot.get("dhcp_ifnames", []):
            if self.dhcp_stop_command:
                run_command(
                    expand(self.dhcp_stop_command, ifname=ifname),
                    what=f"stop the DHCP client on {ifname}",
                    check=False,
                )
        with live.ipr() as route:
            for port in snapshot["ports"]:
                try:
                    live.restore_port(route, port)
                except NetlinkError as exc:
                    raise live.translate(exc, f"restore {port['ifname']}") from exc
        resolv = snapshot.get("resolv_conf")
        if resolv is not None:
            restore_file(Path(resolv["path"]), resolv["content"])

    def reapply(self, plan: NetworkPlan) -> None:
        """The kernel forgot everything at boot: apply the committed plan again."""
        self.apply(plan)


def _port_changes(
    route: object, port: PortPlan, dhcp_command: Sequence[str], dhcp_stop: Sequence[str]
) -> list[Change]:
    info = live.link(route, port.ifname)
    if info is None:
        return [Change(port.ifname, "keep", f"{port.port}: interface {port.ifname} is missing")]
    out: list[Change] = []
    current = live.addresses(route, info.index)
    current_routes = [r for r in live.routes(route, info.index) if r["proto"] != live.RTPROT_KERNEL]
    if port.mode == "static" and port.address is not None:
        want = (str(port.address.ip), port.address.network.prefixlen)
        if dhcp_stop:
            out.append(Change(port.ifname, "run", " ".join(expand(dhcp_stop, ifname=port.ifname))))
        out.extend(
            Change(port.ifname, "remove", f"address {a['address']}/{a['prefixlen']}")
            for a in current
            if (a["address"], a["prefixlen"]) != want
        )
        if want not in [(a["address"], a["prefixlen"]) for a in current]:
            out.append(Change(port.ifname, "add", f"address {port.address}"))
        wanted_route = (str(port.gateway), port.metric)
        out.extend(
            Change(port.ifname, "remove", _route_text(r))
            for r in current_routes
            if (r["dst_len"], r["gateway"], r["priority"]) != (0, *wanted_route)
        )
        if not any(
            (r["dst_len"], r["gateway"], r["priority"]) == (0, *wanted_route)
            for r in current_routes
        ):
            out.append(
                Change(port.ifname, "add", f"route default via {port.gateway} metric {port.metric}")
            )
        return out
    out.extend(
        Change(port.ifname, "remove", f"address {a['address']}/{a['prefixlen']}") for a in current
    )
    out.extend(Change(port.ifname, "remove", _route_text(r)) for r in current_routes)
    if dhcp_command:
        out.append(Change(port.ifname, "run", " ".join(expand(dhcp_command, ifname=port.ifname))))
    return out


def _route_text(entry: dict[str, object]) -> str:
    dst = "default" if entry["dst_len"] == 0 else f"{entry['dst']}/{entry['dst_len']}"
    via = f" via {entry['gateway']}" if entry["gateway"] else ""
    metric = f" metric {entry['priority']}" if entry["priority"] is not None else ""
    return f"route {dst}{via}{metric}"
