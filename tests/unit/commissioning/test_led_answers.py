"""Scan answers on the status LED (a Linux LED class directory on tmp_path)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.commissioning.notify import LedNotifier, ScanEvent, ThingEvent
from agent.status.led import SysfsLed


def _led(root: Path) -> Path:
    led = root / "ACT"
    led.mkdir(parents=True)
    (led / "trigger").write_text("none [mmc0] timer\n")
    (led / "brightness").write_text("0\n")
    (led / "max_brightness").write_text("1\n")
    (led / "delay_on").write_text("0\n")
    (led / "delay_off").write_text("0\n")
    return led


def test_answers_on_the_led(tmp_path: Path) -> None:
    led = _led(tmp_path)

    def state() -> tuple[str, str, str]:
        trigger, delay_on, brightness = (
            (led / a).read_text().strip() for a in ("trigger", "delay_on", "brightness")
        )
        return trigger, delay_on, brightness

    async def run() -> list[tuple[str, str, str]]:
        seen = []
        async with SysfsLed("ACT", root=tmp_path) as status:
            notifier = LedNotifier(status)
            notifier.scan_answered(
                ScanEvent("s", accepted=False, at=0.0, reason="QR_UNKNOWN_FORMAT")
            )
            seen.append(state())
            notifier.scan_answered(ScanEvent("s", accepted=True, at=0.0, format="zigbee-z"))
            seen.append(state())
            notifier.thing_changed(ThingEvent("t", "arn", "ACTIVATED", "DISCOVERED", 0.0))
            seen.append(state())
        return seen

    rejected, accepted, activated = asyncio.run(run())
    assert rejected[:2] == ("timer", "100")
    assert accepted[:2] == ("timer", "500")
    assert activated[0] == "none"
    assert activated[2] == "1"
