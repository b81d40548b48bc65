"""The gate's decision table: a few hundred Orthanc URIs × callers → study touched and answer.

Each URI of every route family is built for three studies (A in album A, B in album B, C under
a role-config label), classified by the real :mod:`authsvc.orthanc.routes`, resolved by a fake
label cache standing in for Orthanc, and decided by :class:`authsvc.orthanc.gate.GateEngine` with
the real policy. The table says, per URI, which study it touches and which callers may pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pytest

from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.orthanc.gate import Caller
from authsvc.orthanc.gate import GateEngine
from authsvc.orthanc.gate import best_album_role
from authsvc.orthanc.routes import DEFAULT_CLASSIFIER
from authsvc.orthanc.routes import IdKind
from authsvc.orthanc.routes import Level
from authsvc.orthanc.routes import ResourceRef
from authsvc.orthanc.study_labels import StudyFacts
from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import TokenKind

pytestmark = pytest.mark.unit

LABEL_A = "album-aaaaaaaaaaaaaaaaaaaaaaaaaa"
LABEL_B = "album-bbbbbbbbbbbbbbbbbbbbbbbbbb"


@dataclass(frozen=True)
class FakeStudy:
    """Every identifier of one study with one series and one instance."""

    key: str
    patient: str
    study: str
    series: str
    instance: str
    study_uid: str
    series_uid: str
    instance_uid: str
    labels: frozenset[str]

    @property
    def facts(self) -> StudyFacts:
        return StudyFacts(self.study, self.study_uid, self.labels)


def _oid(level: str, digit: str) -> str:
    return "-".join([level + digit * 7] * 5)


def _study(key: str, digit: str, labels: set[str]) -> FakeStudy:
    n = ord(key) - ord("A") + 1
    return FakeStudy(
        key=key,
        patient=_oid("1", digit),
        study=_oid("2", digit),
        series=_oid("3", digit),
        instance=_oid("4", digit),
        study_uid=f"1.2.826.0.1.{n}",
        series_uid=f"1.2.826.0.1.{n}.1",
        instance_uid=f"1.2.826.0.1.{n}.1.1",
        labels=frozenset(labels),
    )


STUDIES = {
    "A": _study("A", "a", {LABEL_A}),
    "B": _study("B", "b", {LABEL_B}),
    "C": _study("C", "c", {"lab"}),
}
MISSING = _study("Z", "e", set())


class FakeCache:
    """Stands in for StudyLabelCache: resolves every identifier of the fake studies."""

    def __init__(self) -> None:
        self.index: dict[tuple[IdKind, str], StudyFacts] = {}
        self.calls = 0
        self.fail: Exception | None = None
        for s in STUDIES.values():
            for oid in (s.patient, s.study, s.series, s.instance):
                self.index[(IdKind.ORTHANC_ID, oid)] = s.facts
            for uid in (s.study_uid, s.series_uid, s.instance_uid):
                self.index[(IdKind.DICOM_UID, uid)] = s.facts

    def studies_of(self, client: Any, ref: ResourceRef) -> tuple[StudyFacts, ...]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        found = self.index.get((ref.id_kind, ref.identifier))
        return (found,) if found is not None else ()


def _engine(cache: FakeCache | None = None) -> tuple[GateEngine, FakeCache]:
    cache = cache or FakeCache()
    return GateEngine(DEFAULT_CLASSIFIER, cache, lambda: object()), cache  # type: ignore[arg-type]


def _roles(**by_label: AlbumRole) -> MappingProxyType[str, AlbumRole]:
    return MappingProxyType(dict(by_label))


CALLERS: dict[str, Caller] = {
    "anonymous": Caller(Actor("")),
    "outsider": Caller(Actor("u-out")),
    "viewer_a": Caller(Actor("u-v"), album_roles=_roles(**{LABEL_A: AlbumRole.VIEWER})),
    "contrib_a": Caller(Actor("u-c"), album_roles=_roles(**{LABEL_A: AlbumRole.CONTRIBUTOR})),
    "manager_a": Caller(Actor("u-m"), album_roles=_roles(**{LABEL_A: AlbumRole.MANAGER})),
    "manager_a_modify": Caller(
        Actor("u-mm", permissions=frozenset({"modify"})),
        album_roles=_roles(**{LABEL_A: AlbumRole.MANAGER}),
    ),
    "viewer_b_owner_a": Caller(
        Actor("u-vo"),
        album_roles=_roles(**{LABEL_B: AlbumRole.VIEWER, LABEL_A: AlbumRole.OWNER}),
    ),
    "label_user": Caller(
        Actor("u-l", permissions=frozenset({"view"})), role_labels=frozenset({"lab"})
    ),
    "sees_all": Caller(
        Actor("u-all", permissions=frozenset({"view"}), sees_all_studies=True),
        role_labels=frozenset({"*"}),
    ),
    "admin": Caller(Actor("u-admin", is_global_admin=True)),
    "token_a": Caller(Actor(""), token_kind=TokenKind.ALBUM_READ, token_album_label=LABEL_A),
    # A share link of study A (whatever album it is in).
    "share_a": Caller(
        Actor(""),
        token_kind=TokenKind.SHARE_LINK,
        token_covers=lambda s: s.study_id == STUDIES["A"].study,
    ),
}
TOKENS = {"token_a", "share_a"}

# Who passes, per kind of request and study key.
ALBUM_A_READERS = {"viewer_a", "contrib_a", "manager_a", "manager_a_modify", "viewer_b_owner_a"}


def readers(key: str) -> set[str]:
    base = {"admin", "sees_all"}
    if key == "A":
        return base | ALBUM_A_READERS | TOKENS
    if key == "B":
        return base | {"viewer_b_owner_a"}
    if key == "C":
        return base | {"label_user"}
    return {"admin"}


def writers(key: str) -> set[str]:
    if key == "A":
        return {"admin", "contrib_a", "manager_a", "manager_a_modify", "viewer_b_owner_a"}
    return {"admin"}


def modifiers(key: str) -> set[str]:
    return {"admin", "manager_a_modify"} if key == "A" else {"admin"}


ADMIN_ONLY = {"admin"}
EVERYONE = set(CALLERS)
NOBODY: set[str] = set()
LISTERS = {"admin", "sees_all"}

# (method, uri template, who passes given the study key, whether the study is touched)
Row = tuple[str, str, Callable[[str], set[str]], bool]

READ_TEMPLATES = [
    "/studies/{study}",
    "/studies/{study}/archive",
    "/studies/{study}/media",
    "/studies/{study}/series",
    "/studies/{study}/instances",
    "/studies/{study}/shared-tags?simplify",
    "/studies/{study}/labels",
    "/studies/{study}/statistics",
    "/series/{series}",
    "/series/{series}/archive",
    "/series/{series}/study",
    "/series/{series}/ordered-slices",
    "/instances/{instance}",
    "/instances/{instance}/file",
    "/instances/{instance}/preview",
    "/instances/{instance}/simplified-tags",
    "/instances/{instance}/frames/0/rendered",
    "/instances/{instance}/tags?simplify",
    "/patients/{patient}",
    "/patients/{patient}/archive",
    "/dicom-web/studies/{study_uid}",
    "/dicom-web/studies/{study_uid}/metadata",
    "/dicom-web/studies/{study_uid}/series",
    "/dicom-web/studies/{study_uid}/rendered",
    "/dicom-web/studies/{study_uid}/thumbnail",
    "/dicom-web/studies/{study_uid}/series/{series_uid}",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/metadata",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/1",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/1,2",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/1/rendered",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/thumbnail",
    "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/rendered",
    "/dicom-web/studies?StudyInstanceUID={study_uid}",
    "/dicom-web/series?StudyInstanceUID={study_uid}",
    "/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={instance_uid}",
    "/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}"
    "&objectUID={instance_uid}&contentType=application/dicom",
    "/stone-webviewer/index.html?study={study_uid}",
    "/ohif/viewer?StudyInstanceUIDs={study_uid}",
    "/ohif/viewer?url=../studies/{study}/ohif-dicom-json",
    "/volview/index.html?urls=[../studies/{study}/archive]",
    "/web-viewer/series/{series}",
    "/osimis-viewer/studies/{study}",
    "/wsi/pyramids/{series}",
    "/tools/create-archive?resources={study}",
    "/tools/create-media?resources={series}",
]
POST_READ_TEMPLATES = ["/studies/{study}/archive", "/series/{series}/media"]
MODIFY_TEMPLATES = [
    ("POST", "/studies/{study}/modify"),
    ("POST", "/studies/{study}/anonymize"),
    ("POST", "/studies/{study}/split"),
    ("POST", "/series/{series}/modify"),
    ("POST", "/instances/{instance}/anonymize"),
    ("PUT", "/instances/{instance}/metadata/1024"),
    ("DELETE", "/studies/{study}/metadata/1024"),
]
WRITE_TEMPLATES = [("POST", "/dicom-web/studies/{study_uid}")]
DELETE_TEMPLATES = [
    "/studies/{study}",
    "/series/{series}",
    "/instances/{instance}",
    "/patients/{patient}",
]
ADMIN_TEMPLATES = [
    ("PUT", "/studies/{study}/labels/x"),
    ("DELETE", "/studies/{study}/labels/" + LABEL_A),
    ("PUT", "/studies/{study}/attachments/1025"),
    ("POST", "/studies/{study}/reconstruct"),
    ("PUT", "/studies/{study}/protected"),
    ("POST", "/instances/{instance}/export"),
    ("POST", "/studies/{study}/merge"),
]

FIXED: list[tuple[str, str, set[str]]] = [
    # static assets and harmless routes: everyone, anonymous included
    ("GET", "/", EVERYONE),
    ("GET", "/app/explorer.html", EVERYONE),
    ("GET", "/app/libs/jquery.min.js", EVERYONE),
    ("GET", "/ui/app/index.html", EVERYONE),
    ("GET", "/ui/app/assets/index-abc123.js", EVERYONE),
    ("GET", "/ui/api/configuration", EVERYONE),
    ("GET", "/ui/api/pre-login-configuration", EVERYONE),
    ("GET", "/stone-webviewer/index.html", EVERYONE),
    ("GET", "/stone-webviewer/stone.js", EVERYONE),
    ("GET", "/ohif/", EVERYONE),
    ("GET", "/ohif/app-config.js", EVERYONE),
    ("GET", "/volview/index.html", EVERYONE),
    ("GET", "/system", EVERYONE),
    ("GET", "/plugins", EVERYONE),
    ("GET", "/plugins/explorer.js", EVERYONE),
    ("GET", "/tools/generate-uid?level=study", EVERYONE),
    ("GET", "/favicon.ico", EVERYONE),
    # listing and search: only callers who see everything
    ("GET", "/studies", LISTERS),
    ("GET", "/studies?expand", LISTERS),
    ("GET", "/patients", LISTERS),
    ("GET", "/series", LISTERS),
    ("GET", "/instances", LISTERS),
    ("POST", "/tools/find", LISTERS),
    ("POST", "/tools/count-resources", LISTERS),
    ("POST", "/tools/lookup", LISTERS),
    ("GET", "/tools/labels", LISTERS),
    ("GET", "/changes", LISTERS),
    ("GET", "/changes?since=0&limit=100", LISTERS),
    ("GET", "/exports", LISTERS),
    ("GET", "/statistics", LISTERS),
    ("GET", "/dicom-web/studies", LISTERS),
    ("GET", "/dicom-web/studies?PatientName=Doe*", LISTERS),
    ("GET", "/dicom-web/studies?limit=10&offset=5", LISTERS),
    ("GET", "/dicom-web/series", LISTERS),
    ("GET", "/dicom-web/instances", LISTERS),
    ("GET", "/dicom-web/studies?StudyInstanceUID=1.2.826.0.1.1,1.2.826.0.1.2", LISTERS),
    ("GET", "/dicom-web/studies?StudyInstanceUID=1.2.*", LISTERS),
    ("POST", "/tools/create-archive", LISTERS),
    ("POST", "/tools/bulk-content", LISTERS),
    # uploads to Orthanc at large: the "upload" permission alone (none of our callers but admin)
    ("POST", "/instances", ADMIN_ONLY),
    ("POST", "/dicom-web/studies", ADMIN_ONLY),
    ("POST", "/tools/create-dicom", ADMIN_ONLY),
    # administration
    ("POST", "/tools/bulk-delete", ADMIN_ONLY),
    ("POST", "/tools/bulk-modify", ADMIN_ONLY),
    ("POST", "/tools/execute-script", ADMIN_ONLY),
    ("POST", "/tools/reset", ADMIN_ONLY),
    ("POST", "/tools/shutdown", ADMIN_ONLY),
    ("GET", "/jobs", ADMIN_ONLY),
    ("POST", "/jobs/abc/cancel", ADMIN_ONLY),
    ("GET", "/modalities", ADMIN_ONLY),
    ("POST", "/modalities/pacs/store", ADMIN_ONLY),
    ("GET", "/peers", ADMIN_ONLY),
    ("GET", "/queries", ADMIN_ONLY),
    ("GET", "/dicom-web/servers", ADMIN_ONLY),
    ("GET", "/auth/settings/roles", ADMIN_ONLY),
    ("GET", "/ui/api/something-else", ADMIN_ONLY),
    ("PUT", "/system", ADMIN_ONLY),
    ("GET", "/not-an-orthanc-route", ADMIN_ONLY),
    ("DELETE", "/changes", ADMIN_ONLY),
    # malformed: nobody, admins included
    ("GET", "/studies/../system", NOBODY),
    ("GET", "/studies/%2e%2e/system", NOBODY),
    ("GET", "//studies", NOBODY),
    ("GET", "/studies/" + STUDIES["A"].study + "/./archive", NOBODY),
    ("GET", "/Studies/" + STUDIES["A"].study, NOBODY),
    ("GET", "/studies/" + STUDIES["A"].study.upper(), NOBODY),
    ("GET", "/studies/not-an-id", NOBODY),
    ("GET", "/dicom-web/studies/1.2.*", NOBODY),
    ("GET", "/dicom-web/Studies", NOBODY),
    ("GET", "/dicom-web/studies?Study%49nstanceUID=1.2.3", NOBODY),
    ("GET", "/wado?requestType=WADO&studyUID=1.2&seriesUID=1.2.3", NOBODY),
    ("PATCH", "/studies", NOBODY),
    ("get", "/studies", NOBODY),
    ("GET", "/studies;x=1", NOBODY),
    ("GET", "relative/path", NOBODY),
]


def _fmt(template: str, s: FakeStudy) -> str:
    return template.format(
        patient=s.patient,
        study=s.study,
        series=s.series,
        instance=s.instance,
        study_uid=s.study_uid,
        series_uid=s.series_uid,
        instance_uid=s.instance_uid,
    )


def _rows() -> list[tuple[str, str, str | None, set[str]]]:
    """(method, uri, study key touched or None, callers who pass)."""
    rows: list[tuple[str, str, str | None, set[str]]] = []
    for key, s in [*STUDIES.items(), ("Z", MISSING)]:
        for template in READ_TEMPLATES:
            rows.append(("GET", _fmt(template, s), key, readers(key)))
            rows.append(("HEAD", _fmt(template, s), key, readers(key)))
        for template in POST_READ_TEMPLATES:
            rows.append(("POST", _fmt(template, s), key, readers(key) - TOKENS))
        for method, template in WRITE_TEMPLATES:
            rows.append((method, _fmt(template, s), key, writers(key)))
        for method, template in MODIFY_TEMPLATES:
            rows.append((method, _fmt(template, s), key, modifiers(key)))
        for template in DELETE_TEMPLATES:
            rows.append(("DELETE", _fmt(template, s), key, ADMIN_ONLY))
        for method, template in ADMIN_TEMPLATES:
            rows.append((method, _fmt(template, s), None, ADMIN_ONLY))
    for method, uri, allowed in FIXED:
        rows.append((method, uri, None, allowed))
    return rows


ROWS = _rows()


def test_the_table_is_big_enough() -> None:
    """The issue asks for a few hundred URIs across every route family."""
    assert len({(m, u) for m, u, _, _ in ROWS}) >= 300
    families = {DEFAULT_CLASSIFIER.classify(m, u).family for m, u, _, _ in ROWS}
    assert len(families) >= 25


@pytest.mark.parametrize(("method", "uri", "study_key", "allowed"), ROWS)
def test_decision_table(method: str, uri: str, study_key: str | None, allowed: set[str]) -> None:
    engine, _ = _engine()
    target = engine.classify(method, uri)
    for name, caller in CALLERS.items():
        answer = engine.answer(caller, method, target)
        expected = name in allowed
        assert answer.allowed is expected, (name, method, uri, answer)
        if not expected:
            malformed = not allowed and name == "anonymous" and target.family == "malformed"
            want = 401 if name == "anonymous" and not malformed else 403
            assert answer.status == want, (name, method, uri, answer)
        if expected and study_key in STUDIES and name != "admin":
            # Every study-scoped pass names the study it was decided on.
            assert answer.studies == (STUDIES[study_key].study,), (name, uri, answer)


def test_admins_and_static_routes_need_no_orthanc_call() -> None:
    engine, cache = _engine()
    a = STUDIES["A"]
    for uri in (f"/studies/{a.study}", f"/dicom-web/studies/{a.study_uid}/metadata"):
        assert engine.answer(CALLERS["admin"], "GET", engine.classify("GET", uri)).allowed
    assert engine.answer(CALLERS["anonymous"], "GET", engine.classify("GET", "/app/x.js")).allowed
    # Non-admin deletes can never pass: no lookup either.
    target = engine.classify("DELETE", f"/studies/{a.study}")
    assert engine.answer(CALLERS["manager_a"], "DELETE", target).status == 403
    assert cache.calls == 0


@pytest.mark.parametrize(
    "failure", [OrthancUnavailable("down"), OrthancError("odd", orthanc_status=500)]
)
def test_orthanc_failure_is_a_403_with_a_reason(failure: Exception) -> None:
    engine, cache = _engine()
    cache.fail = failure
    target = engine.classify("GET", f"/studies/{STUDIES['A'].study}")
    answer = engine.answer(CALLERS["viewer_a"], "GET", target)
    assert answer.status == 403
    assert answer.reason.startswith("orthanc")


def test_no_orthanc_configured_is_a_403() -> None:
    engine = GateEngine(DEFAULT_CLASSIFIER, FakeCache(), lambda: None)  # type: ignore[arg-type]
    target = engine.classify("GET", f"/studies/{STUDIES['A'].study}")
    assert engine.answer(CALLERS["viewer_a"], "GET", target).status == 403


def test_every_resource_of_a_request_must_pass() -> None:
    """An archive of A and B together is refused to a member of A only."""
    engine, _ = _engine()
    a, b = STUDIES["A"], STUDIES["B"]
    uri = f"/tools/create-archive?resources={a.study},{b.study}"
    target = engine.classify("GET", uri)
    assert not engine.answer(CALLERS["viewer_a"], "GET", target).allowed
    assert engine.answer(CALLERS["viewer_b_owner_a"], "GET", target).allowed
    # One unknown resource among known ones: refused.
    uri = f"/tools/create-archive?resources={a.study},{MISSING.study}"
    assert not engine.answer(CALLERS["viewer_a"], "GET", engine.classify("GET", uri)).allowed


def test_best_album_role_takes_the_strongest() -> None:
    roles = {LABEL_A: AlbumRole.VIEWER, LABEL_B: AlbumRole.MANAGER}
    assert best_album_role(roles, frozenset({LABEL_A, LABEL_B})) is AlbumRole.MANAGER
    assert best_album_role(roles, frozenset({LABEL_A})) is AlbumRole.VIEWER
    assert best_album_role(roles, frozenset({"other"})) is None
    assert best_album_role({}, frozenset()) is None


def test_dicomweb_path_study_counts_too() -> None:
    """A series of A addressed under study B's UID is judged on both studies."""
    a, b = STUDIES["A"], STUDIES["B"]
    uri = f"/dicom-web/studies/{b.study_uid}/series/{a.series_uid}"
    target = DEFAULT_CLASSIFIER.classify("GET", uri)
    ref = target.resources[0]
    assert ref.level is Level.SERIES and ref.study_uid == b.study_uid
