"""The directory stick source: FAT image files in a directory are sticks (inotify, no polling).

Each ``*.img`` file in ``[usb] directory`` is a stick: it is inserted once it is completely
written (``IN_CLOSE_WRITE`` after its writer closes it, or ``IN_MOVED_TO`` when it is moved
in whole, the recommended way: write ``x.img.part`` or a dot file, then rename it) and stays
for the debounce time; deleting or moving it away is the stick pulled. Images present when
the source starts are inserted first. Hidden files (``.name``) and other names are ignored.
A symbolic link is reported too, so the reader refuses it with its own reason
(``STICK_IS_LINK``) instead of the technician seeing nothing.

The image is read and written back by the same FAT reader as a block device; the agent's
own write-back closes the file after writing, which is not taken for a new insertion
(the stick is already present).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, Self

from asyncinotify import Event, Inotify, Mask

from agent.usb.base import QueueSource, Stick

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".img"
_MASK = (
    Mask.CLOSE_WRITE
    | Mask.MOVED_TO
    | Mask.MOVED_FROM
    | Mask.DELETE
    | Mask.CREATE
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)


def is_image_name(name: str) -> bool:
    """True for a name the source treats as a stick (``*.img``, not hidden)."""
    return name.lower().endswith(IMAGE_SUFFIX) and not name.startswith(".")


def image_stick(path: Path) -> Stick:
    """The stick an image file stands for."""
    return Stick(
        stick_id=f"image:{path.name}",
        node=path,
        source="directory",
        devpath=str(path),
        properties=MappingProxyType({"DEVNAME": str(path)}),
    )


class DirectoryStickSource(QueueSource):
    """Sticks from image files appearing in and vanishing from one directory."""

    kind: Literal["directory"] = "directory"

    def __init__(self, directory: Path, *, debounce_seconds: float = 0.5) -> None:
        super().__init__(debounce_seconds)
        self.directory = directory
        self._inotify: Inotify | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._enter()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        inotify = Inotify()
        try:
            inotify.add_watch(self.directory, _MASK)
        except OSError:
            inotify.close()
            self._exit()
            raise
        self._inotify = inotify
        for path in sorted(self.directory.iterdir()):
            if is_image_name(path.name) and (path.is_symlink() or path.is_file()):
                self._debouncer.inserted(image_stick(path))
        self._task = asyncio.create_task(self._watch(inotify), name="usb-directory-events")
        log.info("watching %s for stick images (*.img)", self.directory)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching; the iteration ends."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._entered:
            self._exit()

    async def _watch(self, inotify: Inotify) -> None:
        while True:
            event = await inotify.get()
            if event.mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
                log.error("the stick directory %s went away; no more images", self.directory)
                for stick in self.present():
                    self._debouncer.removed_devpath(stick.devpath)
                return
            self.handle(event)

    def handle(self, event: Event) -> None:
        """Turn one inotify event into an insertion or a removal."""
        if event.name is None or not is_image_name(str(event.name)):
            return
        path = self.directory / event.name
        mask = event.mask
        if mask & (Mask.DELETE | Mask.MOVED_FROM):
            self._debouncer.removed_devpath(str(path))
        elif mask & Mask.MOVED_TO:
            self._debouncer.removed_devpath(str(path))  # a replaced image is a new stick
            self._debouncer.inserted(image_stick(path))
        elif mask & Mask.CLOSE_WRITE or (mask & Mask.CREATE and path.is_symlink()):
            self._debouncer.inserted(image_stick(path))
