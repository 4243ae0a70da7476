"""What can go wrong with a provisioning stick, one class and one reason per outcome.

Two families, so the run can tell FAILED from ERROR by the seed status code alone:

* :class:`StickRefusedError` (``ValidationException``, 400): the stick's content was refused:
  no archive, several, one too big, a directory or a link under the archive's name, an
  invalid name, an unreadable FAT file system or partition table. The technician fixes the
  stick; nothing was applied.
* :class:`MediaError` (``InternalServerException``, 500): the appliance could not finish:
  mtools is missing, timed out or flooded its output, the stick was pulled, the write-back
  failed.
"""

from __future__ import annotations

from agent.errors import AgentError, ValidationError


class StickRefusedError(ValidationError):
    """The stick's content was refused; nothing on it was applied."""

    default_reason = "STICK_REFUSED"


class NoArchiveError(StickRefusedError):
    """The stick's root holds no ``certificates-omni_*.zip``."""

    default_reason = "NO_ARCHIVE_ON_STICK"


class SeveralArchivesError(StickRefusedError):
    """The stick's root holds more than one ``certificates-omni_*.zip``."""

    default_reason = "SEVERAL_ARCHIVES_ON_STICK"


class ArchiveNameError(StickRefusedError):
    """The archive's name does not carry a valid device name (the seed's Name pattern)."""

    default_reason = "ARCHIVE_NAME_INVALID"


class ArchiveNotAFileError(StickRefusedError):
    """The archive's name is taken by a directory, not a file."""

    default_reason = "ARCHIVE_IS_DIRECTORY"


class StickArchiveTooLargeError(StickRefusedError):
    """The archive on the stick is larger than ``[usb] max_archive_bytes``."""

    default_reason = "ARCHIVE_TOO_LARGE_ON_STICK"


class StickLinkError(StickRefusedError):
    """The stick (an image file of the directory source) is a symbolic link."""

    default_reason = "STICK_IS_LINK"


class StickNotMediaError(StickRefusedError):
    """The stick's path is neither a block device nor a regular image file."""

    default_reason = "STICK_NOT_MEDIA"


class FilesystemError(StickRefusedError):
    """The stick holds no readable FAT file system (damaged, or another file system)."""

    default_reason = "FAT_UNREADABLE"


class PartitionTableError(StickRefusedError):
    """The stick's partition table is damaged, unsupported or has no FAT partition."""

    default_reason = "PARTITION_TABLE_INVALID"


class MediaError(AgentError):
    """The stick could not be read or written for a reason not of its content."""

    default_reason = "MEDIA_ERROR"


class StickRemovedError(MediaError):
    """The stick is gone (pulled) or its device cannot be opened any more."""

    default_reason = "STICK_REMOVED"


class MtoolsError(MediaError):
    """mtools is missing, timed out or produced more output than allowed."""

    default_reason = "MTOOLS_FAILED"


class WriteBackError(MediaError):
    """``edge-agent/result.json`` or ``provisioning.log`` could not be written to the stick."""

    default_reason = "WRITE_BACK_FAILED"
