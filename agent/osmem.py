"""Give memory a finished run no longer needs back to the system (glibc ``malloc_trim``).

A provisioning run parses certificates, a zip, JSON and MQTT traffic; once it ends, the
objects are freed but glibc keeps the pages in its arenas, so an idle service would keep the
peak of its last run resident. :func:`release` collects garbage and asks glibc to return
free pages. Elsewhere (another libc) it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

_log = logging.getLogger(__name__)
_trim: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]
_looked_up = False


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    global _trim, _looked_up  # noqa: PLW0603 - looked up once
    if not _looked_up:
        _looked_up = True
        name = ctypes.util.find_library("c")
        try:
            _trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        except OSError:
            _trim = None
    return _trim


def release() -> None:
    """Collect garbage, then return free heap pages to the system where glibc allows."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
