"""Zigbee backend against a real zigpy ControllerApplication whose radio methods are stubs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import zigpy.application
import zigpy.types as t
from zigpy.zdo import types as zdo_t

from agent.commissioning.backend import Commissioner
from agent.commissioning.errors import RadioUnavailableError
from agent.commissioning.notify import RecordingNotifier
from agent.commissioning.things import ACTIVATED, FAILED, ManagedThings
from agent.commissioning.zigbee import ZigbeeBackend, controller_class, open_zigbee
from agent.config import CommissioningSection
from agent.store import Store

CODE = "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD%G$M:S1-R%M:10F2"
IEEE = t.EUI64.convert("01:02:03:04:05:06:07:08")
LINK_KEY = "F7DB70E028B72B3F67D90A54F6916FF4"


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


def run(scenario: Callable[[StubRadioApp], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await scenario(make_app())
        for task in [x for x in asyncio.all_tasks() if x is not asyncio.current_task()]:
            task.cancel()

    asyncio.run(main())


@pytest.fixture
def things(tmp_path: Path) -> ManagedThings:
    return ManagedThings(
        Store(tmp_path / "s.db"),
        region="us-east-1",
        account="123456789012",
        notifier=RecordingNotifier(),
    )


def _create(things: ManagedThings) -> str:
    body = {
        "AuthenticationMaterial": CODE,
        "AuthenticationMaterialType": "ZIGBEE_QR_BAR_CODE",
        "Role": "DEVICE",
    }
    thing_id: str = things.create(body).body["Id"]
    return thing_id


def test_join_takes_the_thing_to_activated(things: ManagedThings) -> None:
    thing_id = _create(things)

    async def scenario(app: StubRadioApp) -> None:
        backend = ZigbeeBackend(app, permit_seconds=60)
        commissioner = Commissioner(things, [backend], join_timeout=10)
        task = asyncio.create_task(commissioner.commission(thing_id))
        await asyncio.wait_for(app.permit_started.wait(), 5)
        node, key, time_s = app.permits[0]
        assert node == IEEE
        assert bytes(key).hex().upper() == LINK_KEY
        assert time_s == 60
        # Another device joining is not ours.
        app.handle_join(nwk(0x1111), t.EUI64.convert("11:11:11:11:11:11:11:11"), nwk(0))
        await asyncio.sleep(0.01)
        assert things.describe(thing_id)["ProvisioningStatus"] == "PRE_ASSOCIATED"
        app.handle_join(nwk(0x2345), IEEE, nwk(0))
        await asyncio.sleep(0.01)
        assert things.describe(thing_id)["ProvisioningStatus"] == "DISCOVERED"
        app.device_initialized(app.get_device(ieee=IEEE))
        assert await asyncio.wait_for(task, 5) == ACTIVATED

    run(scenario)
    assert things.describe(thing_id)["ProvisioningStatus"] == ACTIVATED


def test_timeout_fails_with_reason(things: ManagedThings) -> None:
    thing_id = _create(things)

    async def scenario(app: StubRadioApp) -> None:
        backend = ZigbeeBackend(app, permit_seconds=60)
        commissioner = Commissioner(things, [backend], join_timeout=0.2)
        assert await commissioner.commission(thing_id) == FAILED
        assert app.permits  # the window was opened, then given up

    run(scenario)
    described = things.describe(thing_id)
    assert described["FailureReason"] == "JOIN_TIMEOUT"
    assert "0.2 s" in described["FailureMessage"]


def test_radio_without_install_codes(things: ManagedThings) -> None:
    thing_id = _create(things)

    async def scenario(app: StubRadioApp) -> None:
        app.install_codes_supported = False
        commissioner = Commissioner(things, [ZigbeeBackend(app)], join_timeout=5)
        assert await commissioner.commission(thing_id) == FAILED

    run(scenario)
    assert things.describe(thing_id)["FailureReason"] == "INSTALL_CODES_UNSUPPORTED"


def test_no_backend_configured(things: ManagedThings) -> None:
    thing_id = _create(things)
    result = asyncio.run(Commissioner(things, [], join_timeout=1).commission(thing_id))
    assert result == FAILED
    assert things.describe(thing_id)["FailureReason"] == "BACKEND_NOT_CONFIGURED"


def test_radio_library_missing_is_clear() -> None:
    with pytest.raises(RadioUnavailableError) as info:
        controller_class("deconz")
    assert info.value.reason == "RADIO_LIBRARY_MISSING"
    assert "zigpy_deconz" in info.value.message
    with pytest.raises(RadioUnavailableError) as info:
        asyncio.run(open_zigbee(CommissioningSection()))
    assert info.value.reason == "BACKEND_NOT_CONFIGURED"
