"""Complete address and route state of one interface: snapshot and exact restore.

A snapshot holds, for one link:

* its up/down state;
* every IPv4 and IPv6 address with prefix length, broadcast, label, scope, flags
  (``nodad``, ``noprefixroute``, ...) and lifetimes (preferred and valid; a finite lifetime
  is counted down from the moment of the snapshot, so it is never restored as permanent);
* every IPv4 and IPv6 route leaving through it, in every routing table except the kernel's
  ``local`` table, with destination, source, TOS, gateway, metric, preferred source,
  protocol, scope, type, flags (``onlink``) and the IPv6 route preference.

:func:`restore_port` compares the live state with the snapshot and changes only the
difference: extra addresses and routes go, missing or different ones come back. Each step
that fails is recorded and the rest still runs; the caller gets the list of failures.
Routes are added in dependency order (routes without a gateway first, then the rest, retried
while any progress is made), and ``onlink`` routes carry their flag, so a gateway outside
every connected subnet is accepted again.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from agent.netconf import live
from agent.netconf.base import Snapshot

LOCAL_TABLE = 255
FOREVER = 0xFFFFFFFF
#: Address flags user space may set (IFA_F_NODAD, OPTIMISTIC, HOMEADDRESS, MANAGETEMPADDR,
#: NOPREFIXROUTE, MCAUTOJOIN).
SETTABLE_ADDR_FLAGS = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400
IFA_F_PERMANENT = 0x80
EEXIST = 17
ESRCH = 3
EADDRNOTAVAIL = 99
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def _family(value: int) -> int:
    return 4 if value == socket.AF_INET else 6


def read_addresses(route: Any, index: int, now: float) -> list[dict[str, Any]]:
    """Every IPv4 and IPv6 address of the link, with flags and lifetimes, sorted."""
    out = []
    for msg in route.get_addr(index=index):
        family = _family(int(msg["family"]))
        cache = msg.get("IFA_CACHEINFO") or {}
        address = msg.get("IFA_LOCAL") if family == 4 else None  # noqa: PLR2004
        out.append(
            {
                "family": family,
                "address": address or msg.get("IFA_ADDRESS"),
                "prefixlen": int(msg["prefixlen"]),
                "broadcast": msg.get("IFA_BROADCAST"),
                "label": msg.get("IFA_LABEL"),
                "scope": int(msg["scope"]),
                "flags": int(msg.get("IFA_FLAGS") or msg["flags"]),
                "proto": msg.get("IFA_PROTO"),
                "preferred": int(cache.get("ifa_preferred", FOREVER)),
                "valid": int(cache.get("ifa_valid", FOREVER)),
                "at": now,
            }
        )
    return sorted(out, key=lambda a: (a["family"], a["address"], a["prefixlen"]))


def dump_routes(route: Any) -> list[Any]:
    """Every IPv4 and IPv6 route message of the namespace (one dump per family)."""
    return [m for family in FAMILIES.values() for m in route.route("dump", family=family)]


def read_routes(route: Any, index: int, dump: list[Any] | None = None) -> list[dict[str, Any]]:
    """Every IPv4 and IPv6 route through the link in every table but ``local``, sorted."""
    out = []
    for msg in dump if dump is not None else dump_routes(route):
        family = int(msg["family"])
        if msg.get("RTA_OIF") != index:
            continue
        table = int(msg.get("RTA_TABLE") or msg["table"])
        if table == LOCAL_TABLE:
            continue
        fam = _family(family)
        out.append(
            {
                "family": fam,
                "table": table,
                "dst": msg.get("RTA_DST"),
                "dst_len": int(msg["dst_len"]),
                "src": msg.get("RTA_SRC"),
                "src_len": int(msg["src_len"]),
                "tos": int(msg["tos"]),
                "gateway": msg.get("RTA_GATEWAY"),
                "priority": msg.get("RTA_PRIORITY"),
                "prefsrc": msg.get("RTA_PREFSRC"),
                "proto": int(msg["proto"]),
                "scope": int(msg["scope"]),
                "type": int(msg["type"]),
                "flags": int(msg["flags"]) & live.RTNH_F_ONLINK,
                "pref": msg.get("RTA_PREF"),
            }
        )
    return sorted(out, key=lambda r: tuple(str(v) for v in _route_key(r)))


def snapshot_port(route: Any, ifname: str, dump: list[Any] | None = None) -> Snapshot:
    """Everything restorable about one interface (``exists`` False when it is absent)."""
    info = live.link(route, ifname)
    if info is None:
        return {"ifname": ifname, "exists": False}
    return {
        "ifname": ifname,
        "exists": True,
        "up": info.up,
        "addresses": read_addresses(route, info.index, time.time()),
        "routes": read_routes(route, info.index, dump),
    }


def snapshot_ports(route: Any, ifnames: list[str]) -> list[Snapshot]:
    """:func:`snapshot_port` for several interfaces, from one route dump."""
    dump = dump_routes(route)
    return [snapshot_port(route, ifname, dump) for ifname in ifnames]


def _addr_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["family"], entry["address"], entry["prefixlen"])


def _route_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (
        entry["family"],
        entry["table"],
        entry["type"],
        entry["dst"],
        entry["dst_len"],
        entry["src"],
        entry["src_len"],
        entry["tos"],
        entry["priority"],
        entry["gateway"],
    )


def _route_same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    fields = ("prefsrc", "proto", "scope", "flags", "pref")
    return _route_key(a) == _route_key(b) and all(a[f] == b[f] for f in fields)


def _remaining(lifetime: int, since: float, now: float) -> int:
    if lifetime == FOREVER:
        return FOREVER
    return int(lifetime - (now - since))


def _addr_same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def shape(e: dict[str, Any]) -> tuple[Any, ...]:
        return (
            e["broadcast"],
            e["label"],
            e["scope"],
            e["flags"] & SETTABLE_ADDR_FLAGS,
            e["valid"] == FOREVER,
            e["preferred"] == FOREVER,
        )

    return shape(current) == shape(wanted)


def _addr_args(index: int, entry: dict[str, Any], now: float) -> dict[str, Any] | None:
    valid = _remaining(entry["valid"], entry["at"], now)
    preferred = _remaining(entry["preferred"], entry["at"], now)
    if valid <= 0:
        return None  # the lease ran out meanwhile; the kernel would have dropped it too
    args: dict[str, Any] = {
        "index": index,
        "family": FAMILIES[entry["family"]],
        "address": entry["address"],
        "prefixlen": entry["prefixlen"],
        "scope": entry["scope"],
        "IFA_FLAGS": entry["flags"] & SETTABLE_ADDR_FLAGS,
    }
    if entry["broadcast"]:
        args["broadcast"] = entry["broadcast"]
    if entry["label"]:
        args["label"] = entry["label"]
    if valid != FOREVER or preferred != FOREVER:
        args["IFA_CACHEINFO"] = {
            "ifa_valid": valid,
            "ifa_preferred": max(preferred, 0) if preferred != FOREVER else FOREVER,
            "cstamp": 0,
            "tstamp": 0,
        }
    return args


def route_args(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    """pyroute2 arguments that add (or delete) exactly ``entry``."""
    args: dict[str, Any] = {
        "family": FAMILIES[entry["family"]],
        "oif": index,
        "table": entry["table"],
        "dst_len": entry["dst_len"],
        "src_len": entry["src_len"],
        "tos": entry["tos"],
        "proto": entry["proto"],
        "scope": entry["scope"],
        "type": entry["type"],
        "flags": entry["flags"],
    }
    for key in ("dst", "src", "gateway", "priority", "prefsrc"):
        if entry[key] is not None:
            args[key] = entry[key]
    if entry.get("pref") is not None:
        args["RTA_PREF"] = entry["pref"]
    return args


def describe_route(entry: dict[str, Any]) -> str:
    """``ip route``-like text for messages."""
    dst = "default" if entry["dst_len"] == 0 else f"{entry['dst']}/{entry['dst_len']}"
    parts = [f"route {dst}"]
    if entry["gateway"]:
        parts.append(f"via {entry['gateway']}")
    if entry["table"] != live.MAIN_TABLE:
        parts.append(f"table {entry['table']}")
    if entry["priority"] is not None:
        parts.append(f"metric {entry['priority']}")
    if entry["flags"] & live.RTNH_F_ONLINK:
        parts.append("onlink")
    return " ".join(parts)


def restore_port(route: Any, snap: Snapshot) -> list[str]:
    """Make one interface match its snapshot; every failed step is returned, none stops it."""
    failures: list[str] = []
    ifname = snap["ifname"]
    if not snap["exists"]:
        return failures
    info = live.link(route, ifname)
    if info is None:
        return [f"{ifname}: the interface is gone; nothing restored"]
    index = info.index

    def attempt(what: str, call: Any, ignore: tuple[int, ...] = ()) -> bool:
        try:
            call()
        except NetlinkError as exc:
            if exc.code in ignore:
                return True
            failures.append(f"{ifname}: {what}: {exc}")
            return False
        return True

    if snap["up"] and not info.up:
        attempt("set link up", lambda: route.link("set", index=index, state="up"))
    _restore_addresses(route, index, snap["addresses"], attempt)
    _restore_routes(route, index, snap["routes"], attempt)
    if not snap["up"] and info.up:
        attempt("set link down", lambda: route.link("set", index=index, state="down"))
    return failures


def remove_trial_leftovers(route: Any, snap: Snapshot, trial: dict[str, Any]) -> list[str]:
    """Remove a trial's address and default route from a link, unless the snapshot had them."""
    failures: list[str] = []
    info = live.link(route, snap["ifname"])
    if info is None:
        return failures
    if trial.get("address"):
        ip, _, prefix = str(trial["address"]).partition("/")
        key = (4, ip, int(prefix))
        before = {_addr_key(a) for a in snap["addresses"]}
        now = {_addr_key(a) for a in read_addresses(route, info.index, 0)}
        if key in now and key not in before:
            try:
                route.addr("del", index=info.index, address=ip, prefixlen=int(prefix))
            except NetlinkError as exc:
                failures.append(f"{snap['ifname']}: remove trial address {trial['address']}: {exc}")
    if trial.get("gateway"):
        for entry in read_routes(route, info.index):
            if (entry["family"], entry["dst_len"], entry["gateway"], entry["priority"]) != (
                4,
                0,
                trial["gateway"],
                trial["metric"],
            ) or any(_route_same(entry, w) for w in snap["routes"]):
                continue
            try:
                route.route("del", **route_args(info.index, entry))
            except NetlinkError as exc:
                if exc.code != ESRCH:
                    failures.append(
                        f"{snap['ifname']}: remove trial {describe_route(entry)}: {exc}"
                    )
    return failures


def _restore_addresses(route: Any, index: int, wanted: list[dict[str, Any]], attempt: Any) -> None:
    target = {_addr_key(a): a for a in wanted}

    def add_missing() -> None:
        now = time.time()
        current = {_addr_key(a): a for a in read_addresses(route, index, now)}
        for key, entry in target.items():
            have = current.get(key)
            if have is not None and _addr_same(have, entry):
                continue
            args = _addr_args(index, entry, now)
            if args is None:
                continue
            verb = "replace" if have is not None else "add"
            attempt(
                f"{verb} address {entry['address']}/{entry['prefixlen']}",
                lambda v=verb, a=args: route.addr(v, **a),
                (EEXIST,),
            )

    # the snapshot's addresses go on first: removing the last IPv4 address first would make
    # the kernel drop the port's routes in every table
    add_missing()
    for key, entry in {_addr_key(a): a for a in read_addresses(route, index, 0)}.items():
        if key in target:
            continue
        attempt(
            f"remove address {entry['address']}/{entry['prefixlen']}",
            lambda e=entry: route.addr(
                "del",
                index=index,
                family=FAMILIES[e["family"]],
                address=e["address"],
                prefixlen=e["prefixlen"],
            ),
            (EADDRNOTAVAIL,),
        )
    # removing a primary address also removes the secondaries of its subnet: add them again
    add_missing()


def _restore_routes(route: Any, index: int, wanted: list[dict[str, Any]], attempt: Any) -> None:
    current = read_routes(route, index)
    for entry in current:
        if entry["proto"] == live.RTPROT_KERNEL:
            continue  # comes and goes with its address
        if any(_route_same(entry, w) for w in wanted):
            continue
        attempt(
            f"remove {describe_route(entry)}",
            lambda e=entry: route.route("del", **route_args(index, e)),
            (ESRCH,),
        )
    current = read_routes(route, index)
    missing = [w for w in wanted if not any(_route_same(w, c) for c in current)]
    # routes without a gateway first; a gateway route may need another route to reach it
    missing.sort(key=lambda r: r["gateway"] is not None)
    while missing:
        left: list[dict[str, Any]] = []
        errors: list[NetlinkError] = []
        for entry in missing:
            try:
                route.route("add", **route_args(index, entry))
            except NetlinkError as exc:
                if exc.code != EEXIST:
                    left.append(entry)
                    errors.append(exc)
        if not left or len(left) == len(missing):
            for entry, error in zip(left, errors, strict=True):
                attempt(f"add {describe_route(entry)}", _raiser(error))
            return
        missing = left


def _raiser(exc: NetlinkError) -> Any:
    def call() -> None:
        raise exc

    return call
