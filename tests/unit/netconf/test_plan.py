from __future__ import annotations

import ipaddress

import pytest

from agent.archive.network import parse_network_payload
from agent.netconf.plan import (
    PRIMARY_METRIC,
    SECONDARY_METRIC,
    NetworkPlan,
    NtpServer,
    build_plan,
    parse_mask,
    plan_from_json,
)
from tests.helpers.network import static_ip

GENERIC = {"Ethernet0": "eth0", "Ethernet1": "eth1"}


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("255.255.255.0", 24),
        ("24", 24),
        ("/24", 24),
        ("255.255.255.252", 30),
        ("255.255.255.255", 32),
        ("128.0.0.0", 1),
        ("255.255.254.0", 23),
    ],
)
def test_mask_forms(text: str, prefix: int) -> None:
    assert parse_mask(text) == prefix


@pytest.mark.parametrize("text", ["0", "33", "024", "0.0.0.0", "255.0.255.0", "x", "", "-1"])  # noqa: S104
def test_bad_masks(text: str) -> None:
    assert parse_mask(text) is None


def test_only_ethernet0_default_route_wins() -> None:
    plan = plan_from_json(
        {
            "Ethernet0": static_ip("198.18.1.10", "255.255.255.0", "198.18.1.1", ["198.18.1.53"]),
            "Ethernet1": static_ip("198.18.2.10", "/24", "198.18.2.1", ["2001:db8::53"]),
        },
        GENERIC,
    )
    first, second = plan.ports
    assert (first.ifname, first.metric) == ("eth0", PRIMARY_METRIC)
    assert (second.ifname, second.metric) == ("eth1", SECONDARY_METRIC)
    assert first.metric < second.metric
    assert first.address == ipaddress.IPv4Interface("198.18.1.10/24")
    assert second.dns == (ipaddress.IPv6Address("2001:db8::53"),)


def test_dhcp_ethernet1_alone_keeps_secondary_metric() -> None:
    plan = plan_from_json({"Ethernet1": {"ConnectionType": "DHCP"}}, GENERIC)
    assert [(p.port, p.mode, p.metric) for p in plan.ports] == [
        ("Ethernet1", "dhcp", SECONDARY_METRIC)
    ]


def test_point_to_point_prefixes_accept_every_address() -> None:
    plan = plan_from_json({"Ethernet0": static_ip("198.18.1.0", "31", "198.18.1.1", [])}, GENERIC)
    assert str(plan.ports[0].address) == "198.18.1.0/31"


def test_wrapped_documents_and_ntp_ports() -> None:
    body = {
        "NetworkingConfiguration": {"Ntp": {"NtpServers": ["pool.ntp.org", "198.18.1.123:11123"]}}
    }
    plan = plan_from_json(body, GENERIC)
    assert plan.ports == ()
    assert plan.ntp == (NtpServer("pool.ntp.org"), NtpServer("198.18.1.123", 11123))
    assert (
        plan_from_json({"networkingConfiguration": body["NetworkingConfiguration"]}, GENERIC)
        == plan
    )


def test_plan_round_trips_through_json() -> None:
    payload = parse_network_payload(
        {
            "Ethernet0": static_ip("198.18.1.10", "24", "198.18.1.1", ["198.18.1.53"]),
            "Ethernet1": {"ConnectionType": "DHCP"},
            "Ntp": {"NtpServers": ["198.18.1.123:11123"]},
        }
    )
    plan = build_plan(payload, GENERIC)
    assert NetworkPlan.from_json(plan.to_json()) == plan
