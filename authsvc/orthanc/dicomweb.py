"""authsvc.orthanc.dicomweb: album-scoped DICOMweb on top of Orthanc's DICOMweb plugin.

Each album is served as its own DICOMweb root, ``/dicom-web/albums/<album id>/``:

* **QIDO-RS** at the album root (``studies``, ``series``, ``instances``): the album's studies
  are listed with ``/tools/find`` (``Labels`` = the album's label), and the client's query is
  sent to Orthanc's QIDO with ``StudyInstanceUID`` restricted to those studies (comma-separated
  UID list matching, batched). Every result is checked again against the album's UIDs, so a
  study outside the album never appears even if Orthanc ignored a filter. ``limit`` and
  ``offset`` are applied here, over the combined answer; every other parameter (matching keys,
  ``fuzzymatching``) is passed through as is, but ``includefield`` lists are sent as one
  ``includefield`` per attribute: Orthanc does not percent-decode arguments, and OHIF sends
  ``includefield=00081030%2C00080060``, which Orthanc would ignore (no study descriptions in
  OHIF's study list).
* **QIDO below a study and WADO-RS** (``studies/{uid}/...``: series/instances searches,
  retrieval, metadata, frames, rendered, thumbnails, bulk data): one per-study check (the study
  and any series/instance named must belong to studies carrying the album's label), then the
  request is streamed to Orthanc and the answer streamed back, never buffered whole.

**URLs.** Orthanc writes absolute URLs (``RetrieveURL``, ``BulkDataURI``) into its answers. We
ask it to build them on a marker host (``Forwarded: host=…``) and replace the marker prefix by
the album's public root, chunk by chunk (:class:`UrlRewriter`), so they point at the album
endpoint, behind any proxy prefix (``X-Forwarded-Prefix`` with ``proxy_count`` set).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MARKER_HOST",
    "QIDO_BATCH",
    "QidoQuery",
    "UrlRewriter",
    "forwarded_header",
    "parse_qido_query",
    "rewrite_urls",
]

#: Host Orthanc is told it is reached at; only ever seen inside our own rewriting.
MARKER_HOST = "authsvc-album-root.invalid"
#: How many StudyInstanceUIDs one QIDO call to Orthanc may carry.
QIDO_BATCH = 100
_STUDY_UID_TAG = "0020000D"
_STUDY_UID_NAMES = frozenset({"StudyInstanceUID", "0020000D"})
#: An ``includefield`` item: a tag (``00081030``), a keyword, a dotted path, or ``all``.
_INCLUDE_FIELD_RE = re.compile(r"[A-Za-z0-9.]{1,64}")
_MAX_LIMIT = 10_000

# The marker URL up to and including Orthanc's DICOMweb root (whatever its path or PublicRoot):
# the root ends right before the first "studies/" (RetrieveURLs and BulkDataURIs always contain
# one). Bounded, so the streaming rewriter knows how far back a match can start.
_MARKER_RE = re.compile(
    rb"https?://" + re.escape(MARKER_HOST.encode()) + rb"(?:/[^\"\s/]*){0,8}?/(?=studies/)"
)
_MAX_MATCH = 400


_ANY_PART_TYPE_RE = re.compile(r';\s*type="?\*/\*"?(?=\s*(?:;|,|$))')


def normalize_accept(accept: str) -> str:
    """Drop ``type="*/*"`` from multipart Accept values: it means "any part type", which
    Orthanc refuses for frames (400) although its default answer satisfies it. dicomweb-client
    sends exactly that by default."""
    return _ANY_PART_TYPE_RE.sub("", accept)


def forwarded_header() -> str:
    """Return the ``Forwarded`` header that makes Orthanc build URLs on the marker host."""
    return f"host={MARKER_HOST};proto=http"


class UrlRewriter:
    """Replace the marker root by ``public_root`` in a byte stream, chunk boundaries included."""

    def __init__(self, public_root: str) -> None:
        """``public_root``: the album's absolute DICOMweb root, without trailing slash."""
        self._replacement = public_root.rstrip("/").encode() + b"/"
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        """Return the rewritten bytes that are safe to emit; keep a possible partial match."""
        buffer = self._carry + chunk
        # A match starting before ``cut`` ends inside the buffer (it is at most _MAX_MATCH long).
        cut = max(0, len(buffer) - _MAX_MATCH)
        out: list[bytes] = []
        position = 0
        for match in _MARKER_RE.finditer(buffer):
            if match.start() >= cut:
                break
            out.append(buffer[position : match.start()])
            out.append(self._replacement)
            position = match.end()
        cut = max(cut, position)
        out.append(buffer[position:cut])
        self._carry = buffer[cut:]
        return b"".join(out)

    def finish(self) -> bytes:
        """Return the rest, rewritten."""
        rest, self._carry = self._carry, b""
        return _MARKER_RE.sub(self._replacement, rest)


def rewrite_urls(chunks: Iterable[bytes], public_root: str) -> Iterator[bytes]:
    """Yield ``chunks`` with marker URLs replaced by ``public_root``."""
    rewriter = UrlRewriter(public_root)
    for chunk in chunks:
        out = rewriter.feed(chunk)
        if out:
            yield out
    tail = rewriter.finish()
    if tail:
        yield tail


def rewrite_text(text: str, public_root: str) -> str:
    """Return ``text`` with marker URLs replaced by ``public_root`` (whole documents)."""
    replacement = public_root.rstrip("/").encode() + b"/"
    return _MARKER_RE.sub(replacement, text.encode()).decode()


class QidoQuery:
    """A QIDO-RS query split into what Orthanc gets and what authsvc applies itself."""

    def __init__(
        self,
        passthrough: list[str],
        study_uids: list[str] | None,
        limit: int | None,
        offset: int,
    ) -> None:
        """Use :func:`parse_qido_query`."""
        #: The client's ``name=value`` fields, raw (Orthanc does not percent-decode arguments,
        #: so re-encoding them would change their meaning: ``*`` must stay ``*``).
        self.passthrough = passthrough
        #: Exact UIDs the client asked for (None: no StudyInstanceUID filter).
        self.study_uids = study_uids
        self.limit = limit
        self.offset = offset

    def orthanc_params(self, uids: list[str]) -> str:
        """Return the query string for one Orthanc call restricted to ``uids``."""
        return "&".join([*self.passthrough, "StudyInstanceUID=" + ",".join(uids)])


def _int_param(name: str, value: str, maximum: int) -> int:
    from authsvc.errors import BadRequest

    if not value.isdigit() or len(value) > 9:
        raise BadRequest(f"{name} must be a non-negative integer.")
    return min(int(value), maximum)


def split_query(raw_query: str, drop: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    """Return ``(decoded name, decoded value, raw field)`` for each field of a query string."""
    fields = []
    for field in raw_query.split("&"):
        if not field:
            continue
        raw_name, _, raw_value = field.partition("=")
        name = unquote(raw_name)
        if name in drop:
            continue
        fields.append((name, unquote(raw_value.replace("+", " ")), field))
    return fields


def parse_qido_query(raw_query: str, drop: frozenset[str] = frozenset()) -> QidoQuery:
    """Split a raw QIDO query string for the album QIDO (``drop``: names to leave out).

    :raise 400: a bad ``limit``/``offset``, a wildcard in a UID (UIDs match exactly or as a
        list, PS3.4 C.2.2.2.2), or an ``includefield`` item that is no tag or keyword.
    """
    from authsvc.errors import BadRequest

    passthrough: list[str] = []
    study_uids: list[str] | None = None
    limit: int | None = None
    offset = 0
    for name, value, field in split_query(raw_query, drop):
        if name == "limit":
            limit = _int_param("limit", value, _MAX_LIMIT)
        elif name == "offset":
            offset = _int_param("offset", value, 10**9)
        elif name in _STUDY_UID_NAMES:
            items = [item.strip() for item in value.replace("\\", ",").split(",") if item.strip()]
            if any("*" in item or "?" in item for item in items):
                raise BadRequest("StudyInstanceUID does not take wildcards.")
            wanted = set(items)
            study_uids = sorted(wanted if study_uids is None else wanted & set(study_uids))
        elif name == "includefield":
            items = [item.strip() for item in value.split(",") if item.strip()]
            if not all(_INCLUDE_FIELD_RE.fullmatch(item) for item in items):
                raise BadRequest("includefield takes attribute tags or keywords, comma-separated.")
            passthrough.extend(f"includefield={item}" for item in items)
        else:
            passthrough.append(field)
    return QidoQuery(passthrough, study_uids, limit, offset)


def study_uid_of(dataset: Any) -> str | None:
    """Return the StudyInstanceUID of a DICOM JSON dataset, or None."""
    if not isinstance(dataset, dict):
        return None
    element = dataset.get(_STUDY_UID_TAG)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None
