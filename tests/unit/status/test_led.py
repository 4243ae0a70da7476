"""The status LED on a fake LED class tree in tmp (the class root is configurable)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.config import StatusSection
from agent.netconf.boards import LedSpec
from agent.status.led import LedPattern, NullLed, SysfsLed, open_led, parse_triggers


def _led(root: Path, *, timer: bool = True, trigger: str = "mmc0", brightness: int = 0) -> Path:
    led = root / "ACT"
    led.mkdir(parents=True)
    names = ["none", "mmc0", "heartbeat", *(["timer"] if timer else [])]
    listing = " ".join(f"[{n}]" if n == trigger else n for n in names)
    (led / "trigger").write_text(listing + "\n")
    (led / "brightness").write_text(f"{brightness}\n")
    (led / "max_brightness").write_text("255\n")
    if timer:  # the kernel makes these when the timer trigger is set
        (led / "delay_on").write_text("0\n")
        (led / "delay_off").write_text("0\n")
    return led


def _read(led: Path, attr: str) -> str:
    return (led / attr).read_text().strip()


def test_patterns_with_the_timer_trigger_and_restore_after_a_while(tmp_path: Path) -> None:
    led = _led(tmp_path)

    async def run() -> list[tuple[str, ...]]:
        states: list[tuple[str, ...]] = []
        async with SysfsLed("ACT", root=tmp_path, restore_after=0.2) as status:
            status.show(LedPattern.WORKING)
            states.append((_read(led, "trigger"), _read(led, "delay_on"), _read(led, "delay_off")))
            status.show(LedPattern.FAILURE)
            states.append((_read(led, "trigger"), _read(led, "delay_on"), _read(led, "delay_off")))
            status.show(LedPattern.SUCCESS)
            states.append((_read(led, "trigger"), _read(led, "brightness")))
            assert not status.software_blinking
            await asyncio.sleep(0.5)  # past restore_after: the previous state is back
            states.append((_read(led, "trigger"),))
            assert status.pattern is None
        return states

    working, failure, success, restored = asyncio.run(run())
    assert working == ("timer", "500", "500")
    assert failure == ("timer", "100", "100")
    assert success == ("none", "255")
    assert restored == ("mmc0",)


def test_software_blinking_without_the_timer_trigger(tmp_path: Path) -> None:
    led = _led(tmp_path, timer=False, trigger="none", brightness=7)

    async def run() -> set[str]:
        seen: set[str] = set()
        async with SysfsLed("ACT", root=tmp_path, restore_after=60) as status:
            status.show(LedPattern.FAILURE)  # 100 ms on, 100 ms off
            assert status.software_blinking
            async with asyncio.timeout(5):
                while not {"0", "255"} <= seen:
                    seen.add(_read(led, "brightness"))
                    await asyncio.sleep(0.02)
            assert _read(led, "trigger") == "none"
        after: SysfsLed = status  # a new name: the property is read again
        assert not after.software_blinking
        return seen

    assert {"0", "255"} <= asyncio.run(run())
    assert _read(led, "brightness") == "7", "the previous brightness is restored on exit"


def test_a_timer_trigger_is_restored_with_its_delays(tmp_path: Path) -> None:
    led = _led(tmp_path, trigger="timer")
    (led / "delay_on").write_text("30\n")
    (led / "delay_off").write_text("970\n")

    async def run() -> None:
        async with SysfsLed("ACT", root=tmp_path) as status:
            status.show(LedPattern.SUCCESS)
            assert _read(led, "trigger") == "none"

    asyncio.run(run())
    assert (_read(led, "trigger"), _read(led, "delay_on"), _read(led, "delay_off")) == (
        "timer",
        "30",
        "970",
    )


def test_working_cancels_a_pending_restore(tmp_path: Path) -> None:
    led = _led(tmp_path)

    async def run() -> str:
        async with SysfsLed("ACT", root=tmp_path, restore_after=0.1) as status:
            status.show(LedPattern.SUCCESS)
            status.show(LedPattern.WORKING)  # a new run starts
            await asyncio.sleep(0.3)
            return _read(led, "trigger")

    assert asyncio.run(run()) == "timer"


def test_a_write_that_fails_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    led = _led(tmp_path)
    (led / "brightness").unlink()
    (led / "brightness").mkdir()  # writing it fails with EISDIR

    async def run() -> None:
        async with SysfsLed("ACT", root=tmp_path) as status:
            status.show(LedPattern.SUCCESS)
            status.show(LedPattern.OFF)

    with caplog.at_level(logging.WARNING, logger="agent.status.led"):
        asyncio.run(run())
    warnings = [r for r in caplog.records if r.name == "agent.status.led"]
    assert len(warnings) == 1
    assert "brightness" in warnings[0].getMessage()


def test_a_missing_led_directory_does_not_fail(tmp_path: Path) -> None:
    async def run() -> None:
        async with SysfsLed("absent", root=tmp_path) as status:
            status.show(LedPattern.WORKING)

    asyncio.run(run())
    assert not (tmp_path / "absent").exists()


def test_open_led_from_the_board_profile(tmp_path: Path) -> None:
    status = StatusSection(led_class_root=tmp_path, restore_after_seconds=5)
    assert isinstance(open_led(LedSpec(name=""), status), NullLed)
    led = open_led(LedSpec(name="ACT"), status)
    assert isinstance(led, SysfsLed)
    assert led.path == tmp_path / "ACT"
    assert led.restore_after == 5
    with pytest.raises(ValueError, match="LED class name"):
        SysfsLed("../../etc", root=tmp_path)


def test_parse_triggers() -> None:
    assert parse_triggers("none rc-feedback [mmc0] timer") == (
        "mmc0",
        {"none", "rc-feedback", "mmc0", "timer"},
    )
    assert parse_triggers("") == ("none", set())


def test_the_board_profile_checks_the_led_name_and_usb_port(tmp_path: Path) -> None:
    from agent.netconf.boards import BoardProfileError, load_board

    board = tmp_path / "b.toml"
    board.write_text('[led]\nname = "../x"\n[usb]\nport_path = "/dev/bus/usb"\n')
    with pytest.raises(BoardProfileError) as info:
        load_board(str(board))
    assert {f.path for f in info.value.fields} == {"led.name", "usb.port_path"}
    board.write_text('[led]\nname = "ACT"\ndefault_trigger = "mmc0"\n')
    assert load_board(str(board)).profile.led.name == "ACT"
