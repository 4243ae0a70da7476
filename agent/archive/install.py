"""Installing an archive's credentials atomically, and the single-use ledger.

Layout under the state directory (every directory 0700, keys 0600)::

    agent.db                      the state store; table archive_ledger
    credentials/
        current -> sets/<id>      the credential set in force (a symlink, swapped atomically)
        previous -> sets/<id>     the set it replaced, kept for rollback
        sets/<id>/certificate.pem  private.key  root-ca.pem
                  manifest.json  manifest.sig  signer.pem   (exactly as signed, re-checkable)

A new set is written completely (each file fsynced, the directory fsynced and renamed into
place) before ``current`` is swapped, and the swap happens inside the ledger transaction:
a process killed at any point leaves either the previous set in force and the archive
unrecorded, or the new set in force (recorded once the transaction commits).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.archive.clock import Clock
from agent.archive.manifest import (
    CERTIFICATE,
    MANIFEST,
    PRIVATE_KEY,
    ROOT_CA,
    SIGNATURE,
    SIGNER,
)
from agent.archive.verify import Policy, VerifiedArchive, verify_archive
from agent.errors import ArchiveReusedError, StateError
from agent.fsutil import PRIVATE_FILE, PUBLIC_FILE, ensure_dir, fsync_dir, write_synced
from agent.store import Store

LEDGER_MIGRATIONS = (
    """
    CREATE TABLE archive_ledger (
        fingerprint    TEXT PRIMARY KEY,
        device_name    TEXT NOT NULL,
        device_id      TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        credential_set TEXT NOT NULL,
        time_check     TEXT NOT NULL,
        installed_at   TEXT NOT NULL
    );
    """,
)

DB_NAME = "agent.db"
_log = logging.getLogger(__name__)
_STAGING_PREFIX = ".staging-"


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What ``archive install`` did."""

    device_name: str
    fingerprint: str
    credential_dir: Path
    previous_dir: Path | None
    time_check: str

    def to_json(self) -> dict[str, Any]:
        """The JSON printed by the CLI."""
        return {
            "deviceName": self.device_name,
            "certificateFingerprint": self.fingerprint,
            "credentialDir": str(self.credential_dir),
            "previousCredentialDir": str(self.previous_dir) if self.previous_dir else None,
            "timeCheck": self.time_check,
            "status": "INSTALLED",
        }


def open_store(state_dir: Path) -> Store:
    """Open (creating if needed) the state store with the ledger table."""
    ensure_dir(state_dir)
    store = Store(state_dir / DB_NAME)
    store.migrate("archive", LEDGER_MIGRATIONS)
    return store


def ledger_has(store: Store, fingerprint: str) -> bool:
    """True when a certificate with this fingerprint was installed before."""
    row = store.db.execute(
        "SELECT 1 FROM archive_ledger WHERE fingerprint = ?", (fingerprint,)
    ).fetchone()
    return row is not None


def current_credentials(state_dir: Path) -> Path | None:
    """The credential set in force, or None before the first install."""
    link = state_dir / "credentials" / "current"
    if not link.is_symlink():
        return None
    return link.resolve()


def _reused(verified: VerifiedArchive) -> ArchiveReusedError:
    return ArchiveReusedError(
        f"the archive for {verified.manifest.device_name!r} was already used on this appliance; "
        "archives are single-use, make a new one",
        reason="ARCHIVE_ALREADY_USED",
    )


def _swap_link(directory: Path, name: str, target: str) -> None:
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    tmp.symlink_to(target)
    tmp.replace(directory / name)


def new_set_name(label: str) -> str:
    """``<UTC stamp>-<label>``: sets sort by the time they were made."""
    return f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{label}"


def activate_set(credentials: Path, set_name: str, previous: Path | None) -> None:
    """Make ``sets/<set_name>`` current and ``previous`` the previous set (atomic links).

    ``previous`` (from :func:`current_credentials`) is resolved: it is compared with the
    resolved sets directory, as the state directory itself may be a symlink (systemd
    ``DynamicUser=``).
    """
    if previous is not None and previous.parent == (credentials / "sets").resolve():
        _swap_link(credentials, "previous", f"sets/{previous.name}")
    _swap_link(credentials, "current", f"sets/{set_name}")
    fsync_dir(credentials)


def install_archive(
    verified: VerifiedArchive,
    state_dir: Path,
    *,
    on_step: Callable[[str], None] | None = None,
) -> InstallResult:
    """Install the credentials of a verified archive; refuse an archive used before.

    ``on_step`` is called after each durable step (``wrote <file>`` while staging, then
    ``staged``, ``activated`` and ``recorded``).
    """
    step = on_step or (lambda _name: None)
    with open_store(state_dir) as store:
        if ledger_has(store, verified.fingerprint):
            _log.warning("refused a second use of the archive of %s", verified.manifest.device_name)
            raise _reused(verified)
        credentials = ensure_dir(state_dir / "credentials")
        sets = ensure_dir(credentials / "sets")
        _remove_stale_staging(sets)
        set_name = _stage(verified, sets, step)
        step("staged")
        previous = current_credentials(state_dir)
        with store.transaction() as db:
            if ledger_has(store, verified.fingerprint):
                shutil.rmtree(sets / set_name)
                raise _reused(verified)
            db.execute(
                "INSERT INTO archive_ledger(fingerprint, device_name, device_id, archive_sha256,"
                " credential_set, time_check, installed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    verified.fingerprint,
                    verified.manifest.device_name,
                    verified.manifest.device_id,
                    hashlib.sha256(verified.contents.raw).hexdigest(),
                    set_name,
                    verified.time_check,
                    dt.datetime.now(dt.UTC).isoformat(),
                ),
            )
            activate_set(credentials, set_name, previous)
            step("activated")
        step("recorded")
        _log.info(
            "installed credentials of device %s (certificate %s, time check %s)",
            verified.manifest.device_name,
            verified.fingerprint[:16],
            verified.time_check,
        )
        prune_sets(sets, keep={set_name, previous.name if previous else ""})
    return InstallResult(
        device_name=verified.manifest.device_name,
        fingerprint=verified.fingerprint,
        credential_dir=sets / set_name,
        previous_dir=previous,
        time_check=verified.time_check,
    )


def discard_unrecorded(state_dir: Path, fingerprint: str) -> list[str]:
    """Undo what an install of ``fingerprint`` that never reached the ledger left behind.

    A process killed inside the ledger transaction may have switched ``current`` to the new
    set already (the transaction itself is rolled back by SQLite): ``current`` goes back to
    the set it replaced (``previous``, or no set at all on a first install) and the
    unrecorded set is removed, as is a set staged but never switched to. Does nothing once
    the ledger records the archive. Returns what it did, for the log.
    """
    with open_store(state_dir) as store:
        if ledger_has(store, fingerprint):
            return []
    credentials = state_dir / "credentials"
    sets = credentials / "sets"
    if not sets.is_dir():
        return []
    label = f"-{fingerprint[:16]}"
    done: list[str] = []
    current = current_credentials(state_dir)
    if current is not None and current.name.endswith(label):
        previous = credentials / "previous"
        if previous.is_symlink() and previous.resolve() != current:
            _swap_link(credentials, "current", f"sets/{previous.resolve().name}")
            done.append(f"current set back to {previous.resolve().name}")
        else:
            (credentials / "current").unlink()
            done.append("current set removed (it was never recorded)")
        fsync_dir(credentials)
    for entry in sorted(sets.iterdir()):
        if entry.name.endswith(label) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"unrecorded set {entry.name} removed")
    _remove_stale_staging(sets)
    with contextlib.suppress(OSError):
        fsync_dir(sets)
    return done


def restore_identity(state_dir: Path, fingerprint: str) -> str | None:
    """After a failed run: put back the permanent set its claim set replaced.

    When the set in force is the claim set of ``fingerprint`` (installed by a run that then
    failed before its fleet exchange switched to a permanent set) and the set it replaced
    is a permanent one (``-fleet-``), that permanent set is in force again, so an appliance
    provisioned before keeps its operational identity; the claim set stays as ``previous``.
    Returns the set put back, or None when nothing changed.
    """
    credentials = state_dir / "credentials"
    current = current_credentials(state_dir)
    previous = credentials / "previous"
    if current is None or not current.name.endswith(f"-{fingerprint[:16]}"):
        return None
    if not previous.is_symlink():
        return None
    earlier = previous.resolve()
    if "-fleet-" not in earlier.name or not earlier.is_dir():
        return None
    _swap_link(credentials, "current", f"sets/{earlier.name}")
    _swap_link(credentials, "previous", f"sets/{current.name}")
    fsync_dir(credentials)
    return earlier.name


def provision_from_file(
    path: Path,
    policy: Policy,
    clock: Clock,
    state_dir: Path,
    *,
    on_step: Callable[[str], None] | None = None,
) -> tuple[VerifiedArchive, InstallResult]:
    """Verify the archive at ``path`` and install it (``archive install``)."""
    verified = verify_archive(path, policy, clock)
    return verified, install_archive(verified, state_dir, on_step=on_step)


def _stage(verified: VerifiedArchive, sets: Path, step: Callable[[str], None]) -> str:
    entries = verified.contents.entries
    files = [
        (CERTIFICATE, entries[CERTIFICATE], PUBLIC_FILE),
        (PRIVATE_KEY, entries[PRIVATE_KEY], PRIVATE_FILE),
        (ROOT_CA, entries[ROOT_CA], PUBLIC_FILE),
        # The exact signed bytes, the signature and the signer: re-checkable later.
        (MANIFEST, entries[MANIFEST], PUBLIC_FILE),
        (SIGNATURE, entries[SIGNATURE], PUBLIC_FILE),
        (SIGNER, entries[SIGNER], PUBLIC_FILE),
    ]
    return stage_set(sets, new_set_name(verified.fingerprint[:16]), files, step)


def stage_set(
    sets: Path,
    set_name: str,
    files: Iterable[tuple[str, bytes, int]],
    step: Callable[[str], None] = lambda _name: None,
) -> str:
    """Write a complete set ``sets/<set_name>``: each file fsynced, then renamed into place.

    Raises:
        StateError: ``CREDENTIALS_WRITE_FAILED``; nothing is left behind.
    """
    staging = sets / f"{_STAGING_PREFIX}{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        for name, data, mode in files:
            write_synced(staging / name, data, mode)
            step(f"wrote {name}")
        fsync_dir(staging)
        target = sets / set_name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        fsync_dir(sets)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StateError(
            f"cannot write the credentials under {sets}: {exc.strerror}",
            reason="CREDENTIALS_WRITE_FAILED",
        ) from exc
    return set_name


def _remove_stale_staging(sets: Path) -> None:
    """Remove half-written sets left by a process that was killed while staging."""
    for entry in sets.iterdir():
        if entry.name.startswith(_STAGING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def prune_sets(sets: Path, keep: set[str]) -> None:
    """Remove sets that are neither current nor previous (old keys do not linger)."""
    for entry in sets.iterdir():
        if entry.name not in keep and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        fsync_dir(sets)


def credential_files(directory: Path) -> dict[str, bytes]:
    """The files of one credential set (for checks and reports; includes the key)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
