"""The streaming upload machinery (authsvc.uploads) without Flask, a database or Orthanc.

Bodies are fed through readers that hand out awkward chunk sizes (1 byte, primes), so a
boundary split across reads is exercised everywhere. The store is a list; the sink records.
"""

from __future__ import annotations

import io
import zipfile
from typing import IO
from typing import Any

import pydicom
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from authsvc import uploads
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.errors import UnsupportedMediaType
from authsvc.uploads import MalformedUpload
from authsvc.uploads import StudyOutcome
from authsvc.uploads import UploadKind
from authsvc.uploads import UploadLimits
from tests.dicom_factory import make_study

pytestmark = pytest.mark.unit

B = "unit-boundary"
LIMITS = UploadLimits(max_bytes=10**9, max_instances=1000)


class Trickle:
    """A stream that never returns more than ``step`` bytes per read (and counts reads)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step
        self.reads = 0

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        return self._data.read(min(self._step, size if size > 0 else self._step))


class Store:
    """A fake Orthanc /instances: stores bytes, answers like Orthanc."""

    def __init__(self, fail: dict[int, Exception] | None = None) -> None:
        self.bodies: list[bytes] = []
        self.seen: set[str] = set()
        self.fail = fail or {}

    def store_instance(self, body: bytes | IO[bytes]) -> dict[str, Any]:
        data = body if isinstance(body, bytes) else body.read()
        index = len(self.bodies)
        self.bodies.append(data)
        if index in self.fail:
            raise self.fail[index]
        ds = pydicom.dcmread(io.BytesIO(data))
        sop = str(ds.SOPInstanceUID)
        status = "AlreadyStored" if sop in self.seen else "Success"
        self.seen.add(sop)
        return {
            "ID": "i-" + sop[-8:],
            "ParentStudy": "s-" + str(ds.StudyInstanceUID)[-8:],
            "ParentSeries": "se-" + str(ds.SeriesInstanceUID)[-8:],
            "Status": status,
        }


class Sink:
    def __init__(self, labelled: bool = True) -> None:
        self.studies: list[str] = []
        self.labelled = labelled

    def __call__(self, study: StudyOutcome) -> None:
        self.studies.append(study.study_id)
        study.in_album = self.labelled


def multipart(parts: list[bytes], *, boundary: str = B, headers: bool = True) -> bytes:
    out = b"This preamble is ignored.\r\n"
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if headers:
            out += b"Content-Type: application/dicom\r\n"
        out += b"\r\n" + part + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue, ignored too\r\n".encode()


def run(
    body: bytes,
    kind: str = UploadKind.STOW,
    *,
    step: int = 65536,
    store: Store | None = None,
    sink: Sink | None = None,
    limits: UploadLimits = LIMITS,
) -> tuple[uploads.UploadResult, Store, Sink]:
    store = store or Store()
    sink = sink or Sink()
    boundary = B if kind in (UploadKind.STOW, UploadKind.FORM) else None
    result = uploads.ingest(
        Trickle(body, step), kind, boundary, store=store, sink=sink, limits=limits
    )
    return result, store, sink


INSTANCES = make_study(n_series=2, n_instances=2)


# --- multipart framing ---------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 7, 131, 4096, 1 << 20])
def test_parts_come_out_byte_exact_whatever_the_chunking(step: int) -> None:
    result, store, sink = run(multipart(INSTANCES), step=step)
    assert result.error is None
    assert store.bodies == INSTANCES
    assert [i.status for i in result.instances] == ["stored"] * 4
    assert len(sink.studies) == 1  # one study, handed to the sink once


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=5), step=st.integers(1, 97))
def test_iter_multipart_round_trips_arbitrary_bodies(payloads: list[bytes], step: int) -> None:
    # Bodies may contain CR, LF, dashes and boundary prefixes; only the full delimiter splits.
    tricky = [p + b"\r\n--" + B[:5].encode() for p in payloads]
    parts = [
        part.read(10**6) + _rest(part)
        for part in uploads.iter_multipart(Trickle(multipart(tricky), step), B)
    ]
    assert parts == tricky


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    step=st.integers(1, 97),
    reads=st.lists(st.integers(1, 64), min_size=1, max_size=8),
)
def test_small_reads_resume_the_delimiter_search_correctly(
    payloads: list[bytes], step: int, reads: list[int]
) -> None:
    """The parser searches each byte once; reads smaller than what it holds must not skip a
    delimiter (nor find one that is not there), whatever the read and arrival sizes."""
    # Each body holds a delimiter cut one byte short (then a byte that cannot complete it).
    tricky = [b"\r\n--" + B.encode()[:-1] + b"\x00" + p + b"\r\n-" for p in payloads]
    parts = []
    for part in uploads.iter_multipart(Trickle(multipart(tricky), step), B):
        out, i = b"", 0
        while chunk := part.read(reads[i % len(reads)]):
            out += chunk
            i += 1
        parts.append(out)
    assert parts == tricky


@pytest.mark.parametrize("line_break", [b"\n", b"\r"])
def test_only_crlf_before_the_boundary_delimits_binary_bodies(line_break: bytes) -> None:
    """RFC 2046: the delimiter is CRLF "--" boundary. Pixel data may hold a bare LF or CR
    followed by the boundary; that is body (lenient parsers that also split there, as
    werkzeug's MultipartDecoder does, would silently cut the instance short)."""
    tricky = [b"AB" + line_break + b"--" + B.encode() + b"\r\nstill the same part", b"second"]
    parts = [_rest(part) for part in uploads.iter_multipart(Trickle(multipart(tricky), 5), B)]
    assert parts == tricky


def test_part_headers_that_are_not_utf8_are_read_not_refused() -> None:
    """Part headers are read as latin-1 (RFC 9110 allows obs-text), so a file name written
    by an old client in a legacy encoding does not break the upload."""
    body = (
        f"--{B}\r\n".encode()
        + b'Content-Disposition: form-data; name="f"; filename="\xe9chographie.dcm"\r\n\r\n'
        + f"DATA\r\n--{B}--".encode()
    )
    parts = [(part.filename, _rest(part)) for part in uploads.iter_multipart(io.BytesIO(body), B)]
    assert parts == [("\xe9chographie.dcm", b"DATA")]


def _rest(part: uploads.MultipartPart) -> bytes:
    out = b""
    while chunk := part.read(1000):
        out += chunk
    return out


def test_part_headers_names_and_padding() -> None:
    body = (
        f"--{B}  \t\r\n".encode()  # transport padding after the delimiter is allowed
        + b'Content-Disposition: form-data; name="files"; filename="scan 1.dcm"\r\n'
        + b"content-type: Application/DICOM\r\n\r\nDATA\r\n"
        + f"--{B}\r\n\r\nno headers at all\r\n--{B}--".encode()
    )
    parts = []
    for part in uploads.iter_multipart(io.BytesIO(body), B):
        parts.append((part.filename, part.content_type, _rest(part)))
    assert parts == [("scan 1.dcm", "application/dicom", b"DATA"), (None, "", b"no headers at all")]


def test_unread_parts_are_skipped() -> None:
    found = [
        p.headers for p in uploads.iter_multipart(io.BytesIO(multipart([b"a" * 5000, b"b"])), B)
    ]
    assert len(found) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"no delimiter anywhere in this body", "does not contain its boundary"),
        (f"--{B}\r\nContent-Type: application/dicom\r\n\r\nabc".encode(), "closing boundary"),
        (f"--{B}\r\nContent-Type: application/dicom".encode(), "inside a part's headers"),
        (f"--{B}\r\nbroken header line\r\n\r\nx\r\n--{B}--".encode(), "malformed header"),
        (f"--{B}xyz\r\n\r\nx\r\n--{B}--".encode(), "delimiter line is malformed"),
        (f"--{B}\r\n".encode() + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n", "too long"),
    ],
)
def test_framing_errors_are_clear(body: bytes, message: str) -> None:
    with pytest.raises(MalformedUpload, match=message):
        for part in uploads.iter_multipart(Trickle(body, 13), B):
            _rest(part)


# --- content types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "stow", "expected"),
    [
        (f'multipart/related; type="application/dicom"; boundary={B}', True, (UploadKind.STOW, B)),
        (f'Multipart/Related;boundary="{B}";type=application/dicom', True, (UploadKind.STOW, B)),
        (f"multipart/related; boundary={B}", True, (UploadKind.STOW, B)),
        (f"multipart/form-data; boundary={B}", False, (UploadKind.FORM, B)),
        ("application/dicom", False, (UploadKind.DICOM, None)),
        ("application/zip", False, (UploadKind.ZIP, None)),
        ("application/x-zip-compressed", False, (UploadKind.ZIP, None)),
    ],
)
def test_classify(content_type: str, stow: bool, expected: tuple[str, str | None]) -> None:
    assert uploads.classify(content_type, stow=stow) == expected


@pytest.mark.parametrize(
    ("content_type", "stow", "error", "message"),
    [
        (None, True, UnsupportedMediaType, "multipart/related"),
        ("application/dicom", True, UnsupportedMediaType, "multipart/related"),
        (
            f'multipart/related; type="application/dicom+xml"; boundary={B}',
            True,
            UnsupportedMediaType,
            "dicom\\+xml",
        ),
        ('multipart/related; type="application/dicom"', True, MalformedUpload, "no boundary"),
        ("multipart/related; boundary=" + "x" * 71, True, MalformedUpload, "not a valid"),
        ("text/plain", False, UnsupportedMediaType, "application/dicom"),
        ("", False, UnsupportedMediaType, "no Content-Type"),
    ],
)
def test_classify_refuses_clearly(
    content_type: str | None, stow: bool, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        uploads.classify(content_type, stow=stow)


# --- items ---------------------------------------------------------------------------------


def test_meta_uids_come_from_the_file_meta_group() -> None:
    ds = pydicom.dcmread(io.BytesIO(INSTANCES[0]))
    assert uploads.meta_uids(INSTANCES[0][:4096]) == (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert uploads.meta_uids(b"\0" * 128 + b"DICM") == (None, None)
    assert uploads.meta_uids(INSTANCES[0][:140]) == (None, None)  # cut short: no guesses


def test_non_dicom_parts_fail_alone_and_are_never_sent() -> None:
    result, store, _ = run(multipart([INSTANCES[0], b"GIF89a" * 40, b"short", INSTANCES[1]]))
    assert [i.status for i in result.instances] == ["stored", "failed", "failed", "stored"]
    assert result.instances[1].failure_code == uploads.FAILURE_CANNOT_UNDERSTAND
    assert "DICM" in (result.instances[1].reason or "")
    assert store.bodies == [INSTANCES[0], INSTANCES[1]]
    assert result.outcome == "partial"


def test_non_dicom_stow_part_type_fails() -> None:
    body = (
        f"--{B}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + INSTANCES[0]
        + f"\r\n--{B}--".encode()
    )
    result, store, _ = run(body)
    assert result.instances[0].status == "failed" and "octet-stream" in (
        result.instances[0].reason or ""
    )
    assert store.bodies == []


def test_orthanc_refusing_one_instance_fails_only_that_one() -> None:
    refused = OrthancError("bad", orthanc_status=400, details={"Message": "Bad file format"})
    result, _, _ = run(multipart(INSTANCES[:2]), store=Store(fail={0: refused}))
    assert [i.status for i in result.instances] == ["failed", "stored"]
    assert result.instances[0].reason == "Orthanc refused the instance: Bad file format."
    assert result.error is None


def test_orthanc_going_away_stops_the_upload_and_keeps_what_was_stored() -> None:
    down = OrthancUnavailable("Orthanc is unreachable.")
    six = make_study(n_instances=6)
    # Orthanc is gone from the third instance on.
    result, store, sink = run(multipart(six), store=Store(fail={i: down for i in range(2, 6)}))
    assert isinstance(result.error, OrthancUnavailable)
    statuses = [i.status for i in result.instances]
    assert statuses[:2] == ["stored", "stored"] and set(statuses[2:]) == {"failed"}
    assert "unreachable" in (result.instances[2].reason or "")
    assert all(i.reason for i in result.instances[2:])
    # At most IN_FLIGHT more were sent before the outage was seen; the rest never left.
    assert len(store.bodies) <= 2 + uploads.IN_FLIGHT
    assert len(result.instances) < 6
    assert len(sink.studies) == 1


def test_already_stored_is_success() -> None:
    store = Store()
    run(multipart(INSTANCES[:1]), store=store)
    result, _, _ = run(multipart(INSTANCES[:1]), store=store)
    assert result.instances[0].status == "already-stored"
    assert result.outcome == "success"


def test_pending_studies_are_reported() -> None:
    result, _, _ = run(multipart(INSTANCES), sink=Sink(labelled=False))
    assert len(result.pending_studies) == 1
    assert result.outcome == "partial"
    assert result.summary()["pending_studies"] == 1


def test_large_instances_are_spooled_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads.pipeline, "SPOOL_MEMORY_BYTES", 256)
    seen: list[type] = []

    class Recording(Store):
        def store_instance(self, body: bytes | IO[bytes]) -> dict[str, Any]:
            seen.append(type(body))
            return super().store_instance(body)

    result, store, _ = run(multipart(INSTANCES[:1]), store=Recording())
    assert result.instances[0].status == "stored"
    assert seen and seen[0] is not bytes  # a file object, streamed by the HTTP client
    assert store.bodies == INSTANCES[:1]


# --- limits --------------------------------------------------------------------------------


def test_byte_limit_is_enforced_while_reading() -> None:
    # Room for the first two parts and their delimiters, not for the third.
    limit = len(multipart(INSTANCES[:2])) + 10
    limits = UploadLimits(max_bytes=limit, max_instances=100)
    stream = Trickle(multipart(INSTANCES), 10)
    store = Store()
    result = uploads.ingest(stream, UploadKind.STOW, B, store=store, sink=Sink(), limits=limits)
    assert isinstance(result.error, uploads.UploadTooLarge)
    assert result.error.status == 413
    assert result.bytes_read <= limit + 10  # stopped at the limit, not at the end of the body
    assert [i.status for i in result.stored] == ["stored", "stored"]
    assert store.bodies == INSTANCES[:2]  # the third was never sent


def test_count_limit() -> None:
    result, store, _ = run(multipart(INSTANCES), limits=UploadLimits(10**9, 3))
    assert isinstance(result.error, uploads.UploadTooLarge)
    assert "more than 3" in result.error.message
    assert len(store.bodies) == 3


def test_zip_unpacked_size_is_limited() -> None:
    archive = _zip({"big.dcm": INSTANCES[0] + b"\0" * 100_000})
    result, store, _ = run(archive, UploadKind.ZIP, limits=UploadLimits(50_000, 10))
    assert isinstance(result.error, uploads.UploadTooLarge)
    assert "unpacked" in result.error.message
    assert store.bodies == []


# --- single files and ZIP ------------------------------------------------------------------


def _zip(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_single_dicom_body() -> None:
    result, store, _ = run(INSTANCES[0], UploadKind.DICOM, step=17)
    assert [i.status for i in result.instances] == ["stored"]
    assert store.bodies == [INSTANCES[0]]


def test_zip_members_skipped_failed_and_stored() -> None:
    archive = _zip(
        {
            "DICOMDIR/": b"",
            "a/IM1": INSTANCES[0],
            "a/IM2": INSTANCES[1],
            "README.TXT": b"hello",
            "__MACOSX/._IM1": b"junk",
            ".DS_Store": b"junk",
        }
    )
    result, store, _ = run(archive, UploadKind.ZIP, step=333)
    assert [(i.name, i.status) for i in result.instances] == [
        ("a/IM1", "stored"),
        ("a/IM2", "stored"),
        ("README.TXT", "skipped"),
    ]
    assert store.bodies == INSTANCES[:2]
    assert result.outcome == "success"


def test_zip_errors() -> None:
    result, _, _ = run(b"not a zip at all" * 20, UploadKind.ZIP)
    assert isinstance(result.error, MalformedUpload) and "not a ZIP" in result.error.message
    result, _, _ = run(b"PK\x03\x04" + b"\0" * 300, UploadKind.ZIP)
    assert result.instances[0].reason == "Not a readable ZIP archive."
    result, _, _ = run(_zip({"notes.txt": b"x"}), UploadKind.ZIP)
    assert isinstance(result.error, MalformedUpload) and "no DICOM" in result.error.message


def test_corrupt_zip_member_fails_alone() -> None:
    archive = bytearray(_zip({"a": INSTANCES[0], "b": INSTANCES[1]}, zipfile.ZIP_STORED))
    # Flip a byte inside the first member's data: its CRC check fails when it is read.
    offset = archive.index(INSTANCES[0][200:220])
    archive[offset] ^= 0xFF
    result, store, _ = run(bytes(archive), UploadKind.ZIP)
    assert [i.status for i in result.instances] == ["failed", "stored"]
    assert "cannot be read" in (result.instances[0].reason or "")
    assert store.bodies[-1] == INSTANCES[1]


def test_form_with_files_and_a_zip() -> None:
    body = (
        f'--{B}\r\nContent-Disposition: form-data; name="f"; filename="one.dcm"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += INSTANCES[0] + b"\r\n"
    body += (
        f'--{B}\r\nContent-Disposition: form-data; name="f"; filename="more.zip"\r\n\r\n'.encode()
    )
    body += _zip({"x.dcm": INSTANCES[1], "y.dcm": INSTANCES[2]}) + f"\r\n--{B}--\r\n".encode()
    result, store, _ = run(body, UploadKind.FORM, step=501)
    assert [(i.name, i.status) for i in result.instances] == [
        ("one.dcm", "stored"),
        ("more.zip/x.dcm", "stored"),
        ("more.zip/y.dcm", "stored"),
    ]
    assert store.bodies == INSTANCES[:3]


class Fields:
    """Records form fields and the file parts announced, in order (uploads.FormFields)."""

    def __init__(self, refuse_files: bool = False) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.refuse_files = refuse_files

    def field(self, name: str, value: bytes) -> None:
        self.events.append((name, value))

    def before_file(self) -> None:
        self.events.append(("<file>", b""))
        if self.refuse_files:
            raise PermissionError("refused before the file was read")


def _form(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{B}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{B}--\r\n".encode()


def test_form_fields_reach_the_handler_in_order_and_are_not_items() -> None:
    body = _form([("csrf_token", None, b"t0ken"), ("file", "a.dcm", INSTANCES[0])])
    fields = Fields()
    result = uploads.ingest(
        Trickle(body, 97),
        UploadKind.FORM,
        B,
        store=Store(),
        sink=Sink(),
        limits=LIMITS,
        fields=fields,
    )
    assert fields.events == [("csrf_token", b"t0ken"), ("<file>", b"")]
    assert [(i.name, i.status) for i in result.instances] == [("a.dcm", "stored")]


def test_a_refusal_before_a_file_stops_the_upload_before_orthanc() -> None:
    store = Store()
    body = _form([("file", "a.dcm", INSTANCES[0])])
    with pytest.raises(PermissionError):
        uploads.ingest(
            Trickle(body, 4096),
            UploadKind.FORM,
            B,
            store=store,
            sink=Sink(),
            limits=LIMITS,
            fields=Fields(refuse_files=True),
        )
    assert store.bodies == []


def test_an_overlong_form_field_is_malformed() -> None:
    body = _form([("csrf_token", None, b"x" * (uploads.MAX_FIELD_BYTES + 1))])
    result = uploads.ingest(
        Trickle(body, 4096),
        UploadKind.FORM,
        B,
        store=Store(),
        sink=Sink(),
        limits=LIMITS,
        fields=Fields(),
    )
    assert isinstance(result.error, MalformedUpload)
    assert "longer than" in result.error.message
