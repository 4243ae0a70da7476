"""The serial scanner path through a real pty pair (socat), as a USB scanner presents it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commissioning.errors import RadioUnavailableError
from agent.commissioning.notify import FanOutNotifier, JournalNotifier, RecordingNotifier
from agent.commissioning.scanner import ScanHandler, SerialScanSource
from agent.commissioning.things import ManagedThings
from agent.store import Store
from tests.helpers.env import need_binary

ZIGBEE = "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD%G$M:S1-R%M:10F2"
BAD_CRC = "000D6FFFFED4163B|52797BF4A5084DAA8E1712B61741CA024052"
MATTER = "MT:U9VJ0OMV172PX813210"
ZWAVE = "900132782003515253545541424344453132333435212223242500100435301537022065520001000000300578"


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    socat = need_binary("socat")
    scanner, host = tmp_path / "ttyScanner", tmp_path / "ttyHost"
    proc = subprocess.Popen(
        [
            socat,
            f"pty,raw,echo=0,link={scanner}",
            f"pty,raw,echo=0,link={host}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not (scanner.exists() and host.exists()):
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            pytest.fail("socat did not create the pty pair")
        time.sleep(0.02)
    try:
        yield str(scanner), str(host)
    finally:
        proc.terminate()
        proc.wait(5)


def test_scans_are_answered_at_once(
    pty_pair: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scanner_end, host_end = pty_pair
    recorder = RecordingNotifier()
    notifier = FanOutNotifier(JournalNotifier(), recorder)
    things = ManagedThings(
        Store(tmp_path / "s.db"), region="us-east-1", account="1", notifier=notifier
    )
    handler = ScanHandler(things, notifier)
    source = SerialScanSource(host_end, baudrate=115200, terminator="cr")

    async def scenario() -> None:
        task = asyncio.create_task(handler.run(source))
        await asyncio.sleep(0.3)  # the reader thread has opened the port
        fd = os.open(scanner_end, os.O_WRONLY | os.O_NOCTTY)
        try:
            # One scan split over two writes, then three in one write, CR+LF tolerated.
            os.write(fd, ZIGBEE[:20].encode())
            await asyncio.sleep(0.05)
            os.write(fd, (ZIGBEE[20:] + "\r").encode())
            os.write(fd, f"{BAD_CRC}\r\n{MATTER}\r{ZWAVE}\r".encode())
            for _ in range(100):
                if len(recorder.scans) == 4:
                    break
                await asyncio.sleep(0.05)
        finally:
            os.close(fd)
            source.close()
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    answers = [(s.accepted, s.format or s.reason) for s in recorder.scans]
    assert answers == [
        (True, "zigbee-z"),
        (False, "QR_CHECKSUM_MISMATCH"),
        (False, "FORMAT_NOT_SUPPORTED"),
        (True, "zwave-smartstart"),
    ]
    assert recorder.scans[0].device == "ieee=01:02:03:04:05:06:07:08"
    assert [t["Format"] for t in things.list()] == ["zigbee-z", "zwave-smartstart"]
    assert "rejected: QR_CHECKSUM_MISMATCH" in caplog.text
    for secret in ("0102030405060708090A0B0C", "52797BF4A5084DAA", "51525-35455", "49910688"):
        assert secret not in caplog.text
        assert all(secret not in str(s.to_dict()) for s in recorder.scans)


def test_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async for _ in SerialScanSource(str(tmp_path / "nope")).scans():
            pass

    with pytest.raises(RadioUnavailableError) as info:
        asyncio.run(scenario())
    assert info.value.reason == "SCANNER_UNAVAILABLE"
