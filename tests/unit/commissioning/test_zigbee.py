"""Zigbee backend against a real zigpy ControllerApplication whose radio methods are stubs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import zigpy.types as t

from agent.commissioning.backend import Commissioner
from agent.commissioning.errors import RadioUnavailableError
from agent.commissioning.notify import RecordingNotifier
from agent.commissioning.things import ACTIVATED, FAILED, ManagedThings
from agent.commissioning.zigbee import ZigbeeBackend, controller_class, open_zigbee
from agent.config import CommissioningSection
from agent.store import Store
from tests.helpers.zigbee import StubRadioApp, make_app, nwk

CODE = "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD%G$M:S1-R%M:10F2"
IEEE = t.EUI64.convert("01:02:03:04:05:06:07:08")
LINK_KEY = "F7DB70E028B72B3F67D90A54F6916FF4"


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
