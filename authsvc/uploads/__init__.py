"""authsvc.uploads: stream DICOM uploads into Orthanc and into one album, losing nothing.

What arrives (STOW-RS ``multipart/related``, ``multipart/form-data`` files, one
``application/dicom`` body, or a ZIP archive) is read as a stream and cut into *items* (one
multipart part or ZIP member each). Every item is checked (DICOM Part 10 ``DICM`` marker), spooled
(in memory up to :data:`SPOOL_MEMORY_BYTES`, then to a temporary file) and sent to Orthanc's
``POST /instances`` on its own, so memory stays bounded by one small buffer whatever the upload
size, and nothing incomplete ever reaches Orthanc: an item is sent only once its end was seen.

Each study Orthanc reports is handed to the *study sink* the first time it appears, which
puts it in the album (label + durable pending-label record if Orthanc cannot be labelled now).
Doing it at first sight, not at the end, means a client that disconnects half-way leaves
what was stored already in the album.

Limits (total bytes, decompressed bytes of ZIP members, number of items) are enforced while
reading. Framing errors (a boundary that never ends, an empty body) and limits stop the upload:
the :class:`UploadResult` then carries the error *and* what was stored before it, so the caller
can tell the client exactly what happened. Per-item problems (not DICOM, refused by Orthanc)
only fail that item.

No Flask here: the view passes the request stream and the content type in.

Modules: :mod:`.multipart` (Content-Type, byte limit, streaming multipart reader),
:mod:`.archives` (ZIP members and their limits), :mod:`.pipeline` (items, spooling, sending to
Orthanc, :func:`ingest`), :mod:`.outcomes` (results, limits, interfaces), :mod:`.album` (the
study sink that labels each study for the album). This module re-exports what callers use.
"""

from __future__ import annotations

from authsvc.uploads.album import album_sink
from authsvc.uploads.multipart import MalformedUpload
from authsvc.uploads.multipart import MultipartPart
from authsvc.uploads.multipart import UploadKind
from authsvc.uploads.multipart import UploadTooLarge
from authsvc.uploads.multipart import classify
from authsvc.uploads.multipart import iter_multipart
from authsvc.uploads.multipart import parse_content_type
from authsvc.uploads.outcomes import FAILURE_CANNOT_UNDERSTAND
from authsvc.uploads.outcomes import FAILURE_OUT_OF_RESOURCES
from authsvc.uploads.outcomes import FAILURE_PROCESSING
from authsvc.uploads.outcomes import MAX_FIELD_BYTES
from authsvc.uploads.outcomes import FormFields
from authsvc.uploads.outcomes import InstanceOutcome
from authsvc.uploads.outcomes import StudyOutcome
from authsvc.uploads.outcomes import UploadLimits
from authsvc.uploads.outcomes import UploadResult
from authsvc.uploads.pipeline import IN_FLIGHT
from authsvc.uploads.pipeline import ingest
from authsvc.uploads.pipeline import meta_uids

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_PROCESSING",
    "IN_FLIGHT",
    "MAX_FIELD_BYTES",
    "FormFields",
    "InstanceOutcome",
    "MalformedUpload",
    "MultipartPart",
    "StudyOutcome",
    "UploadKind",
    "UploadLimits",
    "UploadResult",
    "UploadTooLarge",
    "album_sink",
    "classify",
    "ingest",
    "iter_multipart",
    "meta_uids",
    "parse_content_type",
]
