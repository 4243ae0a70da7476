"""Network payloads (the seed's NetworkPayload) for tests."""

from __future__ import annotations

from typing import Any


def static_ip(
    ip: str = "198.18.1.10",
    mask: str = "255.255.255.0",
    gateway: str = "198.18.1.1",
    dns: Any = None,
) -> dict[str, Any]:
    """One port's ``STATIC_IP`` settings; ``dns`` is given as is (default one server)."""
    return {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": ip,
            "Mask": mask,
            "DefaultGateway": gateway,
            "Dns": dns if dns is not None else ["198.18.1.53"],
        },
    }
