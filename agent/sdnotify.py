"""The systemd notification protocol (sd_notify), in the few lines it takes.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to a
``Type=notify`` service; the service sends newline-separated ``KEY=VALUE`` datagrams:
``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``, ``RELOADING=1``. Without the
variable every call does nothing, so the agent runs the same outside systemd.
``WATCHDOG_USEC`` (with ``WATCHDOG_PID`` naming this process, when set) asks for a
``WATCHDOG=1`` at least that often.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

_log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._socket: socket.socket | None = None
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self._address is not None

    def notify(self, **fields: str) -> None:
        """Send one datagram; ``notify(READY="1", STATUS="waiting for a stick")``."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self._address)
        except OSError as exc:  # the manager went away: nothing to tell, never fatal
            _log.warning("cannot notify the service manager: %s", exc)

    def ready(self, status: str) -> None:
        """``READY=1`` with a status line."""
        self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        """A new status line (``systemctl status`` shows it)."""
        self.notify(STATUS=status)

    def watchdog(self) -> None:
        """Keep the watchdog from firing."""
        self.notify(WATCHDOG="1")

    def stopping(self) -> None:
        """The service is shutting down."""
        self.notify(STOPPING="1", STATUS="stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (a wrapper that exec'ed us did not)
    return int(usec) / 1_000_000
