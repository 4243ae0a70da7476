"""The commissioner: backend choice, progress to the lifecycle, failures recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.commissioning.backend import Commissioner, JoinProgress
from agent.commissioning.errors import CommissioningTimeoutError
from agent.commissioning.notify import RecordingNotifier
from agent.commissioning.qr import QrPayload
from agent.commissioning.things import ManagedThings
from agent.store import Store

ZWAVE = "900132782003515253545541424344453132333435212223242500100435301537022065520001000000300578"


class ScriptedBackend:
    """A backend whose device behaves as scripted (the radio side is what is under test
    elsewhere; here the commissioner's bookkeeping is)."""

    name = "scripted"

    def __init__(self, *, low_security: bool = False, fail: bool = False) -> None:
        self.low_security = low_security
        self.fail = fail
        self.seen: list[QrPayload] = []

    def accepts(self, payload: QrPayload) -> bool:
        return payload.authentication_material_type == "ZWAVE_QR_BAR_CODE"

    async def commission(
        self, payload: QrPayload, progress: JoinProgress, *, within: float
    ) -> None:
        self.seen.append(payload)
        await asyncio.sleep(0)
        if self.fail:
            raise CommissioningTimeoutError(f"no join within {within:g} s", reason="JOIN_TIMEOUT")
        progress.discovered({"nodeId": 2, "lowSecurity": self.low_security})
        progress.activated({"nodeId": 2})


def _setup(tmp_path: Path) -> tuple[ManagedThings, RecordingNotifier, str]:
    notifier = RecordingNotifier()
    things = ManagedThings(
        Store(tmp_path / "s.db"), region="us-east-1", account="1", notifier=notifier
    )
    body: dict[str, Any] = {
        "AuthenticationMaterial": ZWAVE,
        "AuthenticationMaterialType": "ZWAVE_QR_BAR_CODE",
        "Role": "DEVICE",
    }
    return things, notifier, things.create(body).body["Id"]


def test_low_security_inclusion_is_flagged(tmp_path: Path) -> None:
    things, notifier, thing_id = _setup(tmp_path)
    backend = ScriptedBackend(low_security=True)
    result = asyncio.run(Commissioner(things, [backend], join_timeout=5).commission(thing_id))
    assert result == "ACTIVATED"
    assert backend.seen[0].fields["dsk"].startswith("51525")
    discovered = [e for e in notifier.things if e.status == "DISCOVERED"]
    assert discovered[0].reason == "LOW_SECURITY_INCLUSION"


def test_background_failure_recorded(tmp_path: Path) -> None:
    things, notifier, thing_id = _setup(tmp_path)
    commissioner = Commissioner(things, [ScriptedBackend(fail=True)], join_timeout=5)

    async def scenario() -> None:
        commissioner.start(thing_id)
        await commissioner.drain()

    asyncio.run(scenario())
    assert [e.status for e in notifier.things] == ["UNASSOCIATED", "PRE_ASSOCIATED", "FAILED"]
    assert things.describe(thing_id)["FailureReason"] == "JOIN_TIMEOUT"
