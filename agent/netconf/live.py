"""Live interface state over netlink (pyroute2): read, snapshot, restore, set.

Only IPv4 addresses and main-table IPv4 routes of the named interfaces are touched; routes
the kernel derives from an address (protocol ``kernel``) come back with the address and are
never added by hand.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.netconf.base import NetworkApplyError, Snapshot

_log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTPROT_KERNEL = 2
RTPROT_STATIC = 4
ENOENT = 2
EEXIST = 17
ESRCH = 3
EADDRNOTAVAIL = 99
ENODEV = 19


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A link's state as the kernel sees it."""

    ifname: str
    index: int
    up: bool
    carrier: bool
    operstate: str
    mac: str


@contextlib.contextmanager
def ipr() -> Iterator[Any]:
    """An rtnetlink socket in the current network namespace."""
    route = IPRoute()
    try:
        yield route
    finally:
        route.close()


def link(route: Any, ifname: str) -> LinkInfo | None:
    """The link named ``ifname``, or None."""
    try:
        msg = route.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == ENODEV:
            return None
        raise
    return LinkInfo(
        ifname=ifname,
        index=int(msg["index"]),
        up=bool(msg["flags"] & 1),
        carrier=bool(msg.get("IFLA_CARRIER")),
        operstate=str(msg.get("IFLA_OPERSTATE") or "UNKNOWN"),
        mac=str(msg.get("IFLA_ADDRESS") or ""),
    )


def require_link(route: Any, ifname: str) -> LinkInfo:
    """Like :func:`link`, but a missing interface is an error."""
    info = link(route, ifname)
    if info is None:
        raise NetworkApplyError(f"interface {ifname} does not exist", reason="INTERFACE_NOT_FOUND")
    return info


def addresses(route: Any, index: int) -> list[dict[str, Any]]:
    """IPv4 addresses of the link, sorted."""
    out = [
        {
            "address": msg.get("IFA_ADDRESS"),
            "prefixlen": int(msg["prefixlen"]),
            "broadcast": msg.get("IFA_BROADCAST"),
        }
        for msg in route.get_addr(family=socket.AF_INET, index=index)
    ]
    return sorted(out, key=lambda a: (a["address"], a["prefixlen"]))


def routes(route: Any, index: int) -> list[dict[str, Any]]:
    """Main-table IPv4 routes leaving through the link, sorted."""
    out = []
    for msg in route.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        if msg.get("RTA_OIF") != index:
            continue
        out.append(
            {
                "dst": msg.get("RTA_DST") or "0.0.0.0",  # noqa: S104 - the default route
                "dst_len": int(msg["dst_len"]),
                "gateway": msg.get("RTA_GATEWAY"),
                "priority": msg.get("RTA_PRIORITY"),
                "prefsrc": msg.get("RTA_PREFSRC"),
                "proto": int(msg["proto"]),
                "scope": int(msg["scope"]),
                "type": int(msg["type"]),
            }
        )
    return sorted(
        out, key=lambda r: (r["dst"], r["dst_len"], str(r["gateway"]), r["priority"] or 0)
    )


def snapshot_port(route: Any, ifname: str) -> Snapshot:
    """Everything restorable about one interface (``exists`` False when it is absent)."""
    info = link(route, ifname)
    if info is None:
        return {"ifname": ifname, "exists": False}
    return {
        "ifname": ifname,
        "exists": True,
        "up": info.up,
        "addresses": addresses(route, info.index),
        "routes": routes(route, info.index),
    }


def flush(route: Any, index: int) -> None:
    """Remove every main-table IPv4 route through the link, then its IPv4 addresses."""
    for entry in routes(route, index):
        if entry["proto"] == RTPROT_KERNEL:
            continue
        with contextlib.suppress(NetlinkError):
            route.route("del", **_route_args(index, entry))
    for entry in addresses(route, index):
        try:
            route.addr("del", index=index, address=entry["address"], prefixlen=entry["prefixlen"])
        except NetlinkError as exc:
            if exc.code != EADDRNOTAVAIL:
                raise


def _route_args(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "oif": index,
        "table": MAIN_TABLE,
        "dst_len": entry["dst_len"],
        "proto": entry["proto"],
        "scope": entry["scope"],
        "type": entry["type"],
    }
    if entry["dst_len"]:
        args["dst"] = entry["dst"]
    if entry["gateway"]:
        args["gateway"] = entry["gateway"]
    if entry["priority"] is not None:
        args["priority"] = entry["priority"]
    if entry["prefsrc"]:
        args["prefsrc"] = entry["prefsrc"]
    return args


def restore_port(route: Any, snap: Snapshot) -> None:
    """Make one interface match its snapshot exactly (addresses, routes, up/down)."""
    info = link(route, snap["ifname"])
    if info is None or not snap["exists"]:
        return
    flush(route, info.index)
    for entry in snap["addresses"]:
        args: dict[str, Any] = {
            "index": info.index,
            "address": entry["address"],
            "prefixlen": entry["prefixlen"],
        }
        if entry["broadcast"]:
            args["broadcast"] = entry["broadcast"]
        route.addr("add", **args)
    route.link("set", index=info.index, state="up" if snap["up"] else "down")
    current = {_route_key(r) for r in routes(route, info.index)}
    for entry in snap["routes"]:
        if entry["proto"] == RTPROT_KERNEL and _route_key(entry) in current:
            continue
        try:
            route.route("add", **_route_args(info.index, entry))
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise


def _route_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["dst"], entry["dst_len"], entry["gateway"], entry["priority"])


def set_static(
    route: Any,
    ifname: str,
    address: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address | None,
    metric: int,
) -> None:
    """Replace the interface's IPv4 configuration with one address and a default route."""
    info = require_link(route, ifname)
    flush(route, info.index)
    route.link("set", index=info.index, state="up")
    route.addr(
        "add",
        index=info.index,
        address=str(address.ip),
        prefixlen=address.network.prefixlen,
        broadcast=str(address.network.broadcast_address),
    )
    if gateway is not None:
        route.route(
            "add",
            dst_len=0,
            gateway=str(gateway),
            oif=info.index,
            priority=metric,
            proto=RTPROT_STATIC,
            table=MAIN_TABLE,
        )


def clear(route: Any, ifname: str) -> None:
    """Remove the interface's IPv4 addresses and routes and bring it up (for DHCP)."""
    info = require_link(route, ifname)
    flush(route, info.index)
    route.link("set", index=info.index, state="up")


def translate(exc: NetlinkError, what: str) -> NetworkApplyError:
    """A netlink failure as a domain error."""
    return NetworkApplyError(f"cannot {what}: {exc}", reason="NETLINK_FAILED")
