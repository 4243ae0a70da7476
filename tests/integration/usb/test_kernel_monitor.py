"""The real pyudev netlink monitor, kernel source (no udevd here), on the event loop.

Attaching a loop device makes the kernel send block uevents; they must reach the source's
decision through ``loop.add_reader`` and be refused (a loop device is not on USB).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.usb.qualify import Decision
from agent.usb.udev import DeviceView, UdevStickSource
from tests.helpers.env import need_binary, need_root
from tests.unit.usb.conftest import make_image


class RecordingSource(UdevStickSource):
    """The production source, noting every decision it takes."""

    def __init__(self) -> None:
        super().__init__(source="kernel", debounce_seconds=0)
        self.seen: list[tuple[str, str, Decision | None]] = []
        self.changed = asyncio.Event()

    async def handle(self, device: DeviceView) -> Decision | None:
        decision = await super().handle(device)
        self.seen.append((device.action, device.properties.get("DEVNAME", ""), decision))
        self.changed.set()
        return decision


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, argv
    return out.decode().strip()


def test_kernel_uevents_arrive_and_a_loop_device_is_not_a_stick(tmp_path: Path) -> None:
    need_root("attaching a loop device needs root")
    losetup = need_binary("losetup")
    image = make_image(tmp_path / "stick.img", fat=12)

    async def run() -> tuple[str, list[tuple[str, str, Decision | None]], list[str]]:
        async with RecordingSource() as source:
            assert source.kind == "kernel"
            attached = await _run(losetup, "-f", "--show", "-r", str(image))
            try:
                async with asyncio.timeout(10):
                    while not any(
                        name == attached and action == "change" for action, name, _ in source.seen
                    ):
                        source.changed.clear()
                        await source.changed.wait()
            finally:
                await _run(losetup, "-d", attached)
            return attached, source.seen, [s.stick_id for s in source.present()]

    attached, seen, present = asyncio.run(run())
    assert attached.startswith("/dev/loop")
    ours = [d for action, name, d in seen if name == attached and action == "change"]
    assert ours
    assert all(d is not None and not d.accepted and d.why == "not on USB" for d in ours)
    assert present == []
