"""Run a block of test code inside a network namespace (this thread only).

``setns(2)`` moves the calling thread; sockets it opens and processes it starts stay in the
namespace afterwards, so a fixture can start servers (``registry serve``, mosquitto) that
listen on the namespace's own loopback and then come back. Python 3.11 has no
``os.setns``: the call goes through libc.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextmanager
def inside(name: str) -> Iterator[None]:
    """The calling thread in namespace ``name`` (``ip netns add``) for the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
