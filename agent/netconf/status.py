"""Port and NTP status in the Panorama device-status shapes.

Per port: ``IpAddress`` (CIDR), ``ConnectionStatus`` (``CONNECTED`` | ``NOT_CONNECTED`` |
``CONNECTING``), ``HwAddress``; for NTP: ``NtpServerName``, ``IpAddress``,
``ConnectionStatus``. Addresses, the hardware address and carrier come from rtnetlink.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

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
    with live.ipr() as route:
        info = live.link(route, ifname)
        present = [] if info is None else live.addresses(route, info.index)
    if info is None:
        return {"IpAddress": "", "ConnectionStatus": NOT_CONNECTED, "HwAddress": ""}
    hw = info.mac
    cidr = f"{present[0]['address']}/{present[0]['prefixlen']}" if present else ""
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
