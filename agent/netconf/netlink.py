"""The ``netlink`` backend: addresses and routes set directly through rtnetlink (pyroute2).

The kernel forgets this configuration at reboot, so the committed plan is kept in the state
store and :meth:`NetlinkBackend.reapply` puts it back at start-up (``net recover``).

DHCP: a port set to ``DHCP`` is handed to the agent's own dhcpcd
(:class:`~agent.netconf.dhcp.Dhcpcd`), which gives its routes the port's metric. Any other
DHCP client serving a port the plan configures is stopped first, and a revert starts again
whatever client served the port before the trial.

DNS servers of static ports go to ``resolv_conf`` (Ethernet0's first), through the resolver
that manages it (:mod:`agent.netconf.resolv`).

The snapshot is complete (:mod:`agent.netconf.netstate`: every address and route of the
port, both families, every table) and the revert goes on past a failing step, returning the
list of failures.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from agent.netconf import dhcp, live, netstate, resolv
from agent.netconf.base import Change, NetworkApplyError, Snapshot
from agent.netconf.dhcp import ClientRecord, Dhcpcd
from agent.netconf.files import read_optional
from agent.netconf.plan import NetworkPlan, PortPlan
from agent.netconf.render import render_resolv_conf

_log = logging.getLogger(__name__)


class NetlinkBackend:
    """Sets the plan with rtnetlink in the agent's own network namespace."""

    name = "netlink"
    live = True

    def __init__(
        self,
        *,
        resolv_conf: Path = dhcp.SYSTEM_RESOLV_CONF,
        dhcp_client: Dhcpcd | None = None,
    ) -> None:
        self.resolv_conf = resolv_conf
        self.dhcp = dhcp_client or Dhcpcd(
            run_dir=Path("/run/edge-agent/dhcpcd"),
            lease_dir=Path("/var/lib/edge-agent/dhcpcd"),
            resolv_conf=resolv_conf,
        )

    def changes(self, plan: NetworkPlan) -> list[Change]:
        """Addresses and routes to remove and add, clients to stop and start, files to write."""
        out: list[Change] = []
        clients = dhcp.find_clients([p.ifname for p in plan.ports], self.dhcp)
        with live.ipr() as route:
            for port in plan.ports:
                out.extend(
                    Change(port.ifname, "run", f"stop DHCP client (pid {c.pid})")
                    for c in clients[port.ifname]
                )
                out.extend(_port_changes(route, port, self.dhcp))
        text = render_resolv_conf(plan)
        if text is not None and read_optional(self.resolv_conf) != text:
            out.append(Change(str(self.resolv_conf), "write", text.strip().replace("\n", "; ")))
        return out

    def snapshot(self, plan: NetworkPlan) -> Snapshot:
        """Complete live state of the plan's interfaces, their DHCP clients, ``resolv.conf``."""
        with live.ipr() as route:
            ports = netstate.snapshot_ports(route, [p.ifname for p in plan.ports])
        found = dhcp.find_clients([p.ifname for p in plan.ports], self.dhcp)
        clients = [c for p in plan.ports for c in found[p.ifname]]
        return {
            "ports": ports,
            "metrics": {p.ifname: p.metric for p in plan.ports},
            "dhcp_clients": [c.to_json() for c in clients],
            "resolv_conf": resolv.snapshot(self.resolv_conf),
        }

    def apply(self, plan: NetworkPlan) -> None:
        """Set each port; DHCP ports are handed to dhcpcd with the port's metric."""
        with live.ipr() as route:
            for port in plan.ports:
                live.require_link(route, port.ifname)
            clients = dhcp.find_clients([p.ifname for p in plan.ports], self.dhcp)
            for port in plan.ports:
                self._apply_port(route, port, clients[port.ifname])
        text = render_resolv_conf(plan)
        if text is not None:
            resolv.write(self.resolv_conf, plan, text)

    def _apply_port(self, route: object, port: PortPlan, clients: list[ClientRecord]) -> None:
        for client in clients:
            dhcp.stop_client(client, self.dhcp)
        try:
            if port.mode == "static" and port.address is not None:
                live.set_static(route, port.ifname, port.address, port.gateway, port.metric)
            else:
                live.clear(route, port.ifname)
                self.dhcp.start(port.ifname, port.metric)
        except NetlinkError as exc:
            raise live.translate(exc, f"configure {port.ifname}") from exc

    def commit(self, plan: NetworkPlan) -> None:
        """Nothing to do: the live state is the configuration (the caller stores the plan)."""
        del plan

    def revert(self, snapshot: Snapshot) -> list[str]:
        """Restore the snapshot exactly; every step runs, the failed ones are returned."""
        failures: list[str] = []
        recorded = [ClientRecord.from_json(c) for c in snapshot.get("dhcp_clients", [])]
        kept = {c.pid for c in recorded}
        found = dhcp.find_clients([p["ifname"] for p in snapshot["ports"]], self.dhcp)
        for port in snapshot["ports"]:
            for client in found[port["ifname"]]:
                if client.pid not in kept:  # started by the trial
                    failures += _attempt(
                        f"stop the DHCP client on {client.ifname}",
                        functools.partial(dhcp.stop_client, client, self.dhcp),
                    )
        with live.ipr() as route:
            for port in snapshot["ports"]:
                failures += netstate.restore_port(route, port)
        metrics = snapshot.get("metrics", {})
        # still running means: the same pid still serves the same port (after a reboot the
        # recorded pid may belong to anything)
        running = dhcp.find_clients(sorted({c.ifname for c in recorded}), self.dhcp)
        for client in recorded:
            if any(c.pid == client.pid for c in running[client.ifname]):
                continue
            failures += _attempt(
                f"restart the DHCP client on {client.ifname}",
                functools.partial(
                    dhcp.restart_client, client, self.dhcp, metrics.get(client.ifname, 0)
                ),
            )
        if snapshot.get("resolv_conf") is not None:
            failures += resolv.restore(
                snapshot["resolv_conf"], [p["ifname"] for p in snapshot["ports"]]
            )
        return failures

    def reapply(self, plan: NetworkPlan) -> None:
        """Put the committed plan back in force (the kernel forgot it at boot)."""
        with live.ipr() as route:
            for port in plan.ports:
                live.require_link(route, port.ifname)
            clients = dhcp.find_clients([p.ifname for p in plan.ports], self.dhcp)
            for port in plan.ports:
                served = self.dhcp.pid(port.ifname) is not None
                if port.mode == "dhcp" and served and self.dhcp.metric(port.ifname) == port.metric:
                    continue  # still served by our client (not a reboot)
                self._apply_port(route, port, clients[port.ifname])
        text = render_resolv_conf(plan)
        if text is not None and read_optional(self.resolv_conf) != text:
            resolv.write(self.resolv_conf, plan, text)


def _attempt(what: str, call: Callable[[], None]) -> list[str]:
    try:
        call()
    except (NetworkApplyError, OSError) as exc:
        return [f"{what}: {exc}"]
    return []


def _port_changes(route: object, port: PortPlan, client: Dhcpcd) -> list[Change]:
    info = live.link(route, port.ifname)
    if info is None:
        return [Change(port.ifname, "keep", f"{port.port}: interface {port.ifname} is missing")]
    out: list[Change] = []
    current = live.addresses(route, info.index)
    current_routes = [r for r in live.routes(route, info.index) if r["proto"] != live.RTPROT_KERNEL]
    if port.mode == "static" and port.address is not None:
        want = (str(port.address.ip), port.address.network.prefixlen)
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
    command = " ".join(client.command).replace("{ifname}", port.ifname)
    out.append(Change(port.ifname, "run", command.replace("{metric}", str(port.metric))))
    return out


def _route_text(entry: dict[str, object]) -> str:
    dst = "default" if entry["dst_len"] == 0 else f"{entry['dst']}/{entry['dst_len']}"
    via = f" via {entry['gateway']}" if entry["gateway"] else ""
    metric = f" metric {entry['priority']}" if entry["priority"] is not None else ""
    return f"route {dst}{via}{metric}"
