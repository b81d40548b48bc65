"""authsvc.orthanc.routes_dicomweb: the route map's DICOMweb, WADO-URI and viewer routes.

These routes name studies by DICOM UID in the path (WADO-RS), in a QIDO filter, in WADO-URI
arguments, or in a viewer's query (Stone, OHIF, VolView), plus the legacy viewers' data routes
by Orthanc id. :class:`authsvc.orthanc.routes.RouteClassifier` dispatches here; see
:mod:`authsvc.orthanc.routes` for the families covered and the path hygiene applied first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from authsvc.orthanc.route_values import _READ_METHODS
from authsvc.orthanc.route_values import Capability
from authsvc.orthanc.route_values import IdKind
from authsvc.orthanc.route_values import Level
from authsvc.orthanc.route_values import Query
from authsvc.orthanc.route_values import ResourceRef
from authsvc.orthanc.route_values import RouteFamily
from authsvc.orthanc.route_values import RouteTarget
from authsvc.orthanc.route_values import _admin
from authsvc.orthanc.route_values import _Malformed
from authsvc.orthanc.route_values import _orthanc_ref
from authsvc.orthanc.route_values import _resource
from authsvc.orthanc.route_values import _server_wide
from authsvc.orthanc.route_values import _split_list
from authsvc.orthanc.route_values import _static
from authsvc.orthanc.route_values import _uid
from authsvc.orthanc.route_values import _unknown
from authsvc.orthanc.route_values import _values
from authsvc.orthanc.route_values import is_dicom_uid

__all__: list[str] = []

_FRAME_LIST_RE = re.compile(r"[0-9]+(?:,[0-9]+)*")
_LEGACY_INSTANCE_RE = re.compile(
    r"[a-z0-9]+-([0-9a-f]{8}(?:-[0-9a-f]{8}){4})_[0-9]+"
)  # Orthanc Web Viewer: "{compression}-{instance id}_{frame}"
_OHIF_JSON_URL_RE = re.compile(r"(?:^|/)studies/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})/ohif-dicom-json")
_VOLVIEW_URL_RE = re.compile(r"(?:^|/)studies/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})/archive")

# QIDO filters that name a study. Only these exact spellings count: the DICOMweb plugin may
# treat other spellings differently, and a filter it ignored would turn into a full listing.
_STUDY_UID_PARAMS = frozenset({"StudyInstanceUID", "0020000D"})
_SERIES_UID_PARAMS = frozenset({"SeriesInstanceUID", "0020000E"})


def _loose(name: str) -> str:
    """Return a parameter name folded the way a lenient server might read it."""
    return name.replace(",", "").replace("_", "").lower()


_STUDY_UID_LOOSE = frozenset(_loose(n) for n in _STUDY_UID_PARAMS)
_SERIES_UID_LOOSE = frozenset(_loose(n) for n in _SERIES_UID_PARAMS)
_WADO_URI_PARAMS = ("requestType", "studyUID", "seriesUID", "objectUID")
_WADO_URI_LOOSE = frozenset(_loose(n) for n in _WADO_URI_PARAMS)


# --- DICOMweb ---------------------------------------------------------------------------------

_QIDO_ROOTS = frozenset({"studies", "series", "instances"})
_STUDY_TAILS = frozenset(
    {(), ("series",), ("metadata",), ("instances",), ("rendered",), ("thumbnail",)}
)
_SERIES_TAILS = frozenset({(), ("instances",), ("rendered",), ("thumbnail",), ("metadata",)})
_INSTANCE_TAILS = frozenset({(), ("rendered",), ("thumbnail",), ("metadata",)})
_FRAME_SUFFIXES = frozenset({(), ("rendered",), ("thumbnail",)})


def _study_filters(query: Query) -> tuple[list[str], bool]:
    """Return the values of exact StudyInstanceUID filters and whether a variant spelling exists."""
    exact: list[str] = []
    variant = False
    for name, value in query:
        if name in _STUDY_UID_PARAMS:
            exact.append(value)
        elif _loose(name) in _STUDY_UID_LOOSE:
            variant = True
    return exact, variant


def _check_no_conflict(query: Query, study_uid: str, series_uid: str | None) -> None:
    """Refuse UID filters that disagree with (or misspell) the UIDs in a DICOMweb path."""
    for name, value in query:
        loose = _loose(name)
        if loose in _STUDY_UID_LOOSE and (name not in _STUDY_UID_PARAMS or value != study_uid):
            raise _Malformed("study filter conflicts with the path")
        if (
            series_uid is not None
            and loose in _SERIES_UID_LOOSE
            and (name not in _SERIES_UID_PARAMS or value != series_uid)
        ):
            raise _Malformed("series filter conflicts with the path")


def _dicomweb(method: str, rest: tuple[str, ...], query: Query) -> RouteTarget:
    """Classify a path below the DICOMweb root."""
    if not rest:
        return _unknown(method)
    head = rest[0]
    if head == "servers":
        return _admin(method, RouteFamily.DICOMWEB_SERVERS)
    if len(rest) == 1 and head in _QIDO_ROOTS:
        if method in _READ_METHODS:
            exact, variant = _study_filters(query)
            if len(exact) == 1 and not variant and is_dicom_uid(exact[0]):
                ref = ResourceRef(Level.STUDY, exact[0], IdKind.DICOM_UID, exact[0])
                return _resource(Capability.READ, RouteFamily.DICOMWEB_QIDO, ref)
            return _server_wide(Capability.READ, RouteFamily.DICOMWEB_QIDO)
        if method == "POST" and head == "studies":
            return _server_wide(Capability.WRITE, RouteFamily.DICOMWEB_STOW)
        return _unknown(method)
    if head != "studies":
        return _unknown(method)

    study_uid = _uid(rest[1])
    tail = rest[2:]
    study = ResourceRef(Level.STUDY, study_uid, IdKind.DICOM_UID, study_uid)
    if method == "POST":
        if tail:
            return _unknown(method)
        _check_no_conflict(query, study_uid, None)
        return _resource(Capability.WRITE, RouteFamily.DICOMWEB_STOW, study)
    if method not in _READ_METHODS:
        return _unknown(method)
    family = RouteFamily.DICOMWEB_WADO
    if tail in _STUDY_TAILS:
        _check_no_conflict(query, study_uid, None)
        return _resource(Capability.READ, family, study)
    if tail[0] != "series" or len(tail) < 2:
        return _unknown(method)
    series_uid = _uid(tail[1])
    series = ResourceRef(Level.SERIES, series_uid, IdKind.DICOM_UID, study_uid)
    tail = tail[2:]
    if tail in _SERIES_TAILS:
        _check_no_conflict(query, study_uid, series_uid)
        return _resource(Capability.READ, family, series)
    if tail[0] != "instances" or len(tail) < 2:
        return _unknown(method)
    instance = ResourceRef(Level.INSTANCE, _uid(tail[1]), IdKind.DICOM_UID, study_uid)
    tail = tail[2:]
    if (
        tail in _INSTANCE_TAILS
        or (tail[0] == "bulk" and len(tail) >= 2)
        or (
            tail[0] == "frames"
            and len(tail) >= 2
            and _FRAME_LIST_RE.fullmatch(tail[1]) is not None
            and tail[2:] in _FRAME_SUFFIXES
        )
    ):
        _check_no_conflict(query, study_uid, series_uid)
        return _resource(Capability.READ, family, instance)
    return _unknown(method)


def _wado_uri(method: str, query: Query) -> RouteTarget:
    """Classify WADO-URI: one instance, named by objectUID within studyUID/seriesUID."""
    if method not in _READ_METHODS:
        return _unknown(method)
    for name, _ in query:
        if _loose(name) in _WADO_URI_LOOSE and name not in _WADO_URI_PARAMS:
            raise _Malformed("misspelled WADO-URI parameter")
    found: dict[str, str] = {}
    for name in _WADO_URI_PARAMS:
        values = _values(query, name)
        if len(values) != 1:
            raise _Malformed("WADO-URI needs exactly one of each identifying parameter")
        found[name] = values[0]
    if found["requestType"] != "WADO":
        raise _Malformed("WADO-URI requestType is not WADO")
    study_uid = _uid(found["studyUID"])
    _uid(found["seriesUID"])
    ref = ResourceRef(Level.INSTANCE, _uid(found["objectUID"]), IdKind.DICOM_UID, study_uid)
    return _resource(Capability.READ, RouteFamily.WADO_URI, ref)


# --- viewers ---------------------------------------------------------------------------------


def _viewer(method: str, family: RouteFamily, refs: list[ResourceRef]) -> RouteTarget:
    """A viewer shell: the studies its query names, or a static asset when it names none."""
    if method not in _READ_METHODS:
        return _unknown(method)
    if not refs:
        return _static(method, family)
    return _resource(Capability.READ, family, *dict.fromkeys(refs))


def _stone(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """Stone Web viewer: ``?study=uid[,uid]`` (also ``selectedStudies``) and ``?series=uid``."""
    refs = [
        ResourceRef(Level.STUDY, _uid(uid), IdKind.DICOM_UID, uid)
        for uid in _split_list(_values(query, "study") + _values(query, "selectedStudies"))
    ]
    refs += [
        ResourceRef(Level.SERIES, _uid(uid), IdKind.DICOM_UID)
        for uid in _split_list(_values(query, "series"))
    ]
    return _viewer(method, RouteFamily.STONE_VIEWER, refs)


def _ohif(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """OHIF: ``?StudyInstanceUIDs=uid[,uid]`` or ``?url=../studies/{id}/ohif-dicom-json``."""
    refs = [
        ResourceRef(Level.STUDY, _uid(uid), IdKind.DICOM_UID, uid)
        for uid in _split_list(_values(query, "StudyInstanceUIDs"))
    ]
    for url in _values(query, "url"):
        match = _OHIF_JSON_URL_RE.search(url)
        if match is None or not url.endswith("/ohif-dicom-json"):
            raise _Malformed("OHIF url is not an Orthanc study")
        refs.append(_orthanc_ref(Level.STUDY, match.group(1)))
    return _viewer(method, RouteFamily.OHIF_VIEWER, refs)


def _volview(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """VolView: ``?urls=[../studies/{id}/archive,...]``."""
    refs: list[ResourceRef] = []
    for value in _values(query, "urls"):
        for url in _split_list([value.strip("[]")]):
            match = _VOLVIEW_URL_RE.search(url)
            if match is None or not url.endswith("/archive"):
                raise _Malformed("VolView url is not an Orthanc study archive")
            refs.append(_orthanc_ref(Level.STUDY, match.group(1)))
    return _viewer(method, RouteFamily.VOLVIEW_VIEWER, refs)


# Legacy viewers (the plugin's SINGLE_RESOURCE_PATTERNS 2-6): (root, sub-route) -> level.
_LEGACY_ROUTES: Mapping[tuple[str, str], Level] = MappingProxyType(
    {
        ("web-viewer", "series"): Level.SERIES,
        ("web-viewer", "is-stable-series"): Level.SERIES,
        ("wsi", "pyramids"): Level.SERIES,
        ("wsi", "tiles"): Level.SERIES,
        ("osimis-viewer", "series"): Level.SERIES,
        ("osimis-viewer", "studies"): Level.STUDY,
        ("osimis-viewer", "images"): Level.INSTANCE,
        ("osimis-viewer", "custom-command"): Level.INSTANCE,
    }
)


def _legacy_viewer(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """Orthanc Web Viewer, WSI and Osimis viewer: data routes by Orthanc id, else assets."""
    family = RouteFamily.LEGACY_VIEWER
    if method not in _READ_METHODS:
        return _unknown(method)
    if len(segs) >= 3:
        level = _LEGACY_ROUTES.get((segs[0], segs[1]))
        if level is not None:
            return _resource(Capability.READ, family, _orthanc_ref(level, segs[2]))
        if segs[0] == "web-viewer" and segs[1] == "instances" and len(segs) == 3:
            match = _LEGACY_INSTANCE_RE.fullmatch(segs[2])
            if match is None:
                raise _Malformed("not an Orthanc Web Viewer instance")
            return _resource(Capability.READ, family, _orthanc_ref(Level.INSTANCE, match.group(1)))
    if len(segs) >= 2 and ((segs[0], segs[1]) in _LEGACY_ROUTES or segs[1] == "instances"):
        raise _Malformed("viewer data route without an identifier")
    return _static(method, family)
