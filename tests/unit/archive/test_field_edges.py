"""Every ProvisionDevice field at its pattern's edges (seed semantics, not Python's)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.archive.make import DeviceRequest, validate_request
from agent.archive.network import parse_network_payload
from agent.errors import ValidationError

LINE_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85"]
STATIC = {
    "IpAddress": "198.18.1.10",
    "Mask": "255.255.255.0",
    "DefaultGateway": "198.18.1.1",
    "Dns": ["198.18.1.53"],
}


def _request_problems(**fields: Any) -> list[str]:
    try:
        validate_request(DeviceRequest(**{"name": "dev-1", **fields}))
    except ValidationError as exc:
        return [f.path for f in exc.fields]
    return []


def _network_problems(
    static: dict[str, Any] | None = None, ntp: list[Any] | None = None
) -> list[str]:
    payload: dict[str, Any] = {}
    if static is not None:
        payload["Ethernet0"] = {
            "ConnectionType": "STATIC_IP",
            "StaticIpConnectionInfo": {**STATIC, **static},
        }
    if ntp is not None:
        payload["Ntp"] = {"NtpServers": ntp}
    try:
        parse_network_payload(payload)
    except ValidationError as exc:
        return [f.path for f in exc.fields]
    return []


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_name_with_a_line_break_is_refused(brk: str) -> None:
    assert _request_problems(name="dev-1" + brk) == ["Name"]


@pytest.mark.parametrize("name", ["a", "A-Z_0-9", "-", "_", "x" * 233])
def test_name_edges_accepted(name: str) -> None:
    assert _request_problems(name=name) == []


@pytest.mark.parametrize("name", ["", "d\u00e9v", "dev\u0661", "dev.1", "dev 1", "x" * 256])
def test_name_edges_refused(name: str) -> None:
    assert _request_problems(name=name) == ["Name"]


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_description_and_tags_are_one_line(brk: str) -> None:
    assert _request_problems(description="x" + brk) == ["Description"]
    assert _request_problems(tags={"k" + brk: "v"}) == [f"Tags.k{brk}"]
    assert _request_problems(tags={"k": "v" + brk}) == ["Tags.k"]


def test_description_and_tag_edges() -> None:
    assert _request_problems(description="") == []
    assert _request_problems(description="é " * 127 + "x") == []
    assert _request_problems(tags={"k" * 128: "v" * 256, "\t": ""}) == []
    assert _request_problems(tags={"": "v"}) == ["Tags."]


@pytest.mark.parametrize(
    "ip",
    [
        "0.0.0.0",  # noqa: S104 - an address string, not a bind
        "255.255.255.255",
        "198.18.1.10:1",
        "198.18.1.10:65535",
        "198.18.1.10:9999",
    ],
)
def test_ip_address_edges_accepted(ip: str) -> None:
    assert _network_problems(static={"IpAddress": ip}) == []


@pytest.mark.parametrize(
    "ip",
    [
        "198.18.1.10:0",
        "198.18.1.10:65536",
        "198.18.1.10:01",
        "256.0.0.1",
        "01.2.3.4",
        "\u0661.18.1.10",
        "198.18.1.10\n",
        "198.18.1.10:",
        "198.18.1",
    ],
)
def test_ip_address_edges_refused(ip: str) -> None:
    assert _network_problems(static={"IpAddress": ip}) == [
        "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.IpAddress"
    ]


@pytest.mark.parametrize("field", ["Mask", "DefaultGateway"])
@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_mask_and_gateway_are_one_line(field: str, brk: str) -> None:
    assert _network_problems(static={field: "198.18.1.1" + brk}) == [
        f"NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.{field}"
    ]


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_dns_entries_are_one_line(brk: str) -> None:
    assert _network_problems(static={"Dns": ["198.18.1.53", "x" + brk]}) == [
        "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Dns[1]"
    ]


def test_string_length_edges() -> None:
    assert _network_problems(static={"Mask": "m" * 255}) == []
    assert _network_problems(static={"Mask": "m" * 256}) == [
        "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Mask"
    ]
    assert _network_problems(static={"Mask": ""}) == [
        "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Mask"
    ]


@pytest.mark.parametrize("server", ["a.bc", "0.pool.ntp.org", "198.18.1.1:1", "198.18.1.1"])
def test_ntp_server_edges_accepted(server: str) -> None:
    assert _network_problems(ntp=[server]) == []


@pytest.mark.parametrize(
    "server",
    [
        "pool.ntp.org\n",
        "198.18.1.1:0",
        "a.b",
        "-a.org",
        "a-.org",
        "Pool.ntp.org",
        "p\u00f6ol.ntp.org",
        "\u0661.1.1.1",
        "localhost",
    ],
)
def test_ntp_server_edges_refused(server: str) -> None:
    assert _network_problems(ntp=[server]) == ["NetworkingConfiguration.Ntp.NtpServers[0]"]


def test_ntp_server_count_edges() -> None:
    assert _network_problems(ntp=["a.org"] * 5) == []
    assert _network_problems(ntp=["a.org"] * 6) == ["NetworkingConfiguration.Ntp.NtpServers"]


def test_lone_surrogates_are_refused_everywhere() -> None:
    lone = "\udc80"
    assert _request_problems(name="dev" + lone) == ["Name"]
    assert _request_problems(description=lone) == ["Description"]
    assert _request_problems(tags={"k": lone}) == ["Tags.k"]
    assert _request_problems(template_parameters={"p": lone}) == ["templateParameters.p"]
    assert _network_problems(static={"Mask": lone}) == [
        "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Mask"
    ]


def test_template_parameter_limits() -> None:
    assert _request_problems(template_parameters={f"k{i}": "v" for i in range(100)}) == []
    assert _request_problems(template_parameters={f"k{i}": "v" for i in range(101)}) == [
        "templateParameters"
    ]
    assert _request_problems(template_parameters={"": "v"}) == ["templateParameters."]
    assert _request_problems(template_parameters={"k": "v" * 4097}) == ["templateParameters.k"]
