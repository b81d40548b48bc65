"""authsvc.uploads.multipart: what an upload is (Content-Type) and a streaming multipart reader.

:func:`classify` turns a request's Content-Type into an :class:`UploadKind` and a boundary;
:class:`LimitedReader` counts the bytes read against the upload limit; :func:`iter_multipart`
cuts an RFC 2046 body into parts while holding at most a chunk and a boundary in memory.

Why not werkzeug's ``sansio.multipart.MultipartDecoder``: it decodes ``multipart/form-data``
only. It refuses a part without Content-Disposition (every STOW-RS part, and a part with no
headers), splits at a bare LF or CR before the boundary (which binary pixel data may hold:
the instance would be cut short), and decodes part headers as UTF-8 (a latin-1 file name
raises). Each of these is pinned by tests/unit/uploads/test_uploads.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final
from typing import Protocol

from authsvc.errors import BadRequest
from authsvc.errors import PayloadTooLarge
from authsvc.errors import UnsupportedMediaType

#: How much is read from the client at a time.
CHUNK_BYTES: Final = 256 * 1024
#: A multipart part's header block may not be longer than this.
MAX_PART_HEADER_BYTES: Final = 16 * 1024
# RFC 2046: a boundary is 1-70 characters of a restricted set (we accept the printable ones).
_BOUNDARY_RE: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


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
