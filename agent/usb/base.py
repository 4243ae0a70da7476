"""The stick event interface: what a source reports and how insertions are debounced.

A source is an async context manager and an async iterator of :data:`StickEvent`::

    async with open_source(config.usb, board) as source:   # agent.usb.factory
        async for event in source:
            match event:
                case StickInserted(stick=stick):
                    ...   # StickMedia(stick.node, ...) reads it
                case StickRemoved(stick_id=stick_id):
                    ...   # the stick of a running run was pulled

Entering the source starts watching and reports the sticks already present as insertions
first. Insertions are debounced (a stick must stay for ``debounce_seconds`` before it is
reported; one that comes and goes inside that time is never reported); removals are reported
at once, and only for sticks whose insertion was reported. A source is reusable but not
re-entrant, and ``aclose`` (or leaving the ``async with``) ends the iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, Protocol, Self

SourceKind = Literal["udev", "kernel", "directory"]


@dataclass(frozen=True, slots=True)
class Stick:
    """A qualifying stick: where to read it and what is known about it."""

    #: Stable id: the same stick (and partition) gets the same id when plugged in again.
    stick_id: str
    #: Block device node (``/dev/sdb1``) or image file the FAT reader opens.
    node: Path
    source: SourceKind
    #: sysfs path of the block device, or the image file's path (removals are matched on it).
    devpath: str
    #: Negotiated speed of the stick's USB device in Mb/s (None for an image file).
    speed_mbps: float | None = None
    #: sysfs path of the stick's USB device (the port it is plugged into).
    port: str = ""
    #: The uevent properties that matter (``DEVNAME``, ``DEVTYPE``, ``ID_FS_TYPE``, ...).
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class StickInserted:
    """A stick arrived (or was present when the source started)."""

    stick: Stick


@dataclass(frozen=True, slots=True)
class StickRemoved:
    """A reported stick is gone (pulled, or its image file deleted)."""

    stick_id: str
    node: Path


StickEvent = StickInserted | StickRemoved


class StickSource(Protocol):
    """What the daemon needs from a stick source (udev, kernel or directory)."""

    @property
    def kind(self) -> SourceKind:
        """Which events it listens to (``udev`` may have fallen back to ``kernel``)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> StickEvent: ...

    def present(self) -> list[Stick]:
        """The sticks reported inserted and not removed."""
        ...


class Debouncer:
    """Holds back insertions for ``delay`` seconds; passes removals of reported sticks.

    Timers are the event loop's (``call_later``); nothing polls.
    """

    def __init__(self, delay: float, emit: Callable[[StickEvent], None]) -> None:
        self.delay = delay
        self._emit = emit
        self._pending: dict[str, tuple[Stick, asyncio.TimerHandle]] = {}
        self._reported: dict[str, Stick] = {}

    def inserted(self, stick: Stick) -> None:
        """A stick showed up (again); it is reported once it stays ``delay`` seconds."""
        if stick.stick_id in self._reported:
            return
        pending = self._pending.pop(stick.stick_id, None)
        if pending is not None:
            pending[1].cancel()
        if self.delay <= 0:
            self._report(stick)
            return
        handle = asyncio.get_running_loop().call_later(self.delay, self._report, stick)
        self._pending[stick.stick_id] = (stick, handle)

    def removed_devpath(self, devpath: str) -> None:
        """The device at ``devpath`` went away: cancel or report its removal."""
        for stick_id, (stick, handle) in list(self._pending.items()):
            if stick.devpath == devpath:
                handle.cancel()
                del self._pending[stick_id]
        for stick_id, stick in list(self._reported.items()):
            if stick.devpath == devpath:
                del self._reported[stick_id]
                self._emit(StickRemoved(stick_id, stick.node))

    def _report(self, stick: Stick) -> None:
        self._pending.pop(stick.stick_id, None)
        self._reported[stick.stick_id] = stick
        self._emit(StickInserted(stick))

    def present(self) -> list[Stick]:
        """The sticks reported and not removed."""
        return list(self._reported.values())

    def cancel(self) -> None:
        """Drop every pending insertion (the source is stopping)."""
        for _stick, handle in self._pending.values():
            handle.cancel()
        self._pending.clear()


class QueueSource:
    """Common plumbing of the sources: an event queue, the debouncer, iteration, closing."""

    kind: SourceKind

    def __init__(self, debounce_seconds: float) -> None:
        self._queue: asyncio.Queue[StickEvent | None] = asyncio.Queue()
        self._debouncer = Debouncer(debounce_seconds, self._queue.put_nowait)
        self._entered = False

    def _enter(self) -> None:
        if self._entered:
            raise RuntimeError(f"the {self.kind} stick source is already running")
        self._entered = True
        self._queue = asyncio.Queue()
        self._debouncer = Debouncer(self._debouncer.delay, self._queue.put_nowait)

    def _exit(self) -> None:
        self._debouncer.cancel()
        self._queue.put_nowait(None)
        self._entered = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StickEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def present(self) -> list[Stick]:
        """The sticks reported inserted and not removed."""
        return self._debouncer.present()
