"""Live interface state over netlink (pyroute2): read and set a port's IPv4 configuration.

Applying a plan touches only IPv4 addresses and main-table IPv4 routes of the named
interfaces; routes the kernel derives from an address (protocol ``kernel``) come with the
address and are never added by hand. The complete snapshot and its exact restore (every
table, both families) are in :mod:`agent.netconf.netstate`.
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

from agent.netconf.base import NetworkApplyError

_log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTPROT_KERNEL = 2
RTPROT_STATIC = 4
RTNH_F_ONLINK = 4
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


def flush_routes(route: Any, index: int) -> None:
    """Remove every main-table IPv4 route through the link that the kernel did not derive."""
    for entry in routes(route, index):
        if entry["proto"] == RTPROT_KERNEL:
            continue
        args: dict[str, Any] = {
            "oif": index,
            "table": MAIN_TABLE,
            "dst_len": entry["dst_len"],
            "proto": entry["proto"],
            "scope": entry["scope"],
            "type": entry["type"],
        }
        for key in ("gateway", "priority", "prefsrc"):
            if entry[key] is not None:
                args[key] = entry[key]
        if entry["dst_len"]:
            args["dst"] = entry["dst"]
        with contextlib.suppress(NetlinkError):
            route.route("del", **args)


def remove_addresses(route: Any, index: int, keep: tuple[str, int] | None = None) -> None:
    """Remove the link's IPv4 addresses (but ``keep``, an address and prefix length)."""
    for entry in addresses(route, index):
        if keep is not None and (entry["address"], entry["prefixlen"]) == keep:
            continue
        try:
            route.addr("del", index=index, address=entry["address"], prefixlen=entry["prefixlen"])
        except NetlinkError as exc:
            if exc.code != EADDRNOTAVAIL:
                raise


def set_static(
    route: Any,
    ifname: str,
    address: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address | None,
    metric: int,
) -> None:
    """Replace the interface's IPv4 configuration with one address and a default route."""
    info = require_link(route, ifname)
    route.link("set", index=info.index, state="up")
    want = (str(address.ip), address.network.prefixlen)

    def add_if_missing() -> None:
        if want not in [(a["address"], a["prefixlen"]) for a in addresses(route, info.index)]:
            route.addr(
                "add",
                index=info.index,
                address=want[0],
                prefixlen=want[1],
                broadcast=str(address.network.broadcast_address),
            )

    # the new address goes on first (a link left without any IPv4 address loses its routes
    # in every table); removing an old primary may take it along, so check again after
    add_if_missing()
    flush_routes(route, info.index)
    remove_addresses(route, info.index, keep=want)
    add_if_missing()
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
    flush_routes(route, info.index)
    remove_addresses(route, info.index)
    route.link("set", index=info.index, state="up")


def translate(exc: NetlinkError, what: str) -> NetworkApplyError:
    """A netlink failure as a domain error."""
    return NetworkApplyError(f"cannot {what}: {exc}", reason="NETLINK_FAILED")
