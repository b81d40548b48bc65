"""authsvc.orthanc.routes: what an Orthanc request touches, for the nginx ``auth_request`` gate.

:func:`classify` (or :meth:`RouteClassifier.classify` for a configured prefix and roots) maps an
HTTP method and the raw request URI nginx saw to a :class:`RouteTarget`: which kind of route it
is, which resources it names, and which capability it needs. The policy
(:func:`authsvc.policy.gate_action`) turns that into an action and decides. This module does
no I/O: resolving an Orthanc id or a DICOM UID to its study and labels is the caller's job.

Route families covered (Orthanc 1.12 core, DICOMweb plugin, viewers, OE2, the authorization
plugin; the plugin's default ``Permissions`` table, protocol spec §4.5, lists the same families):

* REST resources ``/{patients|studies|series|instances}/{id}[/...]`` — every level and
  sub-route: reads (incl. ``/archive``, ``/media``, ``/file``), ``modify``/``anonymize``/``split``,
  ``merge`` (its body names other studies: server-wide), metadata writes, ``DELETE``; label edits
  and maintenance sub-routes are admin-only (album labels are set by authsvc, never by users);
* resource lists (``GET /studies``…), ``/tools/find``, ``/tools/count-resources``,
  ``/tools/lookup``, ``/tools/labels``, ``/changes``, ``/exports``, ``/statistics``: server-wide;
* ``/tools/create-archive|create-media|create-media-extended``: the resources of a GET's
  ``?resources=`` argument, server-wide when the list is in a (POST) body we cannot see;
* uploads ``POST /instances``, STOW-RS ``POST /dicom-web/studies``, ``/tools/create-dicom``:
  server-wide writes; STOW into a named study ``POST /dicom-web/studies/{uid}``: a study write;
* DICOMweb WADO-RS ``/dicom-web/studies/{uid}[/series/{uid}[/instances/{uid}]]/...``; QIDO at
  the root (``/dicom-web/studies|series|instances``) is server-wide unless it carries exactly
  one exact ``StudyInstanceUID``; WADO-URI
  ``/wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``;
* viewers: Stone (``/stone-webviewer/...?study=``), OHIF (``/ohif/...?StudyInstanceUIDs=`` or
  ``?url=../studies/{id}/ohif-dicom-json``), VolView
  (``/volview/...?urls=[../studies/{id}/archive]``) and the legacy Orthanc Web Viewer, WSI
  and Osimis viewer routes;
* static assets: ``/``, ``/app/...`` (Orthanc Explorer), ``/ui/app/...`` (OE2), viewer shells,
  plus ``/system``, ``/plugins``, ``/tools/generate-uid`` and the plugin's caller-scoped
  ``/auth/user/profile`` and ``/auth/tokens/decode`` (no patient data);
* admin-only: ``/jobs``, ``/modalities``, ``/peers``, ``/queries``, ``/worklists``, remaining
  ``/tools/*``, ``/auth/settings/*``, ``/auth/audit-logs``, ``/dicom-web/servers``, OE2's
  ``/ui/api/*`` beyond its configuration.

Anything else is :attr:`RouteKind.UNKNOWN`; anything odd is :attr:`RouteKind.MALFORMED`.

Path hygiene: nginx hands authsvc the raw URI, while Orthanc may receive a normalised one
(``proxy_pass`` with a URI part decodes ``%XX``, resolves ``..`` and merges slashes). A check on
one spelling and an access on another is the classic gate bypass, so only URIs whose raw and
normalised forms are identical are classified: no ``%`` in the path, no ``.``/``..`` or
dot-ended segments, no ``//``, no ``;`` parameters, no backslashes, no control or non-ASCII
characters, bounded length, methods in upper case only, case variants of known route names
refused. Query parameter *names* must be raw too (``Study%49nstanceUID`` would be a filter to us
and an unknown argument to Orthanc, which would then list every study).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from urllib.parse import unquote

__all__ = [
    "DEFAULT_CLASSIFIER",
    "MAX_URI_LENGTH",
    "Capability",
    "IdKind",
    "Level",
    "ResourceRef",
    "RouteClassifier",
    "RouteFamily",
    "RouteKind",
    "RouteTarget",
    "classify",
    "is_dicom_uid",
    "is_orthanc_id",
]

#: Longest request URI classified; longer ones are malformed. Generous for QIDO queries.
MAX_URI_LENGTH = 8192
_MAX_SEGMENTS = 32
_MAX_QUERY_FIELDS = 64


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
_FRAME_LIST_RE = re.compile(r"[0-9]+(?:,[0-9]+)*")
_LEGACY_INSTANCE_RE = re.compile(
    r"[a-z0-9]+-([0-9a-f]{8}(?:-[0-9a-f]{8}){4})_[0-9]+"
)  # Orthanc Web Viewer: "{compression}-{instance id}_{frame}"
_OHIF_JSON_URL_RE = re.compile(r"(?:^|/)studies/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})/ohif-dicom-json")
_VOLVIEW_URL_RE = re.compile(r"(?:^|/)studies/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})/archive")


def is_orthanc_id(text: str) -> bool:
    """Return True if ``text`` is shaped like an Orthanc resource id."""
    return _ORTHANC_ID_RE.fullmatch(text) is not None


def is_dicom_uid(text: str) -> bool:
    """Return True if ``text`` is a plain DICOM UID (no wildcard, no list, ≤ 64 characters)."""
    return len(text) <= _UID_MAX_LENGTH and _DICOM_UID_RE.fullmatch(text) is not None


# --- characters ----------------------------------------------------------------------------

# Path: what Orthanc's routes, ids, UIDs, frame lists and built UI assets need, nothing more.
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~,/")
# Query: printable ASCII except what browsers always percent-encode or what would change the
# meaning of the URI (#), plus no backslash.
_QUERY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('#"<>\\`')
_PARAM_NAME_RE = re.compile(r"[A-Za-z0-9_.,\-]+")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
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

_REST_LEVELS: Mapping[str, Level] = MappingProxyType(
    {
        "patients": Level.PATIENT,
        "studies": Level.STUDY,
        "series": Level.SERIES,
        "instances": Level.INSTANCE,
    }
)

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

Query = tuple[tuple[str, str], ...]

# Literal path segments routes are matched on below the first segment (see _parse).
_ROUTE_WORDS = frozenset(
    {
        "studies", "series", "instances", "patients", "metadata", "rendered", "thumbnail",
        "frames", "bulk", "servers", "archive", "media", "modify", "anonymize", "merge", "split",
        "labels", "attachments", "protected", "reconstruct", "export", "file", "tags",
        "simplified-tags", "pyramids", "tiles", "images", "custom-command", "is-stable-series",
        "find", "count-resources", "lookup", "create-archive", "create-media",
        "create-media-extended", "create-dicom", "bulk-delete", "bulk-modify", "bulk-anonymize",
        "bulk-content", "generate-uid", "now", "now-local", "execute-script", "app", "api",
        "configuration", "pre-login-configuration", "user", "profile", "tokens", "decode",
        "settings", "roles", "permissions", "audit-logs",
    }
)  # fmt: skip
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


# --- the classifier -------------------------------------------------------------------------


def _clean_root(root: str, what: str) -> tuple[str, ...]:
    """Return a configured URL root as path segments, or raise ValueError if it is odd."""
    stripped = root.strip("/")
    segments = tuple(stripped.split("/")) if stripped else ()
    if not segments or not all(re.fullmatch(r"[a-z0-9][a-z0-9_-]*", s) for s in segments):
        raise ValueError(f"{what} must be a path such as /dicom-web made of [a-z0-9_-]")
    return segments


class RouteClassifier:
    """Classify Orthanc request URIs; built once from configuration, then used per request."""

    def __init__(
        self,
        *,
        prefix: str = "",
        dicomweb_root: str = "/dicom-web",
        wado_uri_root: str = "/wado",
        max_uri_length: int = MAX_URI_LENGTH,
    ) -> None:
        """Configure the path prefix nginx mounts Orthanc under and the DICOMweb roots."""
        self._prefix = "/" + "/".join(_clean_root(prefix, "prefix")) if prefix.strip("/") else ""
        self._dicomweb = _clean_root(dicomweb_root, "dicomweb_root")
        self._wado_uri = _clean_root(wado_uri_root, "wado_uri_root")
        if max_uri_length < 64:
            raise ValueError("max_uri_length must be at least 64")
        self._max_uri_length = max_uri_length
        # First segments this classifier routes on; a case variant of one is a trick.
        firsts = {
            "app", "ui", "stone-webviewer", "ohif", "volview", "web-viewer", "wsi",
            "osimis-viewer", "tools", "system", "statistics", "changes", "exports", "plugins",
            "jobs", "modalities", "peers", "queries", "worklists", "storage-commitment",
            "transfers", "auth", "favicon.ico", *_REST_LEVELS,
            self._dicomweb[0], self._wado_uri[0],
        }  # fmt: skip
        # Every literal segment a route is matched on; a case variant of one (anywhere in the
        # path) is a trick: "/dicom-web/Studies/..." must not be classified as something else
        # than what a case-insensitive server behind nginx would serve.
        words = firsts | _ROUTE_WORDS | set(self._dicomweb) | set(self._wado_uri)
        self._words = frozenset(words)
        self._words_lower = frozenset(w.lower() for w in words)

    # -- entry point --------------------------------------------------------------------

    def classify(self, method: str, raw_uri: str) -> RouteTarget:
        """Return what ``method raw_uri`` touches; MALFORMED for anything odd."""
        capability = _METHOD_CAPABILITY.get(method, Capability.MODIFY)
        try:
            segments, query = self._parse(method, raw_uri)
            return self._route(method, segments, query)
        except _Malformed as exc:
            family = RouteFamily.MALFORMED
            return RouteTarget(RouteKind.MALFORMED, capability, family, (), exc.reason)

    # -- hygiene --------------------------------------------------------------------------

    def _parse(self, method: str, raw_uri: str) -> tuple[tuple[str, ...], Query]:
        """Return the path segments (prefix removed) and query pairs, or raise _Malformed."""
        if not isinstance(method, str) or method not in _METHODS:
            # HTTP methods are case-sensitive; "get" is not GET, and OPTIONS/TRACE/PATCH are
            # not used by any Orthanc client.
            raise _Malformed("unsupported method")
        if not isinstance(raw_uri, str) or not raw_uri:
            raise _Malformed("empty uri")
        if len(raw_uri) > self._max_uri_length:
            raise _Malformed("uri too long")
        path, sep, raw_query = raw_uri.partition("?")
        if not path.startswith("/"):
            raise _Malformed("uri is not an absolute path")
        if not _PATH_CHARS.issuperset(path):
            raise _Malformed("forbidden character in path")
        if "//" in path:
            raise _Malformed("empty path segment")
        if sep and not _QUERY_CHARS.issuperset(raw_query):
            raise _Malformed("forbidden character in query")

        if self._prefix:
            if path == self._prefix:
                path = "/"
            elif path.startswith(self._prefix + "/"):
                path = path[len(self._prefix) :]
            else:
                raise _Malformed("path outside the configured prefix")

        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]  # Orthanc accepts one trailing slash; "//" was refused above
        segments = tuple(path[1:].split("/")) if path != "/" else ()
        if len(segments) > _MAX_SEGMENTS:
            raise _Malformed("too many path segments")
        for segment in segments:
            # ".", "..", ".hidden", "name." (trailing dots vanish on some file systems).
            if segment.startswith(".") or segment.endswith("."):
                raise _Malformed("dot segment")
            if segment not in self._words and segment.lower() in self._words_lower:
                raise _Malformed("case variant of a route name")
        return segments, _parse_query(raw_query)

    # -- dispatch -------------------------------------------------------------------------

    def _route(self, method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
        """Dispatch on the first path segment(s)."""
        if not segs:
            return _static(method, RouteFamily.ROOT)
        head = segs[0]
        if head in _REST_LEVELS:
            return _rest(method, _REST_LEVELS[head], segs[1:])
        if segs[: len(self._dicomweb)] == self._dicomweb:
            return _dicomweb(method, segs[len(self._dicomweb) :], query)
        if segs == self._wado_uri:
            return _wado_uri(method, query)
        handler = _FIRST_SEGMENT.get(head)
        if handler is not None:
            return handler(method, segs, query)
        return _unknown(method)


def _parse_query(raw_query: str) -> Query:
    """Return ``(name, decoded value)`` pairs; names must be raw (see the module docstring)."""
    if not raw_query:
        return ()
    pairs: list[tuple[str, str]] = []
    for field in raw_query.split("&"):
        if not field:
            continue  # "a=1&&b=2" or a trailing "&": harmless, and common
        name, _, value = field.partition("=")
        if _PARAM_NAME_RE.fullmatch(name) is None:
            raise _Malformed("odd query parameter name")
        try:
            decoded = unquote(value.replace("+", " "), errors="strict")
        except UnicodeDecodeError as exc:
            raise _Malformed("query value is not UTF-8") from exc
        pairs.append((name, decoded))
        if len(pairs) > _MAX_QUERY_FIELDS:
            raise _Malformed("too many query parameters")
    return tuple(pairs)


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


# --- REST resources ---------------------------------------------------------------------------

_REST_POST_READ = frozenset({"archive", "media"})
_REST_POST_MODIFY = frozenset({"modify", "anonymize"})


def _rest(method: str, level: Level, rest: tuple[str, ...]) -> RouteTarget:
    """Classify ``/{patients|studies|series|instances}[/{id}[/...]]``."""
    if not rest:
        if method in _READ_METHODS:
            return _server_wide(Capability.READ, RouteFamily.REST_LIST)
        if method == "POST" and level is Level.INSTANCE:
            return _server_wide(Capability.WRITE, RouteFamily.REST_UPLOAD)
        return _unknown(method)
    ref = _orthanc_ref(level, rest[0])
    sub = rest[1:]
    family = RouteFamily.REST_RESOURCE
    if method in _READ_METHODS:
        return _resource(Capability.READ, family, ref)
    if not sub:
        if method == "DELETE":
            return _resource(Capability.DELETE, family, ref)
        return _unknown(method)
    if method == "POST" and len(sub) == 1:
        if sub[0] in _REST_POST_READ:
            return _resource(Capability.READ, family, ref)  # archive/media built on demand
        if sub[0] in _REST_POST_MODIFY or (level is Level.STUDY and sub[0] == "split"):
            return _resource(Capability.MODIFY, family, ref)
        if level is Level.STUDY and sub[0] == "merge":
            # The body names the series/studies to pull in: not visible here.
            return _server_wide(Capability.MODIFY, family)
    if method in ("PUT", "DELETE") and len(sub) == 2 and sub[0] == "metadata":
        return _resource(Capability.MODIFY, family, ref)
    # Labels (only authsvc sets album labels), attachments, protection, reconstruct, export…
    return _admin(method, family)


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


# --- tools and the rest ----------------------------------------------------------------------

_TOOLS_QUERY_POST = frozenset({"find", "count-resources", "lookup"})
_TOOLS_ARCHIVE = frozenset({"create-archive", "create-media", "create-media-extended"})
_TOOLS_HARMLESS_GET = frozenset({"generate-uid", "now", "now-local"})
_TOOLS_BULK: Mapping[str, Capability] = MappingProxyType(
    {
        "bulk-delete": Capability.DELETE,
        "bulk-modify": Capability.MODIFY,
        "bulk-anonymize": Capability.MODIFY,
        "bulk-content": Capability.READ,
    }
)


def _tools(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """Classify ``/tools/...``."""
    name = segs[1] if len(segs) == 2 else None
    read = method in _READ_METHODS
    if name in _TOOLS_QUERY_POST and method == "POST":
        return _server_wide(Capability.READ, RouteFamily.TOOLS_QUERY)
    if name == "labels" and read:
        return _server_wide(Capability.READ, RouteFamily.TOOLS_QUERY)
    if name in _TOOLS_HARMLESS_GET and read:
        return _static(method, RouteFamily.TOOLS_HARMLESS)
    if name in _TOOLS_ARCHIVE and (read or method == "POST"):
        ids = _split_list(_values(query, "resources"))
        if read and ids:
            refs = dict.fromkeys(_orthanc_ref(None, i) for i in ids)
            return _resource(Capability.READ, RouteFamily.TOOLS_ARCHIVE, *refs)
        return _server_wide(Capability.READ, RouteFamily.TOOLS_ARCHIVE)
    if name is not None and name in _TOOLS_BULK and method == "POST":
        return _server_wide(_TOOLS_BULK[name], RouteFamily.TOOLS_BULK)
    if name == "create-dicom" and method == "POST":
        return _server_wide(Capability.WRITE, RouteFamily.TOOLS_UPLOAD)
    # execute-script, reset, shutdown, log-level, invalidate-tags, metrics, accepted syntaxes…
    return _admin(method, RouteFamily.TOOLS_ADMIN)


def _single_read(kind: RouteKind, family: RouteFamily) -> _Handler:
    """Handler for one-segment routes: ``kind`` for reads, admin-only for writes."""

    def handler(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
        if len(segs) != 1:
            return _unknown(method)
        if method in _READ_METHODS:
            return _target(kind, Capability.READ, family)
        return _admin(method, family)

    return handler


def _plugins(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """``/plugins[/...]``: the plugin list and plugins' own JS; changes are admin-only."""
    if method in _READ_METHODS:
        return _static(method, RouteFamily.PLUGINS)
    return _admin(method, RouteFamily.PLUGINS)


def _orthanc_admin(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """Jobs, modalities, peers, queries, worklists, storage commitment, transfers."""
    return _admin(method, RouteFamily.ORTHANC_ADMIN)


def _static_tree(family: RouteFamily) -> _Handler:
    """Handler for a tree of static files (Orthanc Explorer, favicon)."""

    def handler(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
        return _static(method, family)

    return handler


_OE2_OPEN_API = frozenset({"configuration", "pre-login-configuration"})


def _oe2(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """Orthanc Explorer 2: ``/ui/app/...`` files, ``/ui/api/...`` endpoints."""
    if len(segs) == 1 or segs[1] == "app":
        return _static(method, RouteFamily.OE2_APP)
    if segs[1] == "api":
        if len(segs) == 3 and segs[2] in _OE2_OPEN_API:
            return _static(method, RouteFamily.OE2_API)
        return _admin(method, RouteFamily.OE2_API)
    return _unknown(method)


def _auth_plugin(method: str, segs: tuple[str, ...], query: Query) -> RouteTarget:
    """The authorization plugin's routes inside Orthanc (protocol spec §8)."""
    family = RouteFamily.AUTH_PLUGIN
    tail = segs[1:]
    if tail == ("user", "profile") and method in _READ_METHODS:
        return _target(RouteKind.STATIC, Capability.READ, family)
    if tail == ("tokens", "decode") and method == "POST":
        return _target(RouteKind.STATIC, Capability.READ, family)
    if len(tail) == 2 and tail[0] == "tokens" and tail[1] != "decode" and method == "PUT":
        # Creating a share link: the resources are in the body, so it cannot be bounded here.
        return _server_wide(Capability.READ, family)
    if tail[:1] == ("settings",) or tail == ("audit-logs",):
        return _admin(method, family)
    return _unknown(method)


# Dispatch table for every first segment other than the REST levels and the DICOMweb and
# WADO-URI roots (which are configurable and checked first).
_FIRST_SEGMENT: Mapping[str, _Handler] = MappingProxyType(
    {
        "favicon.ico": _static_tree(RouteFamily.ROOT),
        "app": _static_tree(RouteFamily.ORTHANC_EXPLORER),
        "ui": _oe2,
        "stone-webviewer": _stone,
        "ohif": _ohif,
        "volview": _volview,
        "web-viewer": _legacy_viewer,
        "wsi": _legacy_viewer,
        "osimis-viewer": _legacy_viewer,
        "tools": _tools,
        "system": _single_read(RouteKind.STATIC, RouteFamily.SYSTEM),
        "statistics": _single_read(RouteKind.SERVER_WIDE, RouteFamily.STATISTICS),
        "changes": _single_read(RouteKind.SERVER_WIDE, RouteFamily.CHANGES),
        "exports": _single_read(RouteKind.SERVER_WIDE, RouteFamily.CHANGES),
        "plugins": _plugins,
        "jobs": _orthanc_admin,
        "modalities": _orthanc_admin,
        "peers": _orthanc_admin,
        "queries": _orthanc_admin,
        "worklists": _orthanc_admin,
        "storage-commitment": _orthanc_admin,
        "transfers": _orthanc_admin,
        "auth": _auth_plugin,
    }
)

#: The classifier for an Orthanc mounted at ``/`` with default DICOMweb and WADO-URI roots.
DEFAULT_CLASSIFIER = RouteClassifier()


def classify(method: str, raw_uri: str) -> RouteTarget:
    """Classify with :data:`DEFAULT_CLASSIFIER` (no prefix, ``/dicom-web``, ``/wado``)."""
    return DEFAULT_CLASSIFIER.classify(method, raw_uri)
