"""Whether the appliance's clock can be believed.

A box fresh from the shelf may boot with its clock at 1970 or at the date its image was
built. The archive's certificate lives 5 minutes, so checking it against a wrong clock
would refuse every genuine archive. The clock is *trusted* when it is past the agent's
build-time floor and the kernel says it is synchronised (``adjtimex`` does not report
``TIME_ERROR``), or when an operator gives the time explicitly (``--now``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
from dataclasses import dataclass
from typing import Protocol

_TIME_ERROR = 5


class Clock(Protocol):
    """A source of the current time that knows whether it is trustworthy."""

    def now(self) -> dt.datetime:
        """The current time (UTC)."""
        ...

    def trusted(self) -> bool:
        """True when :meth:`now` may be used to check certificate validity windows."""
        ...


@dataclass(frozen=True, slots=True)
class FixedClock:
    """A clock set by an operator (``--now``) or a test; trusted unless told otherwise."""

    at: dt.datetime
    is_trusted: bool = True

    def now(self) -> dt.datetime:
        """The fixed time."""
        return self.at

    def trusted(self) -> bool:
        """As configured."""
        return self.is_trusted


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: we only read the return value, but the kernel
    # writes the whole structure, so it must be full size (this over-allocates safely).
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 256)]


def kernel_clock_synchronised() -> bool | None:
    """The kernel's NTP state: True synced, False unsynced, None if it cannot be read."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


@dataclass(frozen=True, slots=True)
class SystemClock:
    """The system clock, trusted past ``floor`` and (optionally) once synchronised."""

    floor: dt.datetime
    require_sync: bool = True

    def now(self) -> dt.datetime:
        """The system time (UTC)."""
        return dt.datetime.now(dt.UTC)

    def trusted(self) -> bool:
        """Past the build-time floor, and synchronised when that is required."""
        if self.now() < self.floor:
            return False
        if not self.require_sync:
            return True
        return kernel_clock_synchronised() is True
