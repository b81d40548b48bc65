"""authsvc.uploads.pipeline: read an upload item by item and store each instance in Orthanc.

Every item (a multipart part, a ZIP member or the whole body) is checked for the DICOM Part 10
``DICM`` marker, spooled (in memory up to :data:`SPOOL_MEMORY_BYTES`, then to a temporary
file) and sent to Orthanc while the next one is read; each study Orthanc reports goes to the
study sink the first time it appears. :func:`ingest` never raises for what the client sent.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import deque
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from typing import IO
from typing import Any
from typing import Final

from authsvc.errors import BadRequest
from authsvc.errors import DependencyUnavailable
from authsvc.errors import OrthancError
from authsvc.errors import PayloadTooLarge
from authsvc.uploads import archives
from authsvc.uploads.archives import ZIP_MAGIC
from authsvc.uploads.multipart import CHUNK_BYTES
from authsvc.uploads.multipart import LimitedReader
from authsvc.uploads.multipart import MalformedUpload
from authsvc.uploads.multipart import MultipartPart
from authsvc.uploads.multipart import Readable
from authsvc.uploads.multipart import UploadKind
from authsvc.uploads.multipart import UploadTooLarge
from authsvc.uploads.multipart import iter_multipart
from authsvc.uploads.outcomes import FAILURE_CANNOT_UNDERSTAND
from authsvc.uploads.outcomes import FAILURE_PROCESSING
from authsvc.uploads.outcomes import MAX_FIELD_BYTES
from authsvc.uploads.outcomes import FormFields
from authsvc.uploads.outcomes import InstanceOutcome
from authsvc.uploads.outcomes import InstanceStore
from authsvc.uploads.outcomes import StudyOutcome
from authsvc.uploads.outcomes import StudySink
from authsvc.uploads.outcomes import UploadLimits
from authsvc.uploads.outcomes import UploadResult

#: Instances sent to Orthanc at once while the next one is read (see ``Ingest._send``).
IN_FLIGHT: Final = 2
#: Items up to this size stay in memory; larger ones are spooled to a temporary file.
SPOOL_MEMORY_BYTES: Final = 8 * 1024 * 1024

_DICM_OFFSET: Final = 128
_HEAD_BYTES: Final = _DICM_OFFSET + 4


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


class Ingest:
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

    def next_outcome(self, name: str | None) -> InstanceOutcome:
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
        if allow_zip and head[:4] in ZIP_MAGIC:
            self.zip(head, source, name)
            return
        outcome = self.next_outcome(name)
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
        """Spool a ZIP archive, then handle each member as an item (see :mod:`.archives`)."""
        archives.unpack(self, head, source, name)


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
    state = Ingest(store, sink, limits, result)
    try:
        if kind in (UploadKind.STOW, UploadKind.FORM):
            if boundary is None:
                raise MalformedUpload("The multipart Content-Type has no boundary parameter.")
            for part in iter_multipart(reader, boundary):
                if kind == UploadKind.STOW and part.content_type not in ("", "application/dicom"):
                    outcome = state.next_outcome(part.filename)
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
            if kind == UploadKind.ZIP and head[:4] not in ZIP_MAGIC:
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
