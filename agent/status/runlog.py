"""``edge-agent/provisioning.log``: a run's log lines, collected and scrubbed of secrets.

:class:`RunLog` is a logging handler attached for the duration of one run (``capture``). It
keeps every record of the ``agent`` loggers at INFO and above as one line (UTC time, level,
logger, message; an exception as its type and message, never a traceback), bounded in
lines and bytes. Every line goes through :func:`redact` first: PEM blocks, ``key=value``
pairs whose key names a secret (password, token, private key, PSK, DSK, link key, ...),
and long base64 or hex runs are replaced by ``[REDACTED]``. :func:`find_secrets` is the
independent check the writer runs on the finished text: a line it still flags is dropped.

Use::

    with RunLog.capture() as run_log:
        ...                           # the run logs as usual
    await media.write_back(result.to_json(), run_log.as_bytes())
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator

REDACTED = "[REDACTED]"
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*-----.*?(?:-----END [A-Z0-9 ]*-----|\Z)", re.DOTALL)
_PEM_MARK = re.compile(r"-----(?:BEGIN|END) [A-Z0-9 ]*-----")
# The names of secrets, to find and hide their values.
_HIDDEN_NAMES = (
    r"private[_ -]?key|passw(?:or)?d|passphrase|secret|token|api[_ -]?key|psk|dsk"
    r"|link[_ -]?key|network[_ -]?key|s2[_ -]?key|credential"
)
_SECRET_VALUE = re.compile(
    rf"(?i)(\"?\b(?:{_HIDDEN_NAMES})\b\"?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;}}]+)"
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_HEX = re.compile(r"\b[0-9A-Fa-f]{32,}\b")
_DSK = re.compile(r"\b\d{5}(?:-\d{5}){7}\b")


def _looks_random(token: str) -> bool:
    return (
        any(c.isdigit() for c in token)
        and any(c.isupper() for c in token)
        and any(c.islower() for c in token)
    )


def redact(text: str) -> str:
    """``text`` with PEM blocks, secret values and key-looking runs replaced."""
    text = _PEM.sub(REDACTED, text)
    text = _SECRET_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _DSK.sub(REDACTED, text)
    text = _HEX.sub(REDACTED, text)
    return _BASE64.sub(lambda m: REDACTED if _looks_random(m.group(0)) else m.group(0), text)


def find_secrets(text: str) -> list[str]:
    """What in ``text`` still looks like a secret (empty when clean)."""
    found: list[str] = []
    if _PEM_MARK.search(text):
        found.append("PEM block")
    found.extend(
        "value of " + repr(m.group(1).strip(' =:"'))
        for m in _SECRET_VALUE.finditer(text)
        if m.group(2) != REDACTED
    )
    if _DSK.search(text):
        found.append("DSK")
    if _HEX.search(text):
        found.append("hex key material")
    if any(_looks_random(m.group(0)) for m in _BASE64.finditer(text)):
        found.append("base64 key material")
    return found


class RunLog(logging.Handler):
    """The lines of one run; see the module docstring."""

    def __init__(self, *, max_lines: int = 2000, max_bytes: int = 256 * 1024) -> None:
        super().__init__(level=logging.INFO)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.lines: list[str] = []
        self._bytes = 0
        self.dropped = 0

    @classmethod
    @contextlib.contextmanager
    def capture(cls, logger: str = "agent", **kwargs: int) -> Iterator[RunLog]:
        """Collect ``logger``'s records (INFO and up) while the block runs."""
        handler = cls(**kwargs)
        target = logging.getLogger(logger)
        old_level = target.level
        if target.getEffectiveLevel() > logging.INFO:
            target.setLevel(logging.INFO)
        target.addHandler(handler)
        try:
            yield handler
        finally:
            target.removeHandler(handler)
            target.setLevel(old_level)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one redacted line for ``record``."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message} ({type(exc).__name__}: {exc})"
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = redact(f"{stamp} {record.levelname} {record.name}: {message}")
        line = line.replace("\r", " ").replace("\n", "\n    ")
        if find_secrets(line):
            line = f"{stamp} {record.levelname} {record.name}: {REDACTED} (line withheld)"
        size = len(line.encode()) + 1
        if len(self.lines) >= self.max_lines or self._bytes + size > self.max_bytes:
            self.dropped += 1
            return
        self.lines.append(line)
        self._bytes += size

    def text(self) -> str:
        """The collected lines, with a note of how many were dropped past the limits."""
        out = "\n".join(self.lines)
        if self.dropped:
            out += f"\n[{self.dropped} more lines not kept]"
        return out + "\n" if out else ""

    def as_bytes(self) -> bytes:
        """UTF-8 text for ``edge-agent/provisioning.log``."""
        return self.text().encode()
