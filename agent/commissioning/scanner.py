"""QR scanner input: a serial scanner (CDC-ACM, ttyUSB) or stdin, one scan per line.

:class:`SerialScanSource` reads the port with pyserial in a thread and splits on the
configured terminator; :class:`StdinScanSource` reads lines. :class:`ScanHandler` answers
each scan at once: the code is parsed, a managed thing is created and its commissioning
started, and the answer (accepted with the code's format and device, or rejected with a
reason) goes to the notifier (journal, MQTT) before the next scan is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import serial

from agent.commissioning.backend import Commissioner
from agent.commissioning.errors import RadioUnavailableError, UnsupportedDeviceError
from agent.commissioning.notify import CommissioningNotifier, ScanEvent
from agent.commissioning.qr import QrPayload, parse
from agent.commissioning.qr.zwave import dsk_mask
from agent.commissioning.things import ManagedThings
from agent.errors import AgentError

_log = logging.getLogger(__name__)

TERMINATORS = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "tab": b"\t"}
#: A scan longer than this without a terminator is dropped (a QR code holds 4296 chars).
MAX_SCAN_BYTES = 8192


class ScanSource(Protocol):
    """Yields one string per scan."""

    name: str

    def scans(self) -> AsyncIterator[str]:
        """The scans, as they arrive, until the source closes."""


def split_scans(buffer: bytearray, terminator: bytes) -> list[bytes]:
    r"""Take every complete scan out of ``buffer`` (what remains is a partial scan).

    With ``\\r`` or ``\\n`` as terminator the other line-break byte next to it is ignored,
    so scanners configured for CR+LF also work.
    """
    out: list[bytes] = []
    while (end := buffer.find(terminator)) >= 0:
        chunk = bytes(buffer[:end]).strip(b"\r\n")
        del buffer[: end + len(terminator)]
        if chunk:
            out.append(chunk)
    if len(buffer) > MAX_SCAN_BYTES:
        _log.warning("dropping %d bytes without a terminator", len(buffer))
        buffer.clear()
    return out


class SerialScanSource:
    """A serial QR scanner, read in a thread with pyserial."""

    def __init__(self, port: str, *, baudrate: int = 9600, terminator: str = "cr") -> None:
        self.name = port
        self._port = port
        self._baudrate = baudrate
        self._terminator = TERMINATORS[terminator]
        self._stop = threading.Event()

    def close(self) -> None:
        """Stop reading (the reader thread ends within its read timeout)."""
        self._stop.set()

    async def scans(self) -> AsyncIterator[str]:
        """Scans from the port, decoded as UTF-8 (undecodable bytes become U+FFFD).

        Raises:
            RadioUnavailableError: the port cannot be opened.
        """
        try:
            port = serial.Serial(self._port, baudrate=self._baudrate, timeout=0.2)
        except (serial.SerialException, OSError) as exc:
            raise RadioUnavailableError(
                f"cannot open the QR scanner on {self._port}: {exc}",
                reason="SCANNER_UNAVAILABLE",
            ) from exc
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def reader() -> None:
            buffer = bytearray()
            try:
                while not self._stop.is_set():
                    data = port.read(port.in_waiting or 1)
                    if not data:
                        continue
                    buffer += data
                    for chunk in split_scans(buffer, self._terminator):
                        text = chunk.decode("utf-8", errors="replace")
                        loop.call_soon_threadsafe(queue.put_nowait, text)
            except (serial.SerialException, OSError):
                _log.exception("the QR scanner on %s failed", self._port)
            finally:
                port.close()
                loop.call_soon_threadsafe(queue.put_nowait, None)

        thread = threading.Thread(target=reader, name=f"scanner-{self._port}", daemon=True)
        thread.start()
        try:
            while (scan := await queue.get()) is not None:
                yield scan
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join, 2)


class StdinScanSource:
    """Scans typed or piped on standard input (keyboard-wedge scanners), one per line."""

    name = "stdin"

    async def scans(self) -> AsyncIterator[str]:
        """Lines from stdin until end of file."""
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip():
                yield line.rstrip("\r\n")


class ScanHandler:
    """Answers each scan: parse, create the managed thing, start commissioning, notify."""

    def __init__(
        self,
        things: ManagedThings,
        notifier: CommissioningNotifier,
        *,
        commissioner: Commissioner | None = None,
        repair_zigbee_crc: bool = False,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._things = things
        self._notifier = notifier
        self._commissioner = commissioner
        self._repair = repair_zigbee_crc
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def _answer(self, event: ScanEvent) -> ScanEvent:
        self._notifier.scan_answered(event)
        return event

    def handle(self, source: str, text: str) -> ScanEvent:
        """Answer one scan (never raises for a bad code: the answer says why)."""
        at = self._clock().timestamp()
        try:
            payload = parse(text, repair_zigbee_crc=self._repair)
            if payload.authentication_material_type is None:
                raise UnsupportedDeviceError(
                    f"{payload.format} devices are not supported yet",
                    reason="FORMAT_NOT_SUPPORTED",
                )
            if self._commissioner is not None:
                self._commissioner.backend_for(payload)
            created = self._things.create(
                {
                    "AuthenticationMaterial": payload.source,
                    "AuthenticationMaterialType": payload.authentication_material_type,
                    "Role": "DEVICE",
                }
            )
        except AgentError as exc:
            return self._answer(
                ScanEvent(source, accepted=False, at=at, reason=exc.reason, message=exc.message)
            )
        thing_id = created.body["Id"]
        if self._commissioner is not None:
            self._commissioner.start(thing_id)
        return self._answer(
            ScanEvent(
                source,
                accepted=True,
                at=at,
                format=payload.format,
                device=_device(payload),
                thing_id=thing_id,
            )
        )

    async def run(self, source: ScanSource) -> None:
        """Answer every scan of ``source`` until it ends."""
        async for text in source.scans():
            self.handle(source.name, text)
        if self._commissioner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._commissioner.drain()


def _device(payload: QrPayload) -> str | None:
    """A non-secret name of the device behind a code."""
    f = payload.fields
    for key in ("ieee", "ssid", "pkhash"):
        if key in f:
            return f"{key}={f[key]}"
    if "dsk" in f:
        return f"dsk={dsk_mask(str(f['dsk']))}"
    return None
