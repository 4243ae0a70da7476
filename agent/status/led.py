"""The status LED, through the Linux LED class (``/sys/class/leds/<name>``).

Patterns: slow blink while a run works (500 ms on, 500 ms off), steady on for success, fast
blink for failure (100 ms on, 100 ms off). Blinking uses the kernel's ``timer`` trigger
(``delay_on``/``delay_off``); an LED without it blinks from an asyncio task writing
``brightness``. The LED's trigger, brightness and delays are read when the agent takes it,
and written back ``restore_after_seconds`` after a success or failure is shown, and when the
agent lets go of it. The LED is a courtesy: a write that fails is logged once and never
fails a run. A board without an LED gets :class:`NullLed`, which does nothing.

Use::

    async with open_led(board.profile.led, config.status) as led:
        led.show(LedPattern.WORKING)
        ...
        led.show(LedPattern.SUCCESS)      # restored after restore_after_seconds
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from agent.config import StatusSection
from agent.netconf.boards import LED_NAME, LedSpec

log = logging.getLogger(__name__)


class LedPattern(enum.Enum):
    """What the LED says."""

    WORKING = "working"
    SUCCESS = "success"
    FAILURE = "failure"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Blink:
    """A blink rhythm in milliseconds."""

    on_ms: int
    off_ms: int


SLOW = Blink(500, 500)
FAST = Blink(100, 100)


@dataclass(frozen=True, slots=True)
class LedState:
    """What the LED showed before the agent took it."""

    trigger: str
    brightness: int
    delay_on: int | None = None
    delay_off: int | None = None


def parse_triggers(text: str) -> tuple[str, set[str]]:
    """The current trigger (the bracketed one) and every available one of a ``trigger`` file."""
    current = "none"
    available: set[str] = set()
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            word = word[1:-1]  # noqa: PLW2901 - the bracket marks the current trigger
            current = word
        available.add(word)
    return current, available


class StatusLed(Protocol):
    """What the run needs from the LED."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def show(self, pattern: LedPattern) -> None:
        """Show ``pattern`` (success and failure are restored after a while)."""
        ...

    def restore(self) -> None:
        """Give the LED its previous state back now."""
        ...


class NullLed:
    """The LED of a board without one."""

    pattern: LedPattern | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def show(self, pattern: LedPattern) -> None:
        """Remember the pattern only."""
        self.pattern = pattern

    def restore(self) -> None:
        """Nothing to restore."""
        self.pattern = None


class SysfsLed:
    """One LED of the Linux LED class; see the module docstring."""

    def __init__(
        self, name: str, *, root: Path = Path("/sys/class/leds"), restore_after: float = 600.0
    ) -> None:
        if not LED_NAME.match(name) or name in {".", ".."}:
            raise ValueError(f"not an LED class name: {name!r}")
        self.name = name
        self.path = root / name
        self.restore_after = restore_after
        self.pattern: LedPattern | None = None
        self.saved: LedState | None = None
        self._triggers: set[str] = set()
        self._max = 1
        self._blinker: asyncio.Task[None] | None = None
        self._restore_timer: asyncio.TimerHandle | None = None
        self._warned = False

    async def __aenter__(self) -> Self:
        current, self._triggers = parse_triggers(self._read("trigger") or "")
        self._max = _as_int(self._read("max_brightness"), 1) or 1
        timer = current == "timer"
        self.saved = LedState(
            trigger=current,
            brightness=_as_int(self._read("brightness"), 0) or 0,
            delay_on=_as_int(self._read("delay_on"), None) if timer else None,
            delay_off=_as_int(self._read("delay_off"), None) if timer else None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def _read(self, attr: str) -> str | None:
        try:
            return (self.path / attr).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None

    def _write(self, attr: str, value: str | int) -> bool:
        try:
            (self.path / attr).write_text(f"{value}\n", encoding="ascii")
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("LED %s: cannot write %s: %s", self.name, attr, exc.strerror)
            return False
        return True

    def show(self, pattern: LedPattern) -> None:
        """Show ``pattern``; SUCCESS and FAILURE are restored after ``restore_after`` s."""
        self._stop_blinking()
        self._cancel_restore()
        self.pattern = pattern
        if pattern is LedPattern.WORKING:
            self._blink(SLOW)
        elif pattern is LedPattern.FAILURE:
            self._blink(FAST)
        elif pattern is LedPattern.SUCCESS:
            self._write("trigger", "none")
            self._write("brightness", self._max)
        else:
            self._write("trigger", "none")
            self._write("brightness", 0)
        if pattern in (LedPattern.SUCCESS, LedPattern.FAILURE):
            loop = asyncio.get_running_loop()
            self._restore_timer = loop.call_later(self.restore_after, self.restore)

    def _blink(self, rhythm: Blink) -> None:
        if (
            "timer" in self._triggers
            and self._write("trigger", "timer")
            and (self.path / "delay_on").exists()
        ):
            self._write("delay_on", rhythm.on_ms)
            self._write("delay_off", rhythm.off_ms)
            return
        self._write("trigger", "none")
        self._blinker = asyncio.get_running_loop().create_task(
            self._software_blink(rhythm), name=f"led-{self.name}-blink"
        )

    async def _software_blink(self, rhythm: Blink) -> None:
        while True:
            self._write("brightness", self._max)
            await asyncio.sleep(rhythm.on_ms / 1000)
            self._write("brightness", 0)
            await asyncio.sleep(rhythm.off_ms / 1000)

    @property
    def software_blinking(self) -> bool:
        """True while the LED blinks from a task (no ``timer`` trigger)."""
        return self._blinker is not None and not self._blinker.done()

    def _stop_blinking(self) -> None:
        if self._blinker is not None:
            self._blinker.cancel()
            self._blinker = None

    def _cancel_restore(self) -> None:
        if self._restore_timer is not None:
            self._restore_timer.cancel()
            self._restore_timer = None

    def restore(self) -> None:
        """Write the saved trigger, brightness and delays back now."""
        self._stop_blinking()
        self._cancel_restore()
        self.pattern = None
        saved = self.saved
        if saved is None:
            return
        self._write("trigger", saved.trigger)
        if saved.trigger == "timer":
            if saved.delay_on is not None:
                self._write("delay_on", saved.delay_on)
            if saved.delay_off is not None:
                self._write("delay_off", saved.delay_off)
        elif saved.trigger == "none":
            self._write("brightness", saved.brightness)


def _as_int(text: str | None, default: int | None) -> int | None:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def open_led(spec: LedSpec, status: StatusSection) -> SysfsLed | NullLed:
    """The board's LED (``[led] name`` in the profile), or a :class:`NullLed` without one."""
    if not spec.name:
        return NullLed()
    return SysfsLed(
        spec.name, root=status.led_class_root, restore_after=status.restore_after_seconds
    )
