"""Print the network state of the current namespace as JSON (run inside a test namespace).

``view`` is what a status reader sees (IPv4 addresses with netmasks, MACs, the winning
default gateway); ``exact`` is the complete snapshot the rollback must restore (both
families, every table, flags and lifetimes), from pyroute2.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys

from agent.netconf import live, netstate


def main(ifnames: list[str]) -> None:
    seen: dict[str, object] = {}
    exact: dict[str, object] = {}
    defaults: list[tuple[int, str, str]] = []
    with live.ipr() as route:
        for ifname in ifnames:
            info = live.link(route, ifname)
            assert info is not None, ifname
            seen[ifname] = {
                "inet": [
                    {
                        "addr": a["address"],
                        "netmask": str(ipaddress.IPv4Network(f"0.0.0.0/{a['prefixlen']}").netmask),
                    }
                    for a in live.addresses(route, info.index)
                ],
                "mac": info.mac,
            }
            snap = netstate.snapshot_port(route, ifname)
            for entry in snap["addresses"]:
                del entry["at"]  # the moment of reading, not state
            exact[ifname] = snap
        names = {i: n for n, i in ((n, live.link(route, n)) for n in ifnames) if i}
        for msg in route.get_routes(family=socket.AF_INET, table=live.MAIN_TABLE):
            if msg["dst_len"] == 0 and msg.get("RTA_GATEWAY"):
                oif = msg.get("RTA_OIF")
                ifname = next((n for i, n in names.items() if i.index == oif), str(oif))
                defaults.append((msg.get("RTA_PRIORITY") or 0, msg.get("RTA_GATEWAY"), ifname))
    out: dict[str, object] = {"view": seen, "exact": exact}
    out["default_gateway"] = list(min(defaults)[1:]) if defaults else []
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["eth0", "eth1"])
