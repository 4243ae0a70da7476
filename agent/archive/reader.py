"""Safe reading of a provisioning archive's ZIP container.

Nothing is extracted to disk: the (small, size-capped) archive is read into memory and each
entry is checked before a byte of it is decompressed. Every refusal has its own reason.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.archive.manifest import ARCHIVE_NAME_RE, ENTRY_NAMES
from agent.errors import ArchiveError, UnsafeEntryError

_ALLOWED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
_UNIX = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """Size caps for an archive (see ``[archive]`` in the configuration)."""

    max_archive_bytes: int = 1024 * 1024
    max_entry_bytes: int = 256 * 1024
    max_total_bytes: int = 1024 * 1024
    max_compression_ratio: int = 100


@dataclass(frozen=True, slots=True)
class ArchiveContents:
    """The six entries of an archive, by name, plus where it came from."""

    device_name: str
    entries: dict[str, bytes]
    raw: bytes


def device_name_from_filename(path: Path) -> str:
    """The ``<device-name>`` of ``certificates-omni_<device-name>.zip``."""
    match = ARCHIVE_NAME_RE.fullmatch(path.name)
    if not match:
        raise ArchiveError(
            f"the file name {path.name!r} is not certificates-omni_<device-name>.zip "
            "(device names use letters, digits, '-' and '_')",
            reason="FILE_NAME_INVALID",
        )
    return match.group("name")


def read_archive(path: Path, limits: Limits) -> ArchiveContents:
    """Read and check the ZIP container at ``path``; return its entries."""
    device_name = device_name_from_filename(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(limits.max_archive_bytes + 1)
    except OSError as exc:
        raise ArchiveError(
            f"cannot read {path.name}: {exc.strerror}", reason="ARCHIVE_UNREADABLE"
        ) from exc
    if len(raw) > limits.max_archive_bytes:
        raise UnsafeEntryError(
            f"{path.name} is larger than {limits.max_archive_bytes} bytes",
            reason="ARCHIVE_TOO_LARGE",
        )
    return ArchiveContents(device_name, read_entries(raw, limits), raw)


def _corrupt(detail: str) -> ArchiveError:
    return ArchiveError(
        f"the archive is damaged or truncated ({detail}); copy it to the stick again",
        reason="ARCHIVE_CORRUPT",
    )


def read_entries(raw: bytes, limits: Limits) -> dict[str, bytes]:
    """Check every entry of the ZIP in ``raw`` and return the six entries' bytes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except UnicodeDecodeError:
        raise UnsafeEntryError(
            "an entry name is flagged UTF-8 but is not valid UTF-8", reason="NON_UTF8_NAME"
        ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise _corrupt(str(exc)) from None
    except NotImplementedError as exc:  # an entry needs a newer ZIP version than zipfile reads
        raise UnsafeEntryError(
            f"the archive uses an unsupported ZIP feature ({exc})",
            reason="UNSUPPORTED_COMPRESSION",
        ) from None
    with archive:
        infos = archive.infolist()
        _check_layout(infos, limits)
        entries: dict[str, bytes] = {}
        for info in infos:
            try:
                with archive.open(info) as member:
                    data = member.read(limits.max_entry_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
                raise _corrupt(f"{info.filename}: {exc}") from None
            except NotImplementedError as exc:
                raise UnsafeEntryError(
                    f"{info.filename} uses an unsupported ZIP feature ({exc})",
                    reason="UNSUPPORTED_COMPRESSION",
                ) from None
            if len(data) != info.file_size:
                raise _corrupt(f"{info.filename}: size does not match its header")
            entries[info.filename] = data
    return entries


def _check_layout(infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_name(info)
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise UnsafeEntryError(f"{name} is encrypted", reason="ENCRYPTED_ENTRY")
        if name in seen:
            raise UnsafeEntryError(f"{name} appears twice", reason="DUPLICATE_ENTRY")
        seen.add(name)
        if name not in ENTRY_NAMES:
            raise UnsafeEntryError(
                f"unexpected entry {name!r}; a v1 archive holds only {', '.join(ENTRY_NAMES)}",
                reason="UNEXPECTED_ENTRY",
            )
        if info.compress_type not in _ALLOWED_METHODS:
            raise UnsafeEntryError(
                f"{name} uses compression method {info.compress_type}; only stored and "
                "deflated are accepted",
                reason="UNSUPPORTED_COMPRESSION",
            )
        if info.file_size > limits.max_entry_bytes:
            raise UnsafeEntryError(
                f"{name} is {info.file_size} bytes, more than {limits.max_entry_bytes}",
                reason="ENTRY_TOO_LARGE",
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeEntryError(
                f"the entries add up to more than {limits.max_total_bytes} bytes",
                reason="TOTAL_SIZE_TOO_LARGE",
            )
        if info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
            raise UnsafeEntryError(
                f"{name} expands more than {limits.max_compression_ratio} times",
                reason="COMPRESSION_RATIO_TOO_HIGH",
            )
    missing = [n for n in ENTRY_NAMES if n not in seen]
    if missing:
        raise UnsafeEntryError(f"the archive lacks {', '.join(missing)}", reason="MISSING_ENTRY")


def _check_name(info: zipfile.ZipInfo) -> None:
    name = info.filename
    raw_name = info.orig_filename
    if not info.flag_bits & _FLAG_UTF8 and not raw_name.isascii():
        raise UnsafeEntryError(
            "an entry name is not UTF-8 (legacy code page)", reason="NON_UTF8_NAME"
        )
    if "\x00" in raw_name:
        raise UnsafeEntryError("an entry name contains a NUL byte", reason="UNSAFE_PATH")
    posix = PurePosixPath(raw_name.replace("\\", "/"))
    if posix.is_absolute() or (len(raw_name) > 1 and raw_name[1] == ":"):
        raise UnsafeEntryError(f"{name!r} is an absolute path", reason="UNSAFE_PATH")
    if ".." in posix.parts:
        raise UnsafeEntryError(f"{name!r} climbs out of the archive", reason="UNSAFE_PATH")
    if info.is_dir() or raw_name.endswith(("/", "\\")):
        raise UnsafeEntryError(f"{name!r} is a directory", reason="DIRECTORY_ENTRY")
    mode = info.external_attr >> 16
    if info.create_system == _UNIX and mode:
        if stat.S_ISLNK(mode):
            raise UnsafeEntryError(f"{name!r} is a symbolic link", reason="SYMLINK_ENTRY")
        if not stat.S_ISREG(mode) and stat.S_IFMT(mode):
            raise UnsafeEntryError(f"{name!r} is not a regular file", reason="SPECIAL_ENTRY")
