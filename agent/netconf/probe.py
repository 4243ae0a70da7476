"""The health probe that decides whether a trial configuration is kept.

For every configured port, within one window: the link has carrier, the address is present
(for DHCP: any IPv4 address), and the gateway answers, either to ICMP echo (``ping``) or by
resolving in ARP (a ``REACHABLE`` neighbour entry). Optionally a TCP connection to an
endpoint (the MQTT broker) must succeed. Checks are repeated until all pass or the window
closes; the first check still failing then gives the reason.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.netconf import live
from agent.netconf.base import ProbeResult
from agent.netconf.plan import NetworkPlan, PortPlan

_log = logging.getLogger(__name__)

NUD_REACHABLE = 0x02
PROBE_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class _Failure:
    reason: str
    message: str


def _gateway_of(route: Any, index: int, port: PortPlan) -> str | None:
    if port.gateway is not None:
        return str(port.gateway)
    for entry in live.routes(route, index):
        if entry["dst_len"] == 0 and entry["gateway"]:
            return str(entry["gateway"])
    return None


def _ping(ifname: str, gateway: str) -> bool:
    try:
        result = subprocess.run(
            ["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", ifname, gateway],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _arp_reachable(route: Any, index: int, gateway: str) -> bool:
    for msg in route.get_neighbours(ifindex=index, family=socket.AF_INET):
        if msg.get("NDA_DST") == gateway and msg["state"] & NUD_REACHABLE:
            return True
    return False


def _check_port(route: Any, port: PortPlan, passed: list[str]) -> _Failure | None:
    info = live.link(route, port.ifname)
    if info is None:
        return _Failure("PROBE_INTERFACE_MISSING", f"{port.ifname} ({port.port}) does not exist")
    if not (info.up and info.carrier):
        return _Failure("PROBE_NO_CARRIER", f"{port.ifname} ({port.port}) has no carrier")
    passed.append(f"{port.ifname}: carrier")
    present = live.addresses(route, info.index)
    if port.address is not None:
        want = (str(port.address.ip), port.address.network.prefixlen)
        if want not in [(a["address"], a["prefixlen"]) for a in present]:
            return _Failure("PROBE_ADDRESS_MISSING", f"{port.address} is not on {port.ifname}")
        passed.append(f"{port.ifname}: address {port.address}")
    else:
        if not present:
            return _Failure("PROBE_ADDRESS_MISSING", f"{port.ifname} got no IPv4 address from DHCP")
        passed.append(f"{port.ifname}: address {present[0]['address']}/{present[0]['prefixlen']}")
    return _check_gateway(route, info.index, port, passed)


def _check_gateway(route: Any, index: int, port: PortPlan, passed: list[str]) -> _Failure | None:
    gateway = _gateway_of(route, index, port)
    if gateway is None:
        passed.append(f"{port.ifname}: no gateway to check")
        return None
    if _ping(port.ifname, gateway):
        passed.append(f"{port.ifname}: gateway {gateway} answers ICMP")
    elif _arp_reachable(route, index, gateway):
        passed.append(f"{port.ifname}: gateway {gateway} answers ARP")
    else:
        return _Failure(
            "PROBE_GATEWAY_UNREACHABLE",
            f"gateway {gateway} does not answer ICMP or ARP on {port.ifname}",
        )
    return None


def _check_endpoint(endpoint: tuple[str, int], passed: list[str]) -> _Failure | None:
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        return _Failure(
            "PROBE_ENDPOINT_UNREACHABLE", f"cannot connect to {host}:{port}: {exc.strerror}"
        )
    passed.append(f"endpoint {host}:{port}: connected")
    return None


def probe(
    plan: NetworkPlan,
    window: float,
    endpoint: tuple[str, int] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ProbeResult:
    """Check the plan's ports (and the endpoint) until all pass or ``window`` seconds pass."""
    deadline = clock() + window
    while True:
        passed: list[str] = []
        failure: _Failure | None = None
        with live.ipr() as route:
            for port in plan.ports:
                failure = _check_port(route, port, passed)
                if failure is not None:
                    break
        if failure is None and endpoint is not None:
            failure = _check_endpoint(endpoint, passed)
        if failure is None:
            return ProbeResult(ok=True, message="all checks passed", checks=tuple(passed))
        remaining = deadline - clock()
        if remaining <= 0:
            _log.warning("probe failed: %s", failure.message)
            return ProbeResult(
                ok=False,
                reason=failure.reason,
                message=f"{failure.message} (within {window:g} s)",
                checks=tuple(passed),
            )
        sleep(min(PROBE_INTERVAL, remaining))


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as a tuple; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004
        raise ValueError(f"{text!r} is not host:port")
    host = host.strip("[]")
    if ":" in host:
        ipaddress.IPv6Address(host)
    return host, int(port)
