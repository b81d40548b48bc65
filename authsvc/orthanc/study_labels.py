"""authsvc.orthanc.study_labels: which study a resource belongs to, and that study's labels, cached.

The nginx gate and the album DICOMweb endpoint decide per *study*: a series, an instance, a
frame or a DICOMweb UID must first be traced to the study that owns it, and the study's
Orthanc labels say which albums it is in. Asking Orthanc for that on every frame request of a
viewer would double Orthanc's load, so both answers are cached here, per process:

* ``resource → owning studies`` (a resource does not move to another study; only deletion
  changes the answer, and then Orthanc answers 404 anyway);
* ``study → labels``, which *does* change: the entry lives ``ttl`` seconds (a few seconds), and
  is dropped at once when authsvc changes a label itself: :meth:`StudyLabelCache.listen_to`
  hooks every Orthanc client's ``add_label``/``remove_label``, so album edits, uploads and
  reconcile all invalidate without knowing about this cache (:meth:`~StudyLabelCache.invalidate`
  is there for anything else). Other workers, and label changes made directly in Orthanc, see
  the change after at most ``ttl`` seconds.

The cache is safe to lose: a miss costs one or two Orthanc calls. A resource Orthanc does not
know resolves to no study; callers deny in that case. Orthanc failures raise
:class:`~authsvc.errors.OrthancUnavailable` / :class:`~authsvc.errors.OrthancError` and are
never cached.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from authsvc.errors import OrthancError
from authsvc.orthanc.client import OrthancClient
from authsvc.orthanc.routes import IdKind
from authsvc.orthanc.routes import Level
from authsvc.orthanc.routes import ResourceRef

__all__ = ["StudyFacts", "StudyLabelCache", "TtlMap"]

_MAX_ENTRIES = 20_000
# Orthanc REST level names for a resource's own route and its "parent study" sub-route.
_REST_PATH = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.INSTANCE: "instances",
}
# /tools/find level names and the DICOM tag naming a resource at that level.
_FIND_LEVEL = {
    Level.PATIENT: ("Patient", "PatientID"),
    Level.STUDY: ("Study", "StudyInstanceUID"),
    Level.SERIES: ("Series", "SeriesInstanceUID"),
    Level.INSTANCE: ("Instance", "SOPInstanceUID"),
}


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """One study: its Orthanc id, StudyInstanceUID and labels (as of ``loaded_at``)."""

    study_id: str
    study_uid: str
    labels: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Entry:
    value: Any
    stored_at: float


class TtlMap:
    """A small thread-safe map whose entries expire; cleared wholesale when it grows too big."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._data: dict[Any, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            entry = self._data.get(key)
        if entry is None or self._clock() - entry.stored_at >= self._ttl:
            return None
        return entry.value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._data) >= _MAX_ENTRIES:
                self._data.clear()
            self._data[key] = _Entry(value, self._clock())

    def pop(self, key: Any) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class StudyLabelCache:
    """Resolve resources to their studies and read study labels from Orthanc, with caching.

    ``ttl``: seconds a study's labels are trusted. ``resolve_ttl``: seconds a resource → study
    mapping is trusted (longer: it does not change). Keys include the Orthanc server id.
    """

    def __init__(
        self,
        *,
        ttl: float = 5.0,
        resolve_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty cache."""
        self.ttl = ttl
        self._labels = TtlMap(ttl, clock)
        self._owners = TtlMap(resolve_ttl, clock)

    # -- invalidation -----------------------------------------------------------------------

    def invalidate(self, study_id: str, server_id: str = "") -> None:
        """Forget the labels of one study (call right after changing its labels)."""
        self._labels.pop((server_id, study_id))

    def clear(self) -> None:
        """Forget everything."""
        self._labels.clear()
        self._owners.clear()

    def listen_to(self, clients: Iterable[OrthancClient]) -> None:
        """Drop a study's entry whenever authsvc changes its labels through one of ``clients``."""
        for client in clients:
            client.label_listeners.append(functools.partial(self._forget, client.server.id))

    def _forget(self, server_id: str, study_id: str) -> None:
        self.invalidate(study_id, server_id)

    # -- lookups ----------------------------------------------------------------------------

    def study(self, client: OrthancClient, study_id: str) -> StudyFacts | None:
        """Return the facts of a study by Orthanc id, or None if Orthanc does not know it."""
        key = (client.server.id, study_id)
        cached: StudyFacts | None = self._labels.get(key)
        if cached is not None:
            return cached
        body = _get_or_none(client, f"/studies/{study_id}")
        if body is None:
            return None
        facts = _facts(body)
        self._labels.put(key, facts)
        return facts

    def studies_of(self, client: OrthancClient, ref: ResourceRef) -> tuple[StudyFacts, ...]:
        """Return every study ``ref`` touches (empty when Orthanc knows no such resource).

        A patient spans all its studies. A DICOM UID normally names one resource, but nothing
        stops two studies from holding the same UID: all of them are returned, and callers
        require every one to pass. For DICOMweb routes, the study named in the path
        (``ref.study_uid``) counts too, so a mismatched path cannot borrow another study's
        rights.
        """
        owners = self._owner_ids(client, ref)
        if ref.study_uid is not None and not (
            ref.level is Level.STUDY and ref.id_kind is IdKind.DICOM_UID
        ):
            hint = ResourceRef(Level.STUDY, ref.study_uid, IdKind.DICOM_UID, ref.study_uid)
            owners = owners + tuple(i for i in self._owner_ids(client, hint) if i not in owners)
        found = []
        for study_id in owners:
            facts = self.study(client, study_id)
            if facts is not None:
                found.append(facts)
        return tuple(found)

    def study_ids_of(self, client: OrthancClient, ref: ResourceRef) -> tuple[str, ...]:
        """Return the Orthanc ids of the studies owning ``ref`` (no label lookups)."""
        return self._owner_ids(client, ref)

    def _owner_ids(self, client: OrthancClient, ref: ResourceRef) -> tuple[str, ...]:
        key = (client.server.id, ref.level, ref.id_kind, ref.identifier)
        cached: tuple[str, ...] | None = self._owners.get(key)
        if cached is not None:
            return cached
        if ref.id_kind is IdKind.ORTHANC_ID:
            owners = _owners_by_orthanc_id(client, ref.level, ref.identifier)
        else:
            owners = _owners_by_uid(client, ref.level, ref.identifier)
        if owners:  # an unknown resource may appear later (an upload): do not cache misses
            self._owners.put(key, owners)
        return owners


def _get_or_none(client: OrthancClient, path: str) -> Any | None:
    """GET a JSON document; None when Orthanc answers 404 (or 400 for a malformed id)."""
    try:
        return client.json("GET", path)
    except OrthancError as exc:
        if exc.orthanc_status in (400, 404):
            return None
        raise


def _facts(body: Any) -> StudyFacts:
    """Build StudyFacts from Orthanc's study JSON."""
    if not isinstance(body, dict) or not isinstance(body.get("ID"), str):
        raise OrthancError("Orthanc sent an unexpected study document.")
    tags = body.get("MainDicomTags") or {}
    labels = body.get("Labels") or []
    return StudyFacts(
        study_id=body["ID"],
        study_uid=str(tags.get("StudyInstanceUID", "")),
        labels=frozenset(str(label) for label in labels),
    )


def _owners_by_orthanc_id(
    client: OrthancClient, level: Level | None, identifier: str
) -> tuple[str, ...]:
    """Return the study ids owning an Orthanc resource; unknown level: try each level."""
    levels = (
        [level] if level is not None else [Level.STUDY, Level.SERIES, Level.INSTANCE, Level.PATIENT]
    )
    for candidate in levels:
        if candidate is Level.STUDY:
            body = _get_or_none(client, f"/studies/{identifier}")
            if body is not None:
                return (_facts(body).study_id,)
        elif candidate is Level.PATIENT:
            body = _get_or_none(client, f"/patients/{identifier}")
            if isinstance(body, dict):
                return tuple(str(s) for s in body.get("Studies") or [])
        else:
            body = _get_or_none(client, f"/{_REST_PATH[candidate]}/{identifier}/study")
            if body is not None:
                return (_facts(body).study_id,)
    return ()


def _owners_by_uid(client: OrthancClient, level: Level | None, uid: str) -> tuple[str, ...]:
    """Return the study ids owning the resource(s) with this DICOM UID at ``level``."""
    if level is None:
        return ()
    find_level, tag = _FIND_LEVEL[level]
    found = client.json(
        "POST",
        "/tools/find",
        json={"Level": find_level, "Query": {tag: uid}, "Expand": False},
        idempotent=True,
    )
    if not isinstance(found, list):
        raise OrthancError("Orthanc sent an unexpected /tools/find answer.")
    if level is Level.STUDY:
        return tuple(str(i) for i in found)
    owners: list[str] = []
    for resource_id in found:
        owners.extend(
            s for s in _owners_by_orthanc_id(client, level, str(resource_id)) if s not in owners
        )
    return tuple(owners)
