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

The vocabulary (kinds, capabilities, targets, identifier checks) is in
:mod:`authsvc.orthanc.route_values` and the DICOMweb, WADO-URI and viewer routes are in
:mod:`authsvc.orthanc.routes_dicomweb`; this module holds the classifier, the Orthanc core and
plugin routes, and re-exports the public names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import unquote

from authsvc.orthanc.route_values import _METHOD_CAPABILITY
from authsvc.orthanc.route_values import _READ_METHODS
from authsvc.orthanc.route_values import MAX_URI_LENGTH
from authsvc.orthanc.route_values import Capability
from authsvc.orthanc.route_values import IdKind
from authsvc.orthanc.route_values import Level
from authsvc.orthanc.route_values import Query
from authsvc.orthanc.route_values import ResourceRef
from authsvc.orthanc.route_values import RouteFamily
from authsvc.orthanc.route_values import RouteKind
from authsvc.orthanc.route_values import RouteTarget
from authsvc.orthanc.route_values import _admin
from authsvc.orthanc.route_values import _Handler
from authsvc.orthanc.route_values import _Malformed
from authsvc.orthanc.route_values import _orthanc_ref
from authsvc.orthanc.route_values import _resource
from authsvc.orthanc.route_values import _server_wide
from authsvc.orthanc.route_values import _split_list
from authsvc.orthanc.route_values import _static
from authsvc.orthanc.route_values import _target
from authsvc.orthanc.route_values import _unknown
from authsvc.orthanc.route_values import _values
from authsvc.orthanc.route_values import is_dicom_uid
from authsvc.orthanc.route_values import is_orthanc_id
from authsvc.orthanc.routes_dicomweb import _dicomweb
from authsvc.orthanc.routes_dicomweb import _legacy_viewer
from authsvc.orthanc.routes_dicomweb import _ohif
from authsvc.orthanc.routes_dicomweb import _stone
from authsvc.orthanc.routes_dicomweb import _volview
from authsvc.orthanc.routes_dicomweb import _wado_uri

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

_MAX_SEGMENTS = 32
_MAX_QUERY_FIELDS = 64


# --- characters ----------------------------------------------------------------------------

# Path: what Orthanc's routes, ids, UIDs, frame lists and built UI assets need, nothing more.
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~,/")
# Query: printable ASCII except what browsers always percent-encode or what would change the
# meaning of the URI (#), plus no backslash.
_QUERY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('#"<>\\`')
_PARAM_NAME_RE = re.compile(r"[A-Za-z0-9_.,\-]+")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})

_REST_LEVELS: Mapping[str, Level] = MappingProxyType(
    {
        "patients": Level.PATIENT,
        "studies": Level.STUDY,
        "series": Level.SERIES,
        "instances": Level.INSTANCE,
    }
)

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
