"""The directory source with real inotify: images written, moved in, deleted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.usb.base import StickEvent, StickInserted, StickRemoved
from agent.usb.directory import DirectoryStickSource
from agent.usb.errors import StickLinkError
from agent.usb.media import MediaSettings, StickMedia
from tests.unit.usb.conftest import make_image

NAME = "certificates-omni_demo-appliance-1.zip"


async def _next(source: DirectoryStickSource) -> StickEvent:
    async with asyncio.timeout(5.0):
        return await anext(source)


async def _nothing_waiting(source: DirectoryStickSource) -> bool:
    """True when no event is queued after the loop has handled what inotify had."""
    await asyncio.sleep(0.2)  # let inotify deliver anything pending; no event is expected
    return source._queue.empty()


def test_a_completely_written_image_is_a_stick_and_deleting_it_pulls_it(tmp_path: Path) -> None:
    watched = tmp_path / "sticks"
    image = make_image(tmp_path / "made.img", files={NAME: b"zip"})
    data = image.read_bytes()

    async def run() -> tuple[StickEvent, StickEvent]:
        async with DirectoryStickSource(watched, debounce_seconds=0) as source:
            target = watched / "stick.img"
            with target.open("wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                assert await _nothing_waiting(source), "a half-written image is no stick"
                fh.write(data[len(data) // 2 :])
            inserted = await _next(source)
            assert isinstance(inserted, StickInserted)
            async with StickMedia(
                inserted.stick.node, MediaSettings(), runtime_dir=tmp_path / "run"
            ) as media:
                assert (await media.fetch_archive()).device_name == "demo-appliance-1"
                await media.write_back(b"{}", b"log")  # closes the file after writing
            assert await _nothing_waiting(source), "the agent's own write-back is no new stick"
            target.unlink()
            return inserted, await _next(source)

    inserted, removed = asyncio.run(run())
    assert isinstance(inserted, StickInserted)
    assert inserted.stick.stick_id == "image:stick.img"
    assert inserted.stick.source == "directory"
    assert removed == StickRemoved("image:stick.img", watched / "stick.img")


def test_moving_in_and_out_and_images_present_at_start(tmp_path: Path) -> None:
    watched = tmp_path / "sticks"
    watched.mkdir()
    make_image(watched / "early.img")

    async def run() -> list[StickEvent]:
        events: list[StickEvent] = []
        async with DirectoryStickSource(watched, debounce_seconds=0) as source:
            events.append(await _next(source))  # early.img
            staged = make_image(watched / ".staged.img")  # hidden: ignored
            (watched / "notes.txt").write_text("not an image")
            assert await _nothing_waiting(source)
            staged.rename(watched / "moved.img")
            events.append(await _next(source))
            (watched / "moved.img").rename(tmp_path / "away.img")
            events.append(await _next(source))
            assert [s.stick_id for s in source.present()] == ["image:early.img"]
        return events

    early, moved, away = asyncio.run(run())
    assert isinstance(early, StickInserted)
    assert early.stick.node == watched / "early.img"
    assert isinstance(moved, StickInserted)
    assert moved.stick.stick_id == "image:moved.img"
    assert away == StickRemoved("image:moved.img", watched / "moved.img")


def test_a_quick_rewrite_is_debounced_into_one_stick(tmp_path: Path) -> None:
    watched = tmp_path / "sticks"

    async def run() -> list[StickEvent]:
        async with DirectoryStickSource(watched, debounce_seconds=0.3) as source:
            target = watched / "stick.img"
            for _ in range(3):  # e.g. mkfs.vfat, then mcopy, then mcopy
                target.write_bytes(os.urandom(4096))
            first = await _next(source)
            assert await _nothing_waiting(source)
            return [first]

    (event,) = asyncio.run(run())
    assert isinstance(event, StickInserted)


def test_a_symlink_is_reported_and_then_refused_by_the_reader(tmp_path: Path) -> None:
    watched = tmp_path / "sticks"
    image = make_image(tmp_path / "real.img", files={NAME: b"zip"})

    async def run() -> StickEvent:
        async with DirectoryStickSource(watched, debounce_seconds=0) as source:
            (watched / "link.img").symlink_to(image)
            event = await _next(source)
            assert isinstance(event, StickInserted)
            with pytest.raises(StickLinkError):
                async with StickMedia(
                    event.stick.node, MediaSettings(), runtime_dir=tmp_path / "run"
                ):
                    pass
            return event

    assert isinstance(asyncio.run(run()), StickInserted)


def test_the_watched_directory_going_away_ends_its_sticks(tmp_path: Path) -> None:
    watched = tmp_path / "sticks"
    watched.mkdir()
    make_image(watched / "a.img")

    async def run() -> StickEvent:
        async with DirectoryStickSource(watched, debounce_seconds=0) as source:
            await _next(source)
            watched.rename(tmp_path / "elsewhere")
            removed = await _next(source)
            assert source.present() == []
            return removed

    assert asyncio.run(run()) == StickRemoved("image:a.img", watched / "a.img")
