"""authsvc.uploads.archives: ZIP uploads, unpacked member by member within the upload's limits.

A ZIP is spooled to a temporary file, its central directory is checked against the item limit
before :mod:`zipfile` parses it, and each member is handed back to the pipeline as one item
whose unpacked bytes count against the byte limit (a ZIP bomb stops at the limit).

What this module needs of the upload in progress is the :class:`Items` interface, which the
pipeline's state satisfies: the pipeline imports this module, never the other way round.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from typing import IO
from typing import Final
from typing import Protocol

from authsvc.uploads.multipart import CHUNK_BYTES
from authsvc.uploads.multipart import LimitedReader
from authsvc.uploads.multipart import Readable
from authsvc.uploads.multipart import UploadTooLarge
from authsvc.uploads.outcomes import FAILURE_CANNOT_UNDERSTAND
from authsvc.uploads.outcomes import InstanceOutcome
from authsvc.uploads.outcomes import UploadLimits
from authsvc.uploads.outcomes import UploadResult

#: The first bytes of a ZIP archive (a local file header, or the end record of an empty one).
ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")


class Items(Protocol):
    """The upload a ZIP's members join (:class:`authsvc.uploads.pipeline.Ingest`)."""

    limits: UploadLimits
    result: UploadResult
    unpacked: int  # decompressed bytes of ZIP members so far

    def next_outcome(self, name: str | None) -> InstanceOutcome:
        """Count one more item (raising past the item limit) and return its outcome."""
        ...

    def item(
        self, source: Readable, name: str | None, *, allow_zip: bool, in_archive: bool = False
    ) -> None:
        """Handle one item as the pipeline handles every item."""
        ...


def unpack(state: Items, head: bytes, source: Readable, name: str | None) -> None:
    """Spool a ZIP archive to a temporary file, then handle each member as an item."""
    with tempfile.TemporaryFile() as spooled:
        spooled.write(head)
        shutil.copyfileobj(source, spooled, CHUNK_BYTES)
        spooled.seek(0)
        check_zip_directory(spooled, state.limits.max_instances)
        try:
            archive = zipfile.ZipFile(spooled)
        except (zipfile.BadZipFile, OSError, ValueError):
            outcome = state.next_outcome(name)
            outcome.reason = "Not a readable ZIP archive."
            outcome.failure_code = FAILURE_CANNOT_UNDERSTAND
            return
        with archive:
            for info in archive.infolist():
                if info.is_dir() or is_junk(info.filename):
                    continue
                member_name = f"{name}/{info.filename}" if name else info.filename
                count = len(state.result.instances)
                try:
                    with archive.open(info) as member:
                        limited = LimitedReader(
                            member,
                            state.limits.max_bytes - state.unpacked,
                            what="unpacked content of the ZIP archive",
                        )
                        try:
                            state.item(limited, member_name, allow_zip=False, in_archive=True)
                        finally:
                            state.unpacked += limited.count
                except ZIP_MEMBER_ERRORS:
                    # Encrypted, unsupported compression or corrupt member: only it fails.
                    if len(state.result.instances) == count:
                        outcome = state.next_outcome(member_name)
                    else:
                        outcome = state.result.instances[-1]
                    if not outcome.stored:
                        outcome.reason = "The ZIP member cannot be read (corrupt or encrypted)."
                        outcome.failure_code = FAILURE_CANNOT_UNDERSTAND


ZIP_MEMBER_ERRORS: Final = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
)


#: Bytes of ZIP central directory allowed per item an upload may hold. ``zipfile`` reads the
#: whole directory into memory before any member is looked at, about ten times its size once
#: parsed: a 30 MB archive listing 300,000 empty directories costs 150 MB, and directories
#: never count as items. 512 bytes is about four times a real entry (46 bytes, a path, extras).
ZIP_DIRECTORY_BYTES_PER_ITEM: Final = 512


def check_zip_directory(spooled: IO[bytes], max_items: int) -> None:
    """Refuse a ZIP whose central directory is too large for the upload, before it is parsed.

    :raise UploadTooLarge: the directory is larger than ``max_items`` entries need.
    """
    try:
        # The very record ZipFile reads next, so the size checked is the size it would read.
        end = zipfile._EndRecData(spooled)  # type: ignore[attr-defined]
    except OSError:
        end = None  # not a ZIP: ZipFile says so next
    spooled.seek(0)
    limit = max(64 * 1024, max_items * ZIP_DIRECTORY_BYTES_PER_ITEM)
    if end and end[_ZIP_END_DIRECTORY_SIZE] > limit:
        raise UploadTooLarge(
            f"The ZIP archive lists more entries than an upload of {max_items} items may hold."
        )


_ZIP_END_DIRECTORY_SIZE: Final = 5  # zipfile._ECD_SIZE: bytes of the central directory


def is_junk(filename: str) -> bool:
    """Skip metadata that archivers add (macOS resource forks, Windows thumbnails)."""
    base = filename.rsplit("/", 1)[-1]
    return filename.startswith("__MACOSX/") or base in {".DS_Store", "Thumbs.db"}
