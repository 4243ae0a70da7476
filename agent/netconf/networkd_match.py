"""Which systemd-networkd ``.network`` file manages a link, the way networkd decides it.

networkd reads ``*.network`` from ``/etc/systemd/network``, ``/run/systemd/network``,
``/usr/local/lib/systemd/network`` and ``/usr/lib/systemd/network``; a file in an earlier
directory hides a file of the same name in a later one. The files are taken in lexical order
of their names, and the first whose ``[Match]`` section matches the link configures it.

Understood ``[Match]`` keys: ``Name=``, ``OriginalName=`` (shell globs, space-separated,
``!`` negates the list), ``MACAddress=`` / ``PermanentMACAddress=`` and ``Type=`` (``ether``
for the veth and Ethernet ports the agent manages). A file with a key this module does not
evaluate (``Driver=``, ``Path=``, ``Host=``, ...) is assumed to match: guessing "managed" only
makes a revert leave the link to networkd, while guessing "unmanaged" would fight it.
An empty ``[Match]`` matches every link.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

EVALUATED = {"Name", "OriginalName", "MACAddress", "PermanentMACAddress", "Type"}


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """What a ``[Match]`` section is evaluated against."""

    ifname: str
    mac: str
    kind: str = "ether"


def network_files(dirs: Sequence[Path]) -> list[Path]:
    """Every effective ``.network`` file in networkd's order (earlier directories win)."""
    chosen: dict[str, Path] = {}
    for directory in dirs:
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.suffix == ".network" and path.name not in chosen:
                chosen[path.name] = path
    return [chosen[name] for name in sorted(chosen)]


def match_section(text: str) -> dict[str, list[str]]:
    """The ``[Match]`` keys of a ``.network`` file, each with its values in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section != "Match" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            out.pop(key, None)  # an empty assignment resets the list
        else:
            out.setdefault(key, []).extend(value.split())
    return out


def _globs(patterns: Iterable[str], value: str) -> bool:
    words = list(patterns)
    negate = bool(words) and words[0].startswith("!")
    if negate:
        words = [words[0][1:], *words[1:]]
    hit = any(fnmatch.fnmatchcase(value, w) for w in words if w)
    return hit != negate


def matches(keys: dict[str, list[str]], link: LinkFacts) -> bool:
    """Whether a ``[Match]`` section selects ``link``."""
    for key, values in keys.items():
        if key not in EVALUATED:
            continue  # not evaluated here: assume it matches (see the module doc)
        if key in {"Name", "OriginalName"} and not _globs(values, link.ifname):
            return False
        if key in {"MACAddress", "PermanentMACAddress"} and link.mac.lower() not in {
            v.lower() for v in values
        }:
            return False
        if key == "Type" and not _globs(values, link.kind):
            return False
    return True


def managing_file(
    link: LinkFacts, dirs: Sequence[Path], *, ignore: Iterable[str] = ()
) -> Path | None:
    """The file networkd configures ``link`` from, or None when no file matches it."""
    skipped = set(ignore)
    for path in network_files(dirs):
        if path.name in skipped:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        if matches(match_section(text), link):
            return path
    return None
