"""The seed's ``NetworkPayload`` (ProvisionDevice ``NetworkingConfiguration``).

Field names are the seed's, verbatim. :func:`parse_network_payload` checks exactly what the
seed's model says (required fields, enums, lengths, patterns, the 5-server NTP limit) and
reports every problem with its field path. Deeper checks that concern the appliance (subnets,
gateways, routes) belong to :mod:`agent.netconf`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import FieldProblem, ValidationError
from agent.seedpattern import is_unicode_text, seed_pattern

_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d{2}|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
IPV4_WITH_PORT = seed_pattern(rf"^({_OCTET}\.){{3}}{_OCTET}(:{_PORT})?$")
FQDN_LOWER = seed_pattern(r"^([a-z0-9]+(-[a-z0-9]+)*\.)+[a-z]{2,}$")
NON_EMPTY = seed_pattern(r"^.+$")
MAX_NTP_SERVERS = 5
MAX_STRING = 255

ConnectionType = Literal["STATIC_IP", "DHCP"]
CONNECTION_TYPES: tuple[ConnectionType, ...] = ("STATIC_IP", "DHCP")
PORTS = ("Ethernet0", "Ethernet1")


@dataclass(frozen=True, slots=True)
class StaticIpConnectionInfo:
    """A static address for one port, as the seed gives it (strings, unparsed)."""

    IpAddress: str
    Mask: str
    DefaultGateway: str
    Dns: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The seed's JSON form."""
        return {
            "DefaultGateway": self.DefaultGateway,
            "Dns": list(self.Dns),
            "IpAddress": self.IpAddress,
            "Mask": self.Mask,
        }


@dataclass(frozen=True, slots=True)
class EthernetPayload:
    """One Ethernet port's settings."""

    ConnectionType: ConnectionType
    StaticIpConnectionInfo: StaticIpConnectionInfo | None = None

    def to_json(self) -> dict[str, Any]:
        """The seed's JSON form."""
        out: dict[str, Any] = {"ConnectionType": self.ConnectionType}
        if self.StaticIpConnectionInfo is not None:
            out["StaticIpConnectionInfo"] = self.StaticIpConnectionInfo.to_json()
        return out


@dataclass(frozen=True, slots=True)
class NtpPayload:
    """NTP servers in order of preference."""

    NtpServers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The seed's JSON form."""
        return {"NtpServers": list(self.NtpServers)}


@dataclass(frozen=True, slots=True)
class NetworkPayload:
    """The whole ``NetworkingConfiguration``; every part is optional."""

    Ethernet0: EthernetPayload | None = None
    Ethernet1: EthernetPayload | None = None
    Ntp: NtpPayload | None = None

    def port(self, name: str) -> EthernetPayload | None:
        """The settings of ``Ethernet0`` or ``Ethernet1``."""
        if name == "Ethernet0":
            return self.Ethernet0
        if name == "Ethernet1":
            return self.Ethernet1
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The seed's JSON form (absent parts omitted)."""
        out: dict[str, Any] = {}
        if self.Ethernet0 is not None:
            out["Ethernet0"] = self.Ethernet0.to_json()
        if self.Ethernet1 is not None:
            out["Ethernet1"] = self.Ethernet1.to_json()
        if self.Ntp is not None:
            out["Ntp"] = self.Ntp.to_json()
        return out


def parse_network_payload(data: Any, path: str = "NetworkingConfiguration") -> NetworkPayload:
    """Validate ``data`` against the seed and return the model, or raise ValidationError.

    Every problem is reported at once; ``fields`` names each offending path.
    """
    problems: list[FieldProblem] = []
    payload = _network(data, path, problems)
    if problems or payload is None:
        raise ValidationError(
            f"{path} is invalid: " + "; ".join(f"{p.path}: {p.message}" for p in problems),
            reason="NETWORK_CONFIGURATION_INVALID",
            fields=problems,
        )
    return payload


def _unknown(
    data: dict[str, Any], allowed: tuple[str, ...], path: str, out: list[FieldProblem]
) -> None:
    out.extend(FieldProblem(f"{path}.{key}", "unknown field") for key in data if key not in allowed)


def _string(
    value: Any, path: str, out: list[FieldProblem], pattern: re.Pattern[str] = NON_EMPTY
) -> str | None:
    if not isinstance(value, str):
        out.append(FieldProblem(path, "must be a string"))
        return None
    if not 1 <= len(value) <= MAX_STRING:
        out.append(FieldProblem(path, f"length must be 1 to {MAX_STRING}"))
        return None
    if not is_unicode_text(value):
        out.append(FieldProblem(path, "must be valid Unicode text"))
        return None
    if not pattern.fullmatch(value):
        out.append(FieldProblem(path, f"does not match {pattern.pattern}"))
        return None
    return value


def _network(data: Any, path: str, out: list[FieldProblem]) -> NetworkPayload | None:
    if not isinstance(data, dict):
        out.append(FieldProblem(path, "must be an object"))
        return None
    _unknown(data, ("Ethernet0", "Ethernet1", "Ntp"), path, out)
    eth0 = _ethernet(data["Ethernet0"], f"{path}.Ethernet0", out) if "Ethernet0" in data else None
    eth1 = _ethernet(data["Ethernet1"], f"{path}.Ethernet1", out) if "Ethernet1" in data else None
    ntp = _ntp(data["Ntp"], f"{path}.Ntp", out) if "Ntp" in data else None
    return NetworkPayload(Ethernet0=eth0, Ethernet1=eth1, Ntp=ntp)


def _ethernet(data: Any, path: str, out: list[FieldProblem]) -> EthernetPayload | None:
    if not isinstance(data, dict):
        out.append(FieldProblem(path, "must be an object"))
        return None
    _unknown(data, ("ConnectionType", "StaticIpConnectionInfo"), path, out)
    kind = data.get("ConnectionType")
    if "ConnectionType" not in data:
        out.append(FieldProblem(f"{path}.ConnectionType", "is required"))
        return None
    if kind not in CONNECTION_TYPES:
        out.append(FieldProblem(f"{path}.ConnectionType", "must be one of STATIC_IP, DHCP"))
        return None
    static = None
    if "StaticIpConnectionInfo" in data:
        static = _static(data["StaticIpConnectionInfo"], f"{path}.StaticIpConnectionInfo", out)
    elif kind == "STATIC_IP":
        out.append(FieldProblem(f"{path}.StaticIpConnectionInfo", "is required for STATIC_IP"))
    return EthernetPayload(ConnectionType=kind, StaticIpConnectionInfo=static)


def _static(data: Any, path: str, out: list[FieldProblem]) -> StaticIpConnectionInfo | None:
    if not isinstance(data, dict):
        out.append(FieldProblem(path, "must be an object"))
        return None
    names = ("IpAddress", "Mask", "DefaultGateway", "Dns")
    _unknown(data, names, path, out)
    before = len(out)
    out.extend(FieldProblem(f"{path}.{name}", "is required") for name in names if name not in data)
    if len(out) > before:
        return None
    ip = _string(data["IpAddress"], f"{path}.IpAddress", out, IPV4_WITH_PORT)
    mask = _string(data["Mask"], f"{path}.Mask", out)
    gateway = _string(data["DefaultGateway"], f"{path}.DefaultGateway", out)
    dns_raw = data["Dns"]
    dns: list[str] = []
    if not isinstance(dns_raw, list):
        out.append(FieldProblem(f"{path}.Dns", "must be a list of strings"))
    else:
        for i, item in enumerate(dns_raw):
            value = _string(item, f"{path}.Dns[{i}]", out)
            if value is not None:
                dns.append(value)
    if len(out) > before or ip is None or mask is None or gateway is None:
        return None
    return StaticIpConnectionInfo(IpAddress=ip, Mask=mask, DefaultGateway=gateway, Dns=tuple(dns))


def _ntp(data: Any, path: str, out: list[FieldProblem]) -> NtpPayload | None:
    if not isinstance(data, dict):
        out.append(FieldProblem(path, "must be an object"))
        return None
    _unknown(data, ("NtpServers",), path, out)
    servers = data.get("NtpServers")
    if "NtpServers" not in data:
        out.append(FieldProblem(f"{path}.NtpServers", "is required"))
        return None
    if not isinstance(servers, list):
        out.append(FieldProblem(f"{path}.NtpServers", "must be a list of strings"))
        return None
    if len(servers) > MAX_NTP_SERVERS:
        out.append(FieldProblem(f"{path}.NtpServers", f"at most {MAX_NTP_SERVERS} servers allowed"))
        return None
    result: list[str] = []
    for i, item in enumerate(servers):
        item_path = f"{path}.NtpServers[{i}]"
        if not isinstance(item, str):
            out.append(FieldProblem(item_path, "must be a string"))
        elif not 1 <= len(item) <= MAX_STRING:
            out.append(FieldProblem(item_path, f"length must be 1 to {MAX_STRING}"))
        elif not (FQDN_LOWER.fullmatch(item) or IPV4_WITH_PORT.fullmatch(item)):
            out.append(
                FieldProblem(
                    item_path,
                    "must be a lower-case host name or an IPv4 address with an optional :port",
                )
            )
        else:
            result.append(item)
    return NtpPayload(NtpServers=tuple(result))
