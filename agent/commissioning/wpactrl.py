"""Adapter: wpa_supplicant's control interface (a Unix datagram socket) for asyncio.

One :class:`WpaCtrl` is one client socket: :meth:`request` sends a command and returns its
reply (unsolicited ``<N>EVENT`` lines are set aside); after :meth:`attach` events are queued
and :meth:`wait_event` returns the first one with a given prefix. Commands are never logged
with their arguments (they carry passphrases).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import tempfile
from collections import deque
from pathlib import Path
from typing import Self

from agent.commissioning.errors import RadioError, RadioUnavailableError

_log = logging.getLogger(__name__)
_counter = itertools.count()
_MAX_REPLY = 65536


class WpaCtrl:
    """An asyncio client of one wpa_supplicant control socket."""

    def __init__(self, ctrl_path: str, *, timeout: float = 5.0) -> None:
        self.ctrl_path = ctrl_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._local: Path | None = None
        self._events: deque[str] = deque()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Bind a private client socket and connect it to wpa_supplicant.

        Raises:
            RadioUnavailableError: wpa_supplicant's socket is not there or refuses.
        """
        local = Path(tempfile.gettempdir()) / f"edge-agent-wpa-{os.getpid()}-{next(_counter)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                local.unlink()
            sock.bind(str(local))
            sock.connect(self.ctrl_path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                local.unlink()
            raise RadioUnavailableError(
                f"cannot reach wpa_supplicant at {self.ctrl_path}: {exc.strerror}",
                reason="WPA_SUPPLICANT_UNAVAILABLE",
            ) from exc
        sock.setblocking(False)  # noqa: FBT003 - the socket API
        self._sock, self._local = sock, local

    def close(self) -> None:
        """Close the socket and remove its path."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._local is not None:
            with contextlib.suppress(FileNotFoundError):
                self._local.unlink()
            self._local = None

    async def _recv(self, within: float) -> str:
        if self._sock is None:
            raise RadioUnavailableError("the wpa_supplicant socket is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                data = await loop.sock_recv(self._sock, _MAX_REPLY)
        except TimeoutError:
            raise RadioError(
                "wpa_supplicant did not answer in time", reason="WPA_SUPPLICANT_TIMEOUT"
            ) from None
        return data.decode("utf-8", errors="replace")

    async def request(self, command: str) -> str:
        """Send one command; return its reply without the trailing newline.

        Raises:
            RadioError: no reply in time.
        """
        if self._sock is None:
            raise RadioUnavailableError("the wpa_supplicant socket is closed")
        async with self._lock:
            _log.debug("wpa_supplicant <- %s", command.split(" ", 1)[0])
            await asyncio.get_running_loop().sock_sendall(self._sock, command.encode("utf-8"))
            while True:
                reply = await self._recv(self.timeout)
                if reply.startswith("<"):
                    self._events.append(reply)
                    continue
                return reply.rstrip("\n")

    async def attach(self) -> None:
        """Receive events on this socket.

        Raises:
            RadioError: wpa_supplicant refused.
        """
        if await self.request("ATTACH") != "OK":
            raise RadioError("wpa_supplicant refused ATTACH", reason="WPA_SUPPLICANT_FAILED")

    async def wait_event(self, prefixes: tuple[str, ...], within: float) -> str | None:
        """The first queued or arriving event starting with one of ``prefixes`` (no ``<N>``).

        Returns ``None`` when none arrives within ``within`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            while self._events:
                event = self._events.popleft().split(">", 1)[-1]
                if event.startswith(prefixes):
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                message = await self._recv(remaining)
            except RadioError:
                return None
            if message.startswith("<"):
                self._events.append(message)
