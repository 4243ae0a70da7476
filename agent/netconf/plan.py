"""The validated network plan: what the appliance's two ports and NTP should look like.

:func:`build_plan` starts from the seed's :class:`~agent.archive.network.NetworkPayload`
(already checked by :func:`~agent.archive.network.parse_network_payload`) and adds the checks
that concern a real appliance:

* the mask is a dotted quad with contiguous bits, or a prefix length (``24`` or ``/24``);
* an interface address never carries ``:port`` (the seed's pattern allows it);
* the address is a usable host of its subnet, and the gateway lies in the same subnet;
* the two ports' subnets do not overlap;
* DNS entries are IP addresses;
* the board profile has an interface for every configured port.

Every problem is reported at once, each with its field path, in one
:class:`NetworkConfigurationError`. Only one default route wins: Ethernet0's gateway gets
metric :data:`PRIMARY_METRIC`, Ethernet1's :data:`SECONDARY_METRIC`, whichever ports are static.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from agent.archive.network import (
    IPV4_WITH_PORT,
    PORTS,
    NetworkPayload,
    StaticIpConnectionInfo,
    parse_network_payload,
)
from agent.errors import FieldProblem, ValidationError

PRIMARY_METRIC = 100
SECONDARY_METRIC = 200
ROOT_PATH = "NetworkingConfiguration"
DEFAULT_NTP_PORT = 123

Mode = Literal["static", "dhcp"]


class NetworkConfigurationError(ValidationError):
    """The networking configuration cannot be applied to this appliance."""

    default_reason = "NETWORK_CONFIGURATION_INVALID"


@dataclass(frozen=True, slots=True)
class PortPlan:
    """One Ethernet port, resolved to a kernel interface."""

    port: str
    ifname: str
    mode: Mode
    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    metric: int = PRIMARY_METRIC

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (also what is stored in the trial marker)."""
        return {
            "port": self.port,
            "ifname": self.ifname,
            "mode": self.mode,
            "address": str(self.address) if self.address else None,
            "gateway": str(self.gateway) if self.gateway else None,
            "dns": [str(d) for d in self.dns],
            "metric": self.metric,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortPlan:
        """Rebuild from :meth:`to_json` output."""
        return cls(
            port=data["port"],
            ifname=data["ifname"],
            mode=data["mode"],
            address=ipaddress.IPv4Interface(data["address"]) if data["address"] else None,
            gateway=ipaddress.IPv4Address(data["gateway"]) if data["gateway"] else None,
            dns=tuple(ipaddress.ip_address(d) for d in data["dns"]),
            metric=int(data["metric"]),
        )


@dataclass(frozen=True, slots=True)
class NtpServer:
    """One NTP server: a host name or IPv4 address and a UDP port."""

    host: str
    port: int = DEFAULT_NTP_PORT

    def __str__(self) -> str:
        return self.host if self.port == DEFAULT_NTP_PORT else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """Everything to apply: the configured ports (in port order) and the NTP servers."""

    ports: tuple[PortPlan, ...] = ()
    ntp: tuple[NtpServer, ...] | None = None

    def port(self, name: str) -> PortPlan | None:
        """The plan of ``Ethernet0`` or ``Ethernet1``, if configured."""
        return next((p for p in self.ports if p.port == name), None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (also what is stored in state)."""
        return {
            "ports": [p.to_json() for p in self.ports],
            "ntp": None if self.ntp is None else [str(s) for s in self.ntp],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkPlan:
        """Rebuild from :meth:`to_json` output."""
        ntp = data.get("ntp")
        return cls(
            ports=tuple(PortPlan.from_json(p) for p in data["ports"]),
            ntp=None if ntp is None else tuple(_split_server(s) for s in ntp),
        )


def describe_plan(plan: NetworkPlan) -> list[str]:
    """One human line per port, and one for NTP."""
    lines = []
    for port in plan.ports:
        if port.mode == "dhcp":
            lines.append(f"{port.port} -> {port.ifname}: DHCP (route metric {port.metric})")
        else:
            dns = f", DNS {' '.join(str(d) for d in port.dns)}" if port.dns else ""
            lines.append(
                f"{port.port} -> {port.ifname}: {port.address} via {port.gateway} "
                f"(metric {port.metric}){dns}"
            )
    if plan.ntp is not None:
        lines.append("NTP servers: " + (", ".join(str(s) for s in plan.ntp) or "(none)"))
    return lines


def _split_server(text: str) -> NtpServer:
    host, _, port = text.partition(":")
    return NtpServer(host, int(port) if port else DEFAULT_NTP_PORT)


def parse_mask(text: str) -> int | None:
    """The prefix length of ``255.255.255.0``, ``24`` or ``/24``; None if it is not a mask."""
    value = text.strip()
    value = value.removeprefix("/")
    if value.isdigit():
        length = int(value)
        return length if 0 < length <= 32 and value == str(length) else None  # noqa: PLR2004
    try:
        mask = int(ipaddress.IPv4Address(value))
    except ipaddress.AddressValueError:
        return None
    length = mask.bit_count()
    if mask == 0 or mask != ((1 << 32) - 1) ^ ((1 << (32 - length)) - 1):
        return None
    return length


def _parse_ipv4(
    text: str, path: str, what: str, problems: list[FieldProblem]
) -> ipaddress.IPv4Address | None:
    if ":" in text and IPV4_WITH_PORT.match(text):
        problems.append(FieldProblem(path, f"{what} must not carry a :port"))
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ipaddress.AddressValueError:
        problems.append(FieldProblem(path, f"{what} must be an IPv4 address"))
        return None


def _check_gateway(
    gateway: ipaddress.IPv4Address,
    iface: ipaddress.IPv4Interface,
    path: str,
    problems: list[FieldProblem],
) -> None:
    net = iface.network
    if gateway not in net:
        problems.append(FieldProblem(path, f"{gateway} is not in the port's subnet {net}"))
    elif gateway == iface.ip:
        problems.append(FieldProblem(path, "must differ from the port's own address"))
    elif net.prefixlen < 31 and gateway in (net.network_address, net.broadcast_address):  # noqa: PLR2004
        problems.append(
            FieldProblem(path, f"{gateway} is the network or broadcast address of {net}")
        )


def _check_overlap(ports: list[PortPlan], problems: list[FieldProblem]) -> None:
    statics = [p.address for p in ports if p.address is not None]
    if len(statics) == 2 and statics[0].network.overlaps(statics[1].network):  # noqa: PLR2004
        problems.append(
            FieldProblem(
                f"{ROOT_PATH}.Ethernet1.StaticIpConnectionInfo.IpAddress",
                f"subnet {statics[1].network} overlaps Ethernet0's subnet {statics[0].network}",
            )
        )


def _static_port(
    port: str,
    ifname: str,
    info: StaticIpConnectionInfo,
    metric: int,
    problems: list[FieldProblem],
) -> PortPlan | None:
    path = f"{ROOT_PATH}.{port}.StaticIpConnectionInfo"
    before = len(problems)
    ip = _parse_ipv4(info.IpAddress, f"{path}.IpAddress", "an interface address", problems)
    prefix = parse_mask(info.Mask)
    if prefix is None:
        problems.append(
            FieldProblem(
                f"{path}.Mask",
                "must be a dotted-quad netmask with contiguous bits (255.255.255.0) "
                "or a prefix length from 1 to 32 (24 or /24)",
            )
        )
    gateway = _parse_ipv4(info.DefaultGateway, f"{path}.DefaultGateway", "the gateway", problems)
    dns: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for i, entry in enumerate(info.Dns):
        try:
            dns.append(ipaddress.ip_address(entry))
        except ValueError:
            problems.append(FieldProblem(f"{path}.Dns[{i}]", "must be an IP address"))
    if ip is not None and not ip.is_unspecified and (ip.is_multicast or ip.is_loopback):
        problems.append(
            FieldProblem(f"{path}.IpAddress", "must be a unicast address, not loopback")
        )
        ip = None
    elif ip is not None and ip.is_unspecified:
        problems.append(FieldProblem(f"{path}.IpAddress", "must not be 0.0.0.0"))
        ip = None
    if ip is None or prefix is None:
        return None
    iface = ipaddress.IPv4Interface((ip, prefix))
    net = iface.network
    if prefix < 31 and ip in (net.network_address, net.broadcast_address):  # noqa: PLR2004
        problems.append(
            FieldProblem(
                f"{path}.IpAddress",
                f"{ip} is the network or broadcast address of {net}, not a host address",
            )
        )
    if gateway is not None:
        _check_gateway(gateway, iface, f"{path}.DefaultGateway", problems)
    if len(problems) > before or gateway is None:
        return None
    return PortPlan(port, ifname, "static", iface, gateway, tuple(dns), metric)


def build_plan(
    payload: NetworkPayload,
    interfaces: dict[str, str],
    *,
    board_name: str = "generic",
) -> NetworkPlan:
    """Check ``payload`` beyond the seed and resolve its ports to interfaces.

    Args:
        payload: The seed-valid networking configuration.
        interfaces: Port name (``Ethernet0``) to kernel interface name, from the board profile.
        board_name: The board's name, for messages.

    Returns:
        The plan to apply.

    Raises:
        NetworkConfigurationError: Listing every problem with its field path.
    """
    problems: list[FieldProblem] = []
    ports: list[PortPlan] = []
    for index, port in enumerate(PORTS):
        settings = payload.port(port)
        if settings is None:
            continue
        ifname = interfaces.get(port)
        if ifname is None:
            problems.append(
                FieldProblem(f"{ROOT_PATH}.{port}", f"board {board_name!r} has no {port}")
            )
            continue
        metric = PRIMARY_METRIC if index == 0 else SECONDARY_METRIC
        if settings.ConnectionType == "DHCP":
            ports.append(PortPlan(port, ifname, "dhcp", metric=metric))
            continue
        info = settings.StaticIpConnectionInfo
        if info is None:  # the seed parser already refused this; keep the type checker honest
            problems.append(
                FieldProblem(f"{ROOT_PATH}.{port}.StaticIpConnectionInfo", "is required")
            )
            continue
        plan = _static_port(port, ifname, info, metric, problems)
        if plan is not None:
            ports.append(plan)
    _check_overlap(ports, problems)
    ntp = None
    if payload.Ntp is not None:
        ntp = tuple(_split_server(s) for s in payload.Ntp.NtpServers)
    if problems:
        raise NetworkConfigurationError(
            f"{ROOT_PATH} cannot be applied: "
            + "; ".join(f"{p.path}: {p.message}" for p in problems),
            fields=problems,
        )
    return NetworkPlan(ports=tuple(ports), ntp=ntp)


def plan_from_json(
    data: Any, interfaces: dict[str, str], *, board_name: str = "generic"
) -> NetworkPlan:
    """Seed validation, then :func:`build_plan`; one error shape for both levels.

    ``data`` is the ``NetworkingConfiguration`` object itself, or a document holding it under
    ``NetworkingConfiguration`` (a ProvisionDevice request) or ``networkingConfiguration`` (an
    archive manifest).
    """
    if isinstance(data, dict):
        for key in ("NetworkingConfiguration", "networkingConfiguration"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    try:
        payload = parse_network_payload(data, ROOT_PATH)
    except ValidationError as exc:
        raise NetworkConfigurationError(exc.message, fields=exc.fields) from exc
    return build_plan(payload, interfaces, board_name=board_name)
