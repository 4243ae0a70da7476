"""Print the network state of the current namespace as JSON (run inside a test namespace).

netifaces gives what a status reader sees (addresses, netmasks, MACs, default gateways);
pyroute2 gives the exact address and route records the rollback must restore.
"""

from __future__ import annotations

import json
import sys

import netifaces

from agent.netconf import live


def main(ifnames: list[str]) -> None:
    seen: dict[str, object] = {}
    exact: dict[str, object] = {}
    for ifname in ifnames:
        addrs = netifaces.ifaddresses(ifname)
        seen[ifname] = {
            "inet": [
                {"addr": a["addr"], "netmask": a["netmask"]}
                for a in addrs.get(netifaces.AF_INET, [])
            ],
            "mac": addrs[netifaces.AF_LINK][0]["addr"],
        }
        with live.ipr() as route:
            exact[ifname] = live.snapshot_port(route, ifname)
    out: dict[str, object] = {"netifaces": seen, "exact": exact}
    gateways = netifaces.gateways()
    out["default_gateway"] = list(gateways.get("default", {}).get(netifaces.AF_INET, ()))
    out["gateways"] = [list(g) for g in gateways.get(netifaces.AF_INET, [])]
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["eth0", "eth1"])
