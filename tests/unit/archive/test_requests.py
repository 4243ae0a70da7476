"""ProvisionDevice request and NetworkPayload validation, exactly as the seed says."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agent.archive.make import DeviceRequest, validate_request
from agent.archive.network import parse_network_payload
from agent.errors import ValidationError

STATIC = {
    "IpAddress": "198.18.1.10",
    "Mask": "255.255.255.0",
    "DefaultGateway": "198.18.1.1",
    "Dns": ["198.18.1.53"],
}


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ([], "NetworkingConfiguration"),
        ({"Ethernet2": {}}, "NetworkingConfiguration.Ethernet2"),
        ({"Ethernet0": {}}, "NetworkingConfiguration.Ethernet0.ConnectionType"),
        (
            {"Ethernet0": {"ConnectionType": "PPPOE"}},
            "NetworkingConfiguration.Ethernet0.ConnectionType",
        ),
        (
            {"Ethernet0": {"ConnectionType": "STATIC_IP"}},
            "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo",
        ),
        (
            {
                "Ethernet1": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {**STATIC, "IpAddress": "256.1.1.1"},
                }
            },
            "NetworkingConfiguration.Ethernet1.StaticIpConnectionInfo.IpAddress",
        ),
        (
            {
                "Ethernet1": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {**STATIC, "IpAddress": "10.0.0.1:65536"},
                }
            },
            "NetworkingConfiguration.Ethernet1.StaticIpConnectionInfo.IpAddress",
        ),
        (
            {
                "Ethernet1": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {**STATIC, "IpAddress": "01.2.3.4"},
                }
            },
            "NetworkingConfiguration.Ethernet1.StaticIpConnectionInfo.IpAddress",
        ),
        (
            {
                "Ethernet0": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {**STATIC, "Mask": ""},
                }
            },
            "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Mask",
        ),
        (
            {
                "Ethernet0": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {**STATIC, "Dns": "8.8.8.8"},
                }
            },
            "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Dns",
        ),
        (
            {
                "Ethernet0": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {**STATIC, "Dns": [""]},
                }
            },
            "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Dns[0]",
        ),
        (
            {
                "Ethernet0": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {"IpAddress": "1.2.3.4"},
                }
            },
            "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Mask",
        ),
        ({"Ntp": {}}, "NetworkingConfiguration.Ntp.NtpServers"),
        ({"Ntp": {"NtpServers": ["a.pool.ntp.org"] * 6}}, "NetworkingConfiguration.Ntp.NtpServers"),
        ({"Ntp": {"NtpServers": ["Pool.NTP.org"]}}, "NetworkingConfiguration.Ntp.NtpServers[0]"),
        ({"Ntp": {"NtpServers": ["localhost"]}}, "NetworkingConfiguration.Ntp.NtpServers[0]"),
        ({"Ntp": {"NtpServers": [123]}}, "NetworkingConfiguration.Ntp.NtpServers[0]"),
        (
            {"Ntp": {"NtpServers": ["a" * 252 + ".org"]}},
            "NetworkingConfiguration.Ntp.NtpServers[0]",
        ),
    ],
)
def test_invalid_network_payload(payload: Any, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_network_payload(payload)
    assert caught.value.reason == "NETWORK_CONFIGURATION_INVALID"
    assert path in [f.path for f in caught.value.fields]


def test_every_problem_is_reported_at_once() -> None:
    payload = {
        "Ethernet0": {
            "ConnectionType": "STATIC_IP",
            "StaticIpConnectionInfo": {**STATIC, "IpAddress": "x"},
        },
        "Ethernet1": {"ConnectionType": "WIFI"},
        "Ntp": {"NtpServers": ["UPPER.example.com", "1.2.3.4:99999"]},
    }
    with pytest.raises(ValidationError) as caught:
        parse_network_payload(payload)
    assert [f.path for f in caught.value.fields] == [
        "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.IpAddress",
        "NetworkingConfiguration.Ethernet1.ConnectionType",
        "NetworkingConfiguration.Ntp.NtpServers[0]",
        "NetworkingConfiguration.Ntp.NtpServers[1]",
    ]


def test_valid_payload_round_trips() -> None:
    payload = {
        "Ethernet0": {"ConnectionType": "STATIC_IP", "StaticIpConnectionInfo": STATIC},
        "Ethernet1": {"ConnectionType": "DHCP"},
        "Ntp": {
            "NtpServers": ["0.pool.ntp.org", "time-1.example.co", "198.18.0.1:123", "0.0.0.0:1"]
        },
    }
    assert parse_network_payload(payload).to_json() == payload
    assert parse_network_payload({}).to_json() == {}
    assert parse_network_payload({"Ntp": {"NtpServers": []}}).Ntp is not None


@pytest.mark.parametrize(
    ("request_", "path"),
    [
        (DeviceRequest(name=""), "Name"),
        (DeviceRequest(name="a" * 256), "Name"),
        (DeviceRequest(name="dev 1"), "Name"),
        (DeviceRequest(name="dev/1"), "Name"),
        (DeviceRequest(name="d\u00e9v"), "Name"),
        (DeviceRequest(name="ok", description="two\nlines"), "Description"),
        (DeviceRequest(name="ok", description="x" * 256), "Description"),
        (DeviceRequest(name="ok", tags={"": "v"}), "Tags."),
        (DeviceRequest(name="ok", tags={"k" * 129: "v"}), "Tags." + "k" * 129),
        (DeviceRequest(name="ok", tags={"k": "v" * 257}), "Tags.k"),
        (DeviceRequest(name="ok", tags={f"k{i}": "v" for i in range(51)}), "Tags"),
        (DeviceRequest(name="ok", endpoint="broker"), "iotEndpoint"),
        (DeviceRequest(name="ok", endpoint="broker:70000"), "iotEndpoint"),
        (DeviceRequest(name="ok", template="bad template"), "provisioningTemplate"),
        (DeviceRequest(name="ok", template="t" * 37), "provisioningTemplate"),
        (DeviceRequest(name="ok", lifetime=dt.timedelta(seconds=301)), "lifetime"),
        (DeviceRequest(name="ok", lifetime=dt.timedelta(0)), "lifetime"),
    ],
)
def test_invalid_device_request(request_: DeviceRequest, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request(request_)
    assert caught.value.code == "ValidationException"
    assert path in [f.path for f in caught.value.fields]


def test_valid_device_request_limits() -> None:
    validate_request(DeviceRequest(name="a" * 233, description="", tags={"k" * 128: "v" * 256}))
    validate_request(DeviceRequest(name="A-b_9", tags={f"k{i}": "" for i in range(50)}))
