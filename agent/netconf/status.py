"""Port and NTP status in the Panorama device-status shapes.

Per port: ``IpAddress`` (CIDR), ``ConnectionStatus`` (``CONNECTED`` | ``NOT_CONNECTED`` |
``CONNECTING``), ``HwAddress``; for NTP: ``NtpServerName``, ``IpAddress``,
``ConnectionStatus``. Addresses and the hardware address come from netifaces, carrier from
rtnetlink.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import netifaces

from agent.netconf import live
from agent.netconf.base import TimeBackend

CONNECTED = "CONNECTED"
NOT_CONNECTED = "NOT_CONNECTED"
CONNECTING = "CONNECTING"


def port_status(ifname: str, *, in_trial: bool = False) -> dict[str, str]:
    """One port's ``EthernetStatus``.

    ``CONNECTING`` means the link has carrier but no IPv4 address yet, or a trial
    configuration is still being probed on it.
    """
    if ifname not in netifaces.interfaces():
        return {"IpAddress": "", "ConnectionStatus": NOT_CONNECTED, "HwAddress": ""}
    addrs = netifaces.ifaddresses(ifname)
    hw = addrs.get(netifaces.AF_LINK, [{}])[0].get("addr", "")
    cidr = ""
    for entry in addrs.get(netifaces.AF_INET, []):
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{entry['netmask']}").prefixlen
        cidr = f"{entry['addr']}/{prefix}"
        break
    with live.ipr() as route:
        info = live.link(route, ifname)
    carrier = info is not None and info.up and info.carrier
    if not carrier:
        state = NOT_CONNECTED
    elif in_trial or not cidr:
        state = CONNECTING
    else:
        state = CONNECTED
    return {"IpAddress": cidr, "ConnectionStatus": state, "HwAddress": hw}


def ntp_status(backend: TimeBackend) -> dict[str, str]:
    """``NtpStatus`` from the time backend."""
    status = backend.status()
    return {
        "NtpServerName": status.server_name,
        "IpAddress": status.server_address,
        "ConnectionStatus": CONNECTED if status.synchronized else NOT_CONNECTED,
    }


def networking_status(
    interfaces: dict[str, str], backend: TimeBackend, trial_ifnames: set[str]
) -> dict[str, Any]:
    """The whole ``NetworkingStatus`` object."""
    out: dict[str, Any] = {}
    for port in ("Ethernet0", "Ethernet1"):
        ifname = interfaces.get(port)
        if ifname is not None:
            out[f"{port}Status"] = port_status(ifname, in_trial=ifname in trial_ifnames)
    out["NtpStatus"] = ntp_status(backend)
    out["LastUpdatedTime"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return out
