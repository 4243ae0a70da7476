"""Installing a credential set made on the appliance (the permanent certificate and key).

Same layout and switch as :mod:`agent.archive.install`: the set is written completely under
``credentials/sets/`` (each file fsynced, the directory fsynced and renamed into place),
then ``previous`` and ``current`` are swapped atomically (a symlink each).
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from pathlib import Path

from agent.archive.install import current_credentials
from agent.errors import StateError
from agent.fsutil import ensure_dir, fsync_dir, write_synced


def _swap_link(directory: Path, name: str, target: str) -> None:
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    tmp.symlink_to(target)
    tmp.replace(directory / name)


def install_set(state_dir: Path, label: str, files: dict[str, tuple[bytes, int]]) -> Path:
    """Write ``files`` (name → (data, mode)) as a new set and make it current; return it."""
    credentials = ensure_dir(state_dir / "credentials")
    sets = ensure_dir(credentials / "sets")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{label}"
    staging = sets / f".staging-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        for file_name, (data, mode) in files.items():
            write_synced(staging / file_name, data, mode)
        fsync_dir(staging)
        target = sets / name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        fsync_dir(sets)
        previous = current_credentials(state_dir)
        if previous is not None and previous.parent == sets:
            _swap_link(credentials, "previous", f"sets/{previous.name}")
        _swap_link(credentials, "current", f"sets/{name}")
        fsync_dir(credentials)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StateError(
            f"cannot write the credentials under {sets}: {exc.strerror}",
            reason="CREDENTIALS_WRITE_FAILED",
        ) from exc
    return target
