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
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import tempfile
import zipfile
from collections import deque
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from typing import IO
from typing import Any
from typing import Final
from typing import Protocol

import sqlalchemy as sa

from authsvc.albums import LabelOp
from authsvc.albums import apply_pending
from authsvc.albums import queue_label
from authsvc.errors import AuthsvcError
from authsvc.errors import BadRequest
from authsvc.errors import DependencyUnavailable
from authsvc.errors import OrthancError
from authsvc.errors import PayloadTooLarge
from authsvc.errors import UnsupportedMediaType
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumStudy
from authsvc.models import utcnow
from authsvc.orthanc import OrthancClient

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_PROCESSING",
    "FormFields",
    "InstanceOutcome",
    "MalformedUpload",
    "StudyOutcome",
    "UploadKind",
    "UploadLimits",
    "UploadResult",
    "classify",
    "ingest",
    "iter_multipart",
    "parse_content_type",
]

#: Instances sent to Orthanc at once while the next one is read (see ``_Ingest._send``).
IN_FLIGHT: Final = 2
#: Items up to this size stay in memory; larger ones are spooled to a temporary file.
SPOOL_MEMORY_BYTES: Final = 8 * 1024 * 1024
#: How much is read from the client at a time.
CHUNK_BYTES: Final = 256 * 1024
#: A multipart part's header block may not be longer than this.
MAX_PART_HEADER_BYTES: Final = 16 * 1024
# RFC 2046: a boundary is 1-70 characters of a restricted set (we accept the printable ones).
_BOUNDARY_RE: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# STOW-RS failure reasons (DICOM PS3.4 status codes, PS3.18 §10.5 FailureReason 0008,1197).
FAILURE_PROCESSING: Final = 0x0110  # processing failure (Orthanc refused the instance)
FAILURE_OUT_OF_RESOURCES: Final = 0xA700  # a limit was reached
FAILURE_CANNOT_UNDERSTAND: Final = 0xC000  # not a DICOM Part 10 file

_DICM_OFFSET: Final = 128
_HEAD_BYTES: Final = _DICM_OFFSET + 4
_ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")


class MalformedUpload(BadRequest):
    """The upload's framing is broken: empty, no boundary, a part that never ends (400)."""

    code = "malformed-upload"
    message = "The upload is malformed."


class UploadTooLarge(PayloadTooLarge):
    """The upload is larger than a configured limit (413)."""

    code = "upload-too-large"


# --- content types -------------------------------------------------------------------------


class UploadKind:
    """What kind of body an upload is (from its Content-Type)."""

    STOW = "stow"  # multipart/related; type="application/dicom"
    FORM = "form"  # multipart/form-data (browser or curl -F file uploads)
    DICOM = "dicom"  # one application/dicom body
    ZIP = "zip"  # one application/zip body


_ZIP_TYPES: Final = frozenset(
    {"application/zip", "application/x-zip-compressed", "application/x-zip"}
)


_PARAM_RE: Final = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type into its lower-cased media type and parameters (quotes removed)."""
    if not value:
        return "", {}
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    # Parameters: name=token or name="quoted string" (RFC 9110 §5.6.6).
    for match in _PARAM_RE.finditer(rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name, raw)
    return media.strip().lower(), params


def classify(content_type: str | None, *, stow: bool) -> tuple[str, str | None]:
    """Return ``(UploadKind, boundary)`` for a request, or raise a clear 4xx.

    ``stow``: the STOW-RS endpoint, which takes only ``multipart/related`` with DICOM parts.

    :raise UnsupportedMediaType: another content type (415).
    :raise MalformedUpload: a multipart type without a usable boundary (400).
    """
    media, params = parse_content_type(content_type)
    if stow:
        if media != "multipart/related":
            raise UnsupportedMediaType(
                'STOW-RS needs Content-Type: multipart/related; type="application/dicom"; '
                f"boundary=... (got {media or 'none'})."
            )
        part_type = params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise UnsupportedMediaType(
                f'Only type="application/dicom" is accepted for STOW-RS (got "{part_type}"); '
                "send DICOM Part 10 files, not metadata with bulk data."
            )
        return UploadKind.STOW, _boundary(params)
    if media == "multipart/form-data":
        return UploadKind.FORM, _boundary(params)
    if media == "multipart/related":
        return UploadKind.STOW, _boundary(params)
    if media == "application/dicom":
        return UploadKind.DICOM, None
    if media in _ZIP_TYPES:
        return UploadKind.ZIP, None
    raise UnsupportedMediaType(
        "Send application/dicom, application/zip, multipart/form-data or "
        f"multipart/related (got {media or 'no Content-Type'})."
    )


def _boundary(params: dict[str, str]) -> str:
    boundary = params.get("boundary", "")
    if not boundary:
        raise MalformedUpload("The multipart Content-Type has no boundary parameter.")
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise MalformedUpload("The multipart boundary is not a valid RFC 2046 boundary.")
    return boundary


# --- reading -------------------------------------------------------------------------------


class Readable(Protocol):
    """Anything with ``read(n)`` returning bytes (b"" at the end)."""

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes."""
        ...


class LimitedReader:
    """Read a stream, counting bytes; raise UploadTooLarge past ``limit``."""

    def __init__(self, stream: Readable, limit: int, *, what: str = "upload") -> None:
        """Wrap ``stream``; ``limit`` bytes may be read at most."""
        self._stream = stream
        self._limit = limit
        self._what = what
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes (never more than one chunk)."""
        if size < 0 or size > CHUNK_BYTES:
            size = CHUNK_BYTES
        data = self._stream.read(size)
        self.count += len(data)
        if self.count > self._limit:
            raise UploadTooLarge(
                f"The {self._what} is larger than the limit of {self._limit} bytes."
            )
        return data


class MultipartPart:
    """One part being read: its headers and a ``read(n)`` that stops at the next boundary."""

    def __init__(self, parser: _MultipartParser, headers: dict[str, str]) -> None:
        """Bind the part to the parser that owns the stream."""
        self._parser = parser
        self.headers = headers
        self.done = False

    @property
    def content_type(self) -> str:
        """Return the part's media type (lower case; "" if none)."""
        return parse_content_type(self.headers.get("content-type"))[0]

    @property
    def filename(self) -> str | None:
        """Return the file name of a form-data part, if any."""
        _, params = parse_content_type("x;" + self.headers.get("content-disposition", ""))
        return params.get("filename") or None

    @property
    def field_name(self) -> str:
        """Return the form field name of a form-data part ("" if none)."""
        _, params = parse_content_type("x;" + self.headers.get("content-disposition", ""))
        return params.get("name", "")

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes of the body; b"" once the part has ended."""
        if self.done:
            return b""
        data = self._parser.read_body(size if size > 0 else CHUNK_BYTES)
        if not data:
            self.done = True
        return data

    def drain(self) -> None:
        """Skip the rest of the part."""
        while self.read(CHUNK_BYTES):
            pass


class _MultipartParser:
    """A streaming RFC 2046 parser: holds at most a chunk and a boundary in memory."""

    def __init__(self, stream: Readable, boundary: str) -> None:
        self._stream = stream
        # The first delimiter may start the body without the CRLF that precedes the others;
        # pretending the body began with CRLF makes every delimiter look the same.
        self._buffer = bytearray(b"\r\n")
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._eof = False
        # Where the delimiter search resumes in the buffer: bytes before it were searched
        # already and hold no delimiter start (each byte of a body is searched once).
        self._scan_from = 0
        self._in_body = False
        self._started = False
        self._finished = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._stream.read(CHUNK_BYTES)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def _find_delimiter(self, start: int = 0) -> int:
        return self._buffer.find(self._delimiter, start)

    def next_part(self) -> MultipartPart | None:
        """Advance to the next part; None after the closing delimiter.

        :raise MalformedUpload: empty body, no delimiter, or a body that ends before its
            closing delimiter.
        """
        if self._finished:
            return None
        if self._in_body:
            while self.read_body(CHUNK_BYTES):
                pass
        if not self._started:
            self._started = True
            # Preamble: skip everything up to the first delimiter.
            while (index := self._find_delimiter()) < 0:
                if len(self._buffer) > len(self._delimiter):
                    del self._buffer[: len(self._buffer) - len(self._delimiter)]
                if not self._fill():
                    if self._buffer == b"\r\n":
                        raise MalformedUpload("The upload body is empty.")
                    raise MalformedUpload(
                        "The multipart body does not contain its boundary; check the "
                        "boundary parameter of the Content-Type."
                    )
            del self._buffer[: index + len(self._delimiter)]
        # After a delimiter: "--" closes the body; otherwise optional padding, then CRLF.
        while len(self._buffer) < 2 and self._fill():
            pass
        if self._buffer[:2] == b"--":
            self._finished = True
            return None
        while (eol := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 256 or not self._fill():
                raise MalformedUpload("A multipart delimiter line is malformed or cut off.")
        if self._buffer[:eol].strip(b" \t"):
            raise MalformedUpload("A multipart delimiter line is malformed.")
        del self._buffer[: eol + 2]
        headers = self._read_headers()
        self._in_body = True
        self._scan_from = 0
        return MultipartPart(self, headers)

    def _read_headers(self) -> dict[str, str]:
        while len(self._buffer) < 2 and self._fill():
            pass
        if self._buffer[:2] == b"\r\n":  # a part without headers: its body starts at once
            del self._buffer[:2]
            return {}
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_PART_HEADER_BYTES:
                raise MalformedUpload("A multipart part's headers are too long.")
            if not self._fill():
                raise MalformedUpload("The upload ends inside a part's headers.")
        if end > MAX_PART_HEADER_BYTES:
            raise MalformedUpload("A multipart part's headers are too long.")
        block = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        headers: dict[str, str] = {}
        for line in block.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise MalformedUpload("A multipart part has a malformed header line.")
            headers[name.strip().lower()] = value.strip()
        return headers

    def read_body(self, size: int) -> bytes:
        """Return up to ``size`` bytes of the current part's body; b"" at its delimiter."""
        if not self._in_body:
            return b""
        keep = len(self._delimiter) - 1
        while True:
            index = self._find_delimiter(self._scan_from)
            if index >= 0:
                if index == 0:
                    del self._buffer[: len(self._delimiter)]
                    self._in_body = False
                    self._scan_from = 0
                    return b""
                take = min(index, size)
                data = bytes(self._buffer[:take])
                del self._buffer[:take]
                self._scan_from = index - take  # the delimiter, found again at once
                return data
            # No delimiter yet: everything but a possible delimiter prefix at the end is body.
            safe = len(self._buffer) - keep
            self._scan_from = max(0, safe)
            if safe >= size or (safe > 0 and self._eof):
                take = min(safe, size)
                data = bytes(self._buffer[:take])
                del self._buffer[:take]
                self._scan_from -= take
                return data
            if not self._fill():
                if safe > 0:
                    continue
                raise MalformedUpload(
                    "The multipart body ends before its closing boundary (truncated upload?)."
                )


def iter_multipart(stream: Readable, boundary: str) -> Iterator[MultipartPart]:
    """Yield the parts of a multipart body one by one; each must be read before the next."""
    parser = _MultipartParser(stream, boundary)
    while (part := parser.next_part()) is not None:
        yield part


# --- outcomes ------------------------------------------------------------------------------


@dataclasses.dataclass
class InstanceOutcome:
    """What happened to one item of the upload."""

    index: int
    name: str | None = None
    status: str = "failed"  # stored | already-stored | failed | skipped (non-DICOM in a ZIP)
    reason: str | None = None
    failure_code: int | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    instance_id: str | None = None  # Orthanc ids
    series_id: str | None = None
    study_id: str | None = None

    @property
    def stored(self) -> bool:
        """True if Orthanc holds the instance (newly or from before)."""
        return self.status in ("stored", "already-stored")

    def to_json(self) -> dict[str, Any]:
        """Return the outcome for the JSON API."""
        body: dict[str, Any] = {"index": self.index, "status": self.status}
        for key in ("name", "reason", "sop_class_uid", "sop_instance_uid"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.instance_id is not None:
            body["orthanc_id"] = self.instance_id
            body["study"] = self.study_id
        return body


@dataclasses.dataclass
class StudyOutcome:
    """A study the upload touched, and whether it is in the album yet."""

    study_id: str  # Orthanc id
    study_instance_uid: str | None = None
    in_album: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return the study for the JSON API."""
        return {
            "orthanc_id": self.study_id,
            "study_instance_uid": self.study_instance_uid,
            "in_album": self.in_album,
        }


@dataclasses.dataclass
class UploadResult:
    """Everything the caller needs to answer and to audit."""

    instances: list[InstanceOutcome] = dataclasses.field(default_factory=list)
    studies: dict[str, StudyOutcome] = dataclasses.field(default_factory=dict)
    #: Why the upload stopped before its end (framing, limit, Orthanc down), if it did.
    error: AuthsvcError | None = None
    bytes_read: int = 0

    @property
    def stored(self) -> list[InstanceOutcome]:
        """Instances Orthanc holds."""
        return [i for i in self.instances if i.stored]

    @property
    def failed(self) -> list[InstanceOutcome]:
        """Instances that were not stored."""
        return [i for i in self.instances if i.status == "failed"]

    @property
    def pending_studies(self) -> list[StudyOutcome]:
        """Studies stored in Orthanc but not yet labelled for the album (retried later)."""
        return [s for s in self.studies.values() if not s.in_album]

    @property
    def outcome(self) -> str:
        """One word for the audit trail: success, partial, failure."""
        if self.error is None and not self.failed and not self.pending_studies:
            return "success" if self.instances else "failure"
        return "partial" if self.stored else "failure"

    def summary(self) -> dict[str, Any]:
        """Counts for the audit row and the JSON answer."""
        return {
            "instances": len(self.instances),
            "stored": sum(1 for i in self.instances if i.status == "stored"),
            "already_stored": sum(1 for i in self.instances if i.status == "already-stored"),
            "failed": len(self.failed),
            "skipped": sum(1 for i in self.instances if i.status == "skipped"),
            "studies": len(self.studies),
            "pending_studies": len(self.pending_studies),
            "bytes": self.bytes_read,
        }


# --- the Orthanc side ----------------------------------------------------------------------


class InstanceStore(Protocol):
    """Where instances go: :class:`authsvc.orthanc.OrthancClient` satisfies it."""

    def store_instance(self, body: bytes | IO[bytes]) -> dict[str, Any]:
        """Store one DICOM file; return Orthanc's answer (ID, ParentStudy, Status…)."""
        ...


#: Called once per new study; puts it in the album and fills in ``in_album`` (False: the
#: label could not be applied now and is recorded as pending) and ``study_instance_uid``.
StudySink = Callable[["StudyOutcome"], None]


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    """Configured limits, enforced while reading."""

    max_bytes: int
    max_instances: int


#: A form field (a part without a file name) may not be longer than this.
MAX_FIELD_BYTES: Final = 4096


class FormFields(Protocol):
    """Receives the plain fields of a ``multipart/form-data`` upload (parts with no file name).

    A browser sends a form's fields in document order, so a field placed before the file input
    (the admin pages' CSRF token) arrives before any file: :meth:`before_file` can refuse the
    upload before a byte of it reaches Orthanc.
    """

    def field(self, name: str, value: bytes) -> None:
        """Take one field (at most :data:`MAX_FIELD_BYTES`)."""
        ...

    def before_file(self) -> None:
        """Called before each file part is handled; raise to stop the upload there."""
        ...


# --- DICOM meta header ---------------------------------------------------------------------

_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
)


def meta_uids(head: bytes) -> tuple[str | None, str | None]:
    """Return (SOP class UID, SOP instance UID) from a Part 10 file's meta header, if readable.

    The meta group (0002) is always explicit VR little endian, right after ``DICM``; only
    (0002,0002) and (0002,0003) are read. Anything odd gives (None, None): the UIDs are only
    used to describe the outcome, Orthanc does the real parsing.
    """
    pos = _HEAD_BYTES
    sop_class = sop_instance = None
    while pos + 8 <= len(head):
        group = int.from_bytes(head[pos : pos + 2], "little")
        element = int.from_bytes(head[pos + 2 : pos + 4], "little")
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                break
            length = int.from_bytes(head[pos + 8 : pos + 12], "little")
            pos += 12
        else:
            length = int.from_bytes(head[pos + 6 : pos + 8], "little")
            pos += 8
        if length == 0xFFFFFFFF or pos + length > len(head):
            break
        value = head[pos : pos + length]
        pos += length
        if element == 0x0002:
            sop_class = _uid(value)
        elif element == 0x0003:
            sop_instance = _uid(value)
    return sop_class, sop_instance


def _uid(value: bytes) -> str | None:
    text = value.rstrip(b"\x00 ").decode("ascii", "replace")
    return text if re.fullmatch(r"[0-9.]{1,64}", text) else None


# --- ingest --------------------------------------------------------------------------------


class _Ingest:
    """State of one upload: counts, outcomes, studies seen."""

    def __init__(
        self,
        store: InstanceStore,
        sink: StudySink,
        limits: UploadLimits,
        result: UploadResult,
    ) -> None:
        self.store = store
        self.sink = sink
        self.limits = limits
        self.result = result
        self.unpacked = 0  # decompressed bytes of ZIP members
        self._sender = ThreadPoolExecutor(
            max_workers=IN_FLIGHT, thread_name_prefix="authsvc-upload"
        )
        self._in_flight: deque[
            tuple[Future[dict[str, Any]], tempfile.SpooledTemporaryFile[bytes], InstanceOutcome]
        ] = deque()

    def close(self) -> None:
        """Stop the sender thread (waiting for a request still in flight)."""
        self._sender.shutdown(wait=True)
        while self._in_flight:
            self._in_flight.popleft()[1].close()

    def _next(self, name: str | None) -> InstanceOutcome:
        if len(self.result.instances) >= self.limits.max_instances:
            raise UploadTooLarge(
                f"The upload holds more than {self.limits.max_instances} items (the limit)."
            )
        outcome = InstanceOutcome(index=len(self.result.instances) + 1, name=name)
        self.result.instances.append(outcome)
        return outcome

    def item(
        self, source: Readable, name: str | None, *, allow_zip: bool, in_archive: bool = False
    ) -> None:
        """Handle one item: a DICOM file (stored), a ZIP (unpacked) or anything else (failed).

        Files in a ZIP archive that are not DICOM (a README, a viewer program) are skipped,
        not failed: archives of studies commonly carry them.
        """
        head = _read_exactly(source, _HEAD_BYTES)
        if allow_zip and head[:4] in _ZIP_MAGIC:
            self.zip(head, source, name)
            return
        outcome = self._next(name)
        if len(head) < _HEAD_BYTES or head[_DICM_OFFSET:_HEAD_BYTES] != b"DICM":
            _drain(source)
            if in_archive:
                outcome.status = "skipped"
                outcome.reason = "Not a DICOM file; skipped."
                return
            outcome.reason = "Not a DICOM file (no DICM marker at byte 128)."
            outcome.failure_code = FAILURE_CANNOT_UNDERSTAND
            return
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        try:
            spool.write(head)
            meta = bytearray(head)
            while chunk := source.read(CHUNK_BYTES):
                if len(meta) < 4096:
                    meta += chunk[: 4096 - len(meta)]
                spool.write(chunk)
            outcome.sop_class_uid, outcome.sop_instance_uid = meta_uids(bytes(meta))
        except BaseException:
            spool.close()
            raise
        self._send(spool, outcome)

    def _send(self, spool: tempfile.SpooledTemporaryFile[bytes], outcome: InstanceOutcome) -> None:
        """Hand one complete instance to a sender thread once fewer than IN_FLIGHT are out.

        Instances travel to Orthanc while the next one is read from the client, so the two
        overlap (and Orthanc stores a couple at once, as it does for its own STOW-RS). Answers
        are handled here, in order, on the request's own thread (the study sink uses the
        database session); memory holds at most ``IN_FLIGHT + 1`` instances.
        """
        try:
            while len(self._in_flight) >= IN_FLIGHT:
                self._finish_oldest()
        except BaseException:
            spool.close()  # this instance is never sent: the upload stops here
            raise
        size = spool.tell()
        spool.seek(0)
        body: bytes | IO[bytes]
        if size <= SPOOL_MEMORY_BYTES:
            # Still in memory: send as bytes (which the client may retry after a reset).
            body = spool.read()
            spool.close()
        else:
            body = spool  # streamed from the temporary file, closed once Orthanc answered
        future = self._sender.submit(self.store.store_instance, body)
        self._in_flight.append((future, spool, outcome))

    def flush(self) -> None:
        """Wait for every instance in flight and record Orthanc's answers, in order."""
        while self._in_flight:
            self._finish_oldest()

    def drain(self) -> None:
        """Like :meth:`flush` after the upload stopped: record what can be, raise nothing.

        An instance whose answer is an error keeps no reason here; the caller marks it.
        """
        while self._in_flight:
            with contextlib.suppress(*_STOPPING_ERRORS):
                self._finish_oldest()

    def _finish_oldest(self) -> None:
        """Wait for the oldest instance in flight and record Orthanc's answer."""
        future, spool, outcome = self._in_flight.popleft()
        try:
            answer = future.result()
        except OrthancError as exc:
            # Orthanc answered 4xx: this instance is bad (e.g. a corrupt dataset); go on.
            outcome.reason = "Orthanc refused the instance" + _orthanc_reason(exc)
            outcome.failure_code = FAILURE_PROCESSING
            return
        finally:
            spool.close()
        study_id = answer.get("ParentStudy")
        instance_id = answer.get("ID")
        if not isinstance(study_id, str) or not isinstance(instance_id, str):
            outcome.reason = "Orthanc's answer did not name the stored instance."
            outcome.failure_code = FAILURE_PROCESSING
            return
        outcome.status = "already-stored" if answer.get("Status") == "AlreadyStored" else "stored"
        outcome.instance_id = instance_id
        series_id = answer.get("ParentSeries")
        outcome.series_id = series_id if isinstance(series_id, str) else None
        outcome.study_id = study_id
        if study_id not in self.result.studies:
            study = StudyOutcome(study_id=study_id)
            self.result.studies[study_id] = study
            self.sink(study)

    def zip(self, head: bytes, source: Readable, name: str | None) -> None:
        """Spool a ZIP archive to a temporary file, then handle each member as an item."""
        with tempfile.TemporaryFile() as spooled:
            spooled.write(head)
            shutil.copyfileobj(source, spooled, CHUNK_BYTES)
            spooled.seek(0)
            _check_zip_directory(spooled, self.limits.max_instances)
            try:
                archive = zipfile.ZipFile(spooled)
            except (zipfile.BadZipFile, OSError, ValueError):
                outcome = self._next(name)
                outcome.reason = "Not a readable ZIP archive."
                outcome.failure_code = FAILURE_CANNOT_UNDERSTAND
                return
            with archive:
                for info in archive.infolist():
                    if info.is_dir() or _is_junk(info.filename):
                        continue
                    member_name = f"{name}/{info.filename}" if name else info.filename
                    count = len(self.result.instances)
                    try:
                        with archive.open(info) as member:
                            limited = LimitedReader(
                                member,
                                self.limits.max_bytes - self.unpacked,
                                what="unpacked content of the ZIP archive",
                            )
                            try:
                                self.item(limited, member_name, allow_zip=False, in_archive=True)
                            finally:
                                self.unpacked += limited.count
                    except _ZIP_MEMBER_ERRORS:
                        # Encrypted, unsupported compression or corrupt member: only it fails.
                        if len(self.result.instances) == count:
                            outcome = self._next(member_name)
                        else:
                            outcome = self.result.instances[-1]
                        if not outcome.stored:
                            outcome.reason = "The ZIP member cannot be read (corrupt or encrypted)."
                            outcome.failure_code = FAILURE_CANNOT_UNDERSTAND


_ZIP_MEMBER_ERRORS: Final = (
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


def _check_zip_directory(spooled: IO[bytes], max_items: int) -> None:
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


def _is_junk(filename: str) -> bool:
    """Skip metadata that archivers add (macOS resource forks, Windows thumbnails)."""
    base = filename.rsplit("/", 1)[-1]
    return filename.startswith("__MACOSX/") or base in {".DS_Store", "Thumbs.db"}


def _orthanc_reason(exc: OrthancError) -> str:
    details = exc.details if isinstance(exc.details, dict) else {}
    message = details.get("Message") or details.get("OrthancError")
    return f": {message}." if isinstance(message, str) and message else "."


def _read_exactly(source: Readable, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = source.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read_field(part: MultipartPart) -> bytes:
    """Read a form field's value; a field longer than MAX_FIELD_BYTES is malformed."""
    value = bytearray()
    while chunk := part.read(CHUNK_BYTES):
        value += chunk
        if len(value) > MAX_FIELD_BYTES:
            raise MalformedUpload(f"A form field is longer than {MAX_FIELD_BYTES} bytes.")
    return bytes(value)


def _drain(source: Readable) -> None:
    while source.read(CHUNK_BYTES):
        pass


def ingest(
    stream: Readable,
    kind: str,
    boundary: str | None,
    *,
    store: InstanceStore,
    sink: StudySink,
    limits: UploadLimits,
    fields: FormFields | None = None,
) -> UploadResult:
    """Read the whole upload, store every DICOM item, put every study in the album.

    Never raises for what the client sent or for Orthanc going away: the error is returned in
    :attr:`UploadResult.error` together with what was stored before it, and the caller decides
    the status. (Errors of the study sink, e.g. the database, do propagate, and so does what
    ``fields`` raises.) With ``fields``, the parts of a form upload that carry no file name are
    form fields handed to it, not items.
    """
    result = UploadResult()
    reader = LimitedReader(stream, limits.max_bytes)
    state = _Ingest(store, sink, limits, result)
    try:
        if kind in (UploadKind.STOW, UploadKind.FORM):
            if boundary is None:
                raise MalformedUpload("The multipart Content-Type has no boundary parameter.")
            for part in iter_multipart(reader, boundary):
                if kind == UploadKind.STOW and part.content_type not in ("", "application/dicom"):
                    outcome = state._next(part.filename)
                    part.drain()
                    outcome.reason = f"Part type {part.content_type} is not application/dicom."
                    outcome.failure_code = FAILURE_CANNOT_UNDERSTAND
                    continue
                if fields is not None and kind == UploadKind.FORM:
                    if part.filename is None:
                        fields.field(part.field_name, _read_field(part))
                        continue
                    fields.before_file()
                state.item(part, part.filename, allow_zip=kind == UploadKind.FORM)
        else:
            head = _read_exactly(reader, _HEAD_BYTES)
            if not head:
                raise MalformedUpload("The upload body is empty.")
            source = _Prefixed(head, reader)
            if kind == UploadKind.ZIP and head[:4] not in _ZIP_MAGIC:
                raise MalformedUpload("The body is not a ZIP archive.")
            state.item(source, None, allow_zip=kind == UploadKind.ZIP)
        state.flush()
        if not result.instances:
            raise MalformedUpload("The upload contains no file.")
        if not any(i.status != "skipped" for i in result.instances):
            raise MalformedUpload("The ZIP archive contains no DICOM file.")
    except _STOPPING_ERRORS as exc:
        result.error = exc
        # Instances still in flight when the upload stopped may well have been stored.
        state.drain()
        for outcome in result.instances:
            if not outcome.stored and outcome.reason is None:
                # The item in progress when the upload stopped: never sent, or not confirmed.
                outcome.reason = f"Not stored: {exc.message}"
                outcome.failure_code = FAILURE_PROCESSING
    finally:
        state.close()
        result.bytes_read = reader.count
    return result


#: What stops an upload early (reported with what was stored), as opposed to bugs.
_STOPPING_ERRORS: Final = (BadRequest, PayloadTooLarge, DependencyUnavailable)


class _Prefixed:
    """A reader that first returns ``head`` then the rest of ``source``."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = head
        self._source = source

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                data, self._head = self._head, b""
            else:
                data, self._head = self._head[:size], self._head[size:]
            return data
        return self._source.read(size)


# --- the album side --------------------------------------------------------------------------


def album_sink(album: Album, client: OrthancClient, added_by: str) -> StudySink:
    """Return the sink that puts each uploaded study into ``album``, durably.

    For each new study: record it in ``album_study`` and queue the label change in
    ``pending_label`` (one transaction), commit, then apply the label in Orthanc through the
    albums module. If Orthanc fails now, the pending row stays and
    :func:`authsvc.albums.retry_pending_labels` (``authsvc reconcile``) applies it later.
    """

    def put(study: StudyOutcome) -> None:
        try:
            study.study_instance_uid = client.study_instance_uid(study.study_id)
        except (OrthancError, DependencyUnavailable):
            study.study_instance_uid = None  # only descriptive; the label is what matters
        present = db.session.execute(
            sa.select(AlbumStudy.id).where(
                AlbumStudy.album_id == album.id, AlbumStudy.study_id == study.study_id
            )
        ).first()
        if present is None:
            try:
                with db.session.begin_nested():
                    db.session.add(
                        AlbumStudy(
                            album_id=album.id,
                            study_id=study.study_id,
                            study_instance_uid=study.study_instance_uid,
                            added_by=added_by,
                            added_at=utcnow(),
                        )
                    )
            except sa.exc.IntegrityError:
                pass  # a concurrent upload of the same study recorded it first
        pending = queue_label(
            album.server_id, study.study_id, album.label, LabelOp.ADD, album_id=album.id
        )
        pending_id = pending.id
        db.session.commit()
        study.in_album = study.study_id in apply_pending([pending_id])

    return put
