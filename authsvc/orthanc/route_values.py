"""authsvc.orthanc.route_values: the vocabulary of the route map, shared by its modules.

What a classified request is (:class:`RouteKind`), what it would do (:class:`Capability`), what
it names (:class:`ResourceRef`, :class:`RouteTarget`), the identifier checks, and the small
constructors every route handler uses (:mod:`authsvc.orthanc.routes` for the classifier and the
Orthanc core routes, :mod:`authsvc.orthanc.routes_dicomweb` for DICOMweb, WADO-URI and viewers).
Callers import these names from :mod:`authsvc.orthanc.routes`, which re-exports them. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "MAX_URI_LENGTH",
    "Capability",
    "IdKind",
    "Level",
    "Query",
    "ResourceRef",
    "RouteFamily",
    "RouteKind",
    "RouteTarget",
    "is_dicom_uid",
    "is_orthanc_id",
]

#: Longest request URI classified; longer ones are malformed. Generous for QIDO queries.
MAX_URI_LENGTH = 8192


class RouteKind(StrEnum):
    """What sort of route a request is, as far as authorization is concerned."""

    #: Names specific resources (``RouteTarget.resources``); decided per study.
    RESOURCE = "resource"
    #: Touches data that a yes/no per study cannot bound (lists, queries, uploads, bodies).
    SERVER_WIDE = "server-wide"
    #: No patient data: UI files, viewer shells, ``/system``, caller-scoped plugin routes.
    STATIC = "static"
    #: Orthanc administration.
    ADMIN_ONLY = "admin-only"
    #: Well-formed, but not a route this module knows.
    UNKNOWN = "unknown"
    #: Odd or ambiguous input; never forwarded.
    MALFORMED = "malformed"


class Capability(StrEnum):
    """What the request would do to what it touches."""

    READ = "read"
    WRITE = "write"
    MODIFY = "modify"
    DELETE = "delete"


class Level(StrEnum):
    """Orthanc resource levels, spelled as the plugin spells them."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class IdKind(StrEnum):
    """Which identifier a :class:`ResourceRef` carries (the plugin's field names)."""

    ORTHANC_ID = "orthanc-id"
    DICOM_UID = "dicom-uid"


class RouteFamily(StrEnum):
    """The route family a request belongs to: for logs, audit details and tests."""

    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    ROOT = "root"
    ORTHANC_EXPLORER = "orthanc-explorer"
    OE2_APP = "oe2-app"
    OE2_API = "oe2-api"
    STONE_VIEWER = "stone-viewer"
    OHIF_VIEWER = "ohif-viewer"
    VOLVIEW_VIEWER = "volview-viewer"
    LEGACY_VIEWER = "legacy-viewer"
    REST_LIST = "rest-list"
    REST_RESOURCE = "rest-resource"
    REST_UPLOAD = "rest-upload"
    DICOMWEB_QIDO = "dicomweb-qido"
    DICOMWEB_WADO = "dicomweb-wado"
    DICOMWEB_STOW = "dicomweb-stow"
    DICOMWEB_SERVERS = "dicomweb-servers"
    WADO_URI = "wado-uri"
    TOOLS_QUERY = "tools-query"
    TOOLS_ARCHIVE = "tools-archive"
    TOOLS_BULK = "tools-bulk"
    TOOLS_UPLOAD = "tools-upload"
    TOOLS_HARMLESS = "tools-harmless"
    TOOLS_ADMIN = "tools-admin"
    CHANGES = "changes"
    STATISTICS = "statistics"
    SYSTEM = "system"
    PLUGINS = "plugins"
    ORTHANC_ADMIN = "orthanc-admin"
    AUTH_PLUGIN = "auth-plugin"


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """One resource a request names.

    ``level`` is None when the URI does not say (``/tools/create-archive?resources=``: Orthanc
    detects the level of each id itself). ``study_uid`` is the StudyInstanceUID the URI puts
    around a DICOMweb/WADO-URI series or instance; it is a hint only. Authorise on the study
    that owns the resource named by ``identifier`` (a server may not check that the path's
    study really contains it). A patient spans studies: every one of them must pass.
    """

    level: Level | None
    identifier: str
    id_kind: IdKind
    study_uid: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """The answer of :func:`classify`. For RESOURCE targets, every entry of ``resources`` must
    be allowed. ``capability`` is meaningless for MALFORMED targets; ``reason`` says why a
    target is MALFORMED (safe to log: it never echoes the URI)."""

    kind: RouteKind
    capability: Capability
    family: RouteFamily
    resources: tuple[ResourceRef, ...] = ()
    reason: str = ""

    @property
    def level(self) -> Level | None:
        """Return the level of the only resource, or None unless exactly one is named."""
        return self.resources[0].level if len(self.resources) == 1 else None

    @property
    def identifier(self) -> str | None:
        """Return the identifier of the only resource, or None unless exactly one is named."""
        return self.resources[0].identifier if len(self.resources) == 1 else None

    @property
    def id_kind(self) -> IdKind | None:
        """Return which identifier the only resource carries, or None unless exactly one."""
        return self.resources[0].id_kind if len(self.resources) == 1 else None


# --- identifiers ---------------------------------------------------------------------------

# Orthanc ids are SHA-1 digests printed as five dash-separated groups of 8 lower-case hex
# digits. Orthanc itself never prints upper case, so an upper-case id is an odd input.
_ORTHANC_ID_RE = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
# DICOM UIDs: dot-separated digit groups, at most 64 characters (PS3.5 §9.1). Wildcards,
# lists and empty components fail this and so never count as naming one resource.
_DICOM_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX_LENGTH = 64


def is_orthanc_id(text: str) -> bool:
    """Return True if ``text`` is shaped like an Orthanc resource id."""
    return _ORTHANC_ID_RE.fullmatch(text) is not None


def is_dicom_uid(text: str) -> bool:
    """Return True if ``text`` is a plain DICOM UID (no wildcard, no list, ≤ 64 characters)."""
    return len(text) <= _UID_MAX_LENGTH and _DICOM_UID_RE.fullmatch(text) is not None


_READ_METHODS = frozenset({"GET", "HEAD"})
_METHOD_CAPABILITY: Mapping[str, Capability] = MappingProxyType(
    {
        "GET": Capability.READ,
        "HEAD": Capability.READ,
        "POST": Capability.WRITE,
        "PUT": Capability.MODIFY,
        "DELETE": Capability.DELETE,
    }
)

Query = tuple[tuple[str, str], ...]
_Handler = Callable[[str, tuple[str, ...], Query], "RouteTarget"]


class _Malformed(Exception):
    """Internal: raised while classifying to answer MALFORMED with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _values(query: Query, name: str) -> list[str]:
    """Return every value of parameter ``name`` (exact spelling), in order."""
    return [value for key, value in query if key == name]


def _split_list(values: Iterable[str]) -> list[str]:
    """Return the comma-separated items of all ``values``, without empty items."""
    return [item for value in values for item in value.split(",") if item]


def _target(
    kind: RouteKind,
    capability: Capability,
    family: RouteFamily,
    resources: tuple[ResourceRef, ...] = (),
) -> RouteTarget:
    """Build a RouteTarget (short alias used by the route handlers)."""
    return RouteTarget(kind, capability, family, resources)


def _unknown(method: str) -> RouteTarget:
    """Return the UNKNOWN target for ``method``."""
    return _target(RouteKind.UNKNOWN, _METHOD_CAPABILITY[method], RouteFamily.UNKNOWN)


def _admin(method: str, family: RouteFamily) -> RouteTarget:
    """Return an ADMIN_ONLY target."""
    return _target(RouteKind.ADMIN_ONLY, _METHOD_CAPABILITY[method], family)


def _static(method: str, family: RouteFamily) -> RouteTarget:
    """Return STATIC for reads; other methods on static families are unknown routes."""
    if method in _READ_METHODS:
        return _target(RouteKind.STATIC, Capability.READ, family)
    return _unknown(method)


def _server_wide(capability: Capability, family: RouteFamily) -> RouteTarget:
    """Return a SERVER_WIDE target."""
    return _target(RouteKind.SERVER_WIDE, capability, family)


def _resource(capability: Capability, family: RouteFamily, *refs: ResourceRef) -> RouteTarget:
    """Return a RESOURCE target naming ``refs``."""
    return _target(RouteKind.RESOURCE, capability, family, refs)


def _orthanc_ref(level: Level | None, identifier: str) -> ResourceRef:
    """Return a reference by Orthanc id, or raise _Malformed if the id is not one."""
    if not is_orthanc_id(identifier):
        raise _Malformed("not an Orthanc identifier")
    return ResourceRef(level, identifier, IdKind.ORTHANC_ID)


def _uid(text: str) -> str:
    """Return ``text`` if it is a DICOM UID, else raise _Malformed."""
    if not is_dicom_uid(text):
        raise _Malformed("not a DICOM UID")
    return text
