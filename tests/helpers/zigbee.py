"""A zigpy ControllerApplication whose radio methods are stubs (as zigpy's own tests do)."""

from __future__ import annotations

import asyncio
from typing import Any

import zigpy.application
import zigpy.types as t
from zigpy.zdo import types as zdo_t


def nwk(value: int) -> t.NWK:
    return t.NWK(value)  # type: ignore[no-untyped-call] # zigpy's int types have untyped __new__


class StubRadioApp(zigpy.application.ControllerApplication):
    """zigpy's application logic unchanged; only the radio methods are stubbed."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.permits: list[tuple[t.EUI64, t.KeyData, int]] = []
        self.permit_started = asyncio.Event()
        self.install_codes_supported = True

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    async def start_network(self) -> None:
        return None

    async def force_remove(self, dev: Any) -> None:  # noqa: ARG002
        return None

    async def add_endpoint(self, descriptor: Any) -> None:  # noqa: ARG002
        return None

    async def permit_ncp(self, time_s: int = 60) -> None:  # noqa: ARG002
        return None

    async def permit_with_link_key(
        self, node: t.EUI64, link_key: t.KeyData, time_s: int = 60
    ) -> None:
        if not self.install_codes_supported:
            raise NotImplementedError
        self.permits.append((node, link_key, time_s))
        self.permit_started.set()
        await asyncio.sleep(time_s)  # like zigpy-znp: blocks for the whole window

    async def send_packet(self, packet: Any) -> None:  # noqa: ARG002
        return None

    async def load_network_info(self, *, load_devices: bool = False) -> None:  # noqa: ARG002
        return None

    async def write_network_info(self, *, network_info: Any, node_info: Any) -> None:  # noqa: ARG002
        return None

    async def reset_network_info(self) -> None:
        return None


def make_app() -> StubRadioApp:
    """Built inside the running loop, as zigpy expects."""
    stub = StubRadioApp(
        {"database_path": None, "device": {"path": "/dev/null"}, "ota": {"enabled": False}}
    )
    stub.state.node_info.nwk = nwk(0x0000)
    stub.state.node_info.ieee = t.EUI64.convert("aa:11:22:bb:33:44:be:ef")
    stub.state.node_info.logical_type = zdo_t.LogicalType.Coordinator
    return stub


def create_body(material: str, **changes: Any) -> dict[str, Any]:
    """A CreateManagedThing body for the Zigbee code ``material`` (a change to None drops)."""
    out: dict[str, Any] = {
        "AuthenticationMaterial": material,
        "AuthenticationMaterialType": "ZIGBEE_QR_BAR_CODE",
        "Role": "DEVICE",
        **changes,
    }
    return {k: v for k, v in out.items() if v is not None}
