"""Installing a credential set made on the appliance (the permanent certificate and key).

The same layout and switch as :mod:`agent.archive.install`, through its helpers: the set is
written completely under ``credentials/sets/`` (each file fsynced, the directory fsynced and
renamed into place), then ``previous`` and ``current`` are swapped atomically (a symlink
each).
"""

from __future__ import annotations

from pathlib import Path

from agent.archive.install import (
    activate_set,
    current_credentials,
    new_set_name,
    prune_sets,
    stage_set,
)
from agent.errors import StateError
from agent.fsutil import ensure_dir


def install_set(state_dir: Path, label: str, files: dict[str, tuple[bytes, int]]) -> Path:
    """Write ``files`` (name → (data, mode)) as a new set and make it current; return it."""
    credentials = ensure_dir(state_dir / "credentials")
    sets = ensure_dir(credentials / "sets")
    name = stage_set(
        sets, new_set_name(label), [(n, data, mode) for n, (data, mode) in files.items()]
    )
    previous = current_credentials(state_dir)
    try:
        activate_set(credentials, name, previous)
    except OSError as exc:
        raise StateError(
            f"cannot switch the credentials under {credentials}: {exc.strerror}",
            reason="CREDENTIALS_WRITE_FAILED",
        ) from exc
    # a set a crash left staged but never switched to holds a key nothing uses
    prune_sets(sets, keep={name, previous.name if previous else ""})
    return sets / name
