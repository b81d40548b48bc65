"""Unit tests for authsvc.orthanc.study_labels: resource → study resolution and the label cache."""

from __future__ import annotations

from typing import Any

import pytest
import requests_mock as rm

from authsvc.errors import OrthancUnavailable
from authsvc.orthanc import OrthancClient
from authsvc.orthanc import OrthancServer
from authsvc.orthanc.routes import IdKind
from authsvc.orthanc.routes import Level
from authsvc.orthanc.routes import ResourceRef
from authsvc.orthanc.study_labels import StudyFacts
from authsvc.orthanc.study_labels import StudyLabelCache

pytestmark = pytest.mark.unit

BASE = "http://orthanc.test"
STUDY = "11111111-22222222-33333333-44444444-55555555"
OTHER = "66666666-77777777-88888888-99999999-aaaaaaaa"
SERIES = "bbbbbbbb-cccccccc-dddddddd-eeeeeeee-ffffffff"
UID = "1.2.3.4"


def study_doc(
    study_id: str = STUDY, labels: list[str] | None = None, uid: str = UID
) -> dict[str, Any]:
    return {"ID": study_id, "Labels": labels or [], "MainDicomTags": {"StudyInstanceUID": uid}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> OrthancClient:
    return OrthancClient(OrthancServer("srv", BASE, retries=0), backoff=0)


def test_study_labels_are_cached_until_the_ttl(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    clock = Clock()
    cache = StudyLabelCache(ttl=5, clock=clock)
    route = requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["a"]))
    assert cache.study(client, STUDY) == StudyFacts(STUDY, UID, frozenset({"a"}))
    clock.now += 4.9
    cache.study(client, STUDY)
    assert route.call_count == 1
    clock.now += 0.2
    route = requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["a", "b"]))
    assert cache.study(client, STUDY).labels == frozenset({"a", "b"})  # type: ignore[union-attr]


def test_invalidate_drops_one_study_at_once(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    cache = StudyLabelCache(ttl=60)
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["a"]))
    assert cache.study(client, STUDY).labels == {"a"}  # type: ignore[union-attr]
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=[]))
    assert cache.study(client, STUDY).labels == {"a"}  # type: ignore[union-attr]
    cache.invalidate(STUDY, "other-server")  # another server's entry: no effect here
    assert cache.study(client, STUDY).labels == {"a"}  # type: ignore[union-attr]
    cache.invalidate(STUDY, "srv")
    assert cache.study(client, STUDY).labels == frozenset()  # type: ignore[union-attr]


def test_unknown_study_is_none_and_not_cached(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    cache = StudyLabelCache()
    route = requests_mock.get(f"{BASE}/studies/{STUDY}", status_code=404, json={})
    assert cache.study(client, STUDY) is None
    assert cache.study(client, STUDY) is None
    assert route.call_count == 2


def test_series_by_orthanc_id_resolves_to_its_study(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    cache = StudyLabelCache()
    parent = requests_mock.get(f"{BASE}/series/{SERIES}/study", json=study_doc(labels=["x"]))
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["x"]))
    ref = ResourceRef(Level.SERIES, SERIES, IdKind.ORTHANC_ID)
    assert [s.study_id for s in cache.studies_of(client, ref)] == [STUDY]
    cache.studies_of(client, ref)
    assert parent.call_count == 1  # the owner of a series never changes: cached


def test_unknown_level_tries_each_level(client: OrthancClient, requests_mock: rm.Mocker) -> None:
    cache = StudyLabelCache()
    requests_mock.get(f"{BASE}/studies/{SERIES}", status_code=404, json={})
    requests_mock.get(f"{BASE}/series/{SERIES}/study", json=study_doc())
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc())
    ref = ResourceRef(None, SERIES, IdKind.ORTHANC_ID)
    assert [s.study_id for s in cache.studies_of(client, ref)] == [STUDY]


def test_patient_spans_all_its_studies(client: OrthancClient, requests_mock: rm.Mocker) -> None:
    cache = StudyLabelCache()
    requests_mock.get(f"{BASE}/patients/{SERIES}", json={"Studies": [STUDY, OTHER]})
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc())
    requests_mock.get(f"{BASE}/studies/{OTHER}", json=study_doc(OTHER, uid="9.9"))
    ref = ResourceRef(Level.PATIENT, SERIES, IdKind.ORTHANC_ID)
    assert [s.study_id for s in cache.studies_of(client, ref)] == [STUDY, OTHER]


def test_dicom_uid_of_a_study_uses_tools_find(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    cache = StudyLabelCache()
    find = requests_mock.post(f"{BASE}/tools/find", json=[STUDY])
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["l"]))
    ref = ResourceRef(Level.STUDY, UID, IdKind.DICOM_UID, UID)
    assert cache.studies_of(client, ref)[0].labels == {"l"}
    assert find.last_request.json() == {
        "Level": "Study",
        "Query": {"StudyInstanceUID": UID},
        "Expand": False,
    }


def test_dicomweb_series_counts_the_path_study_too(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    """A series of study A addressed under study B's UID is judged on A and B."""

    def find(request: Any, context: Any) -> list[str]:
        query = request.json()["Query"]
        if "SeriesInstanceUID" in query:
            return [SERIES]
        return [OTHER] if query["StudyInstanceUID"] == "9.9" else []

    cache = StudyLabelCache()
    requests_mock.post(f"{BASE}/tools/find", json=find)
    requests_mock.get(f"{BASE}/series/{SERIES}/study", json=study_doc())
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["a"]))
    requests_mock.get(f"{BASE}/studies/{OTHER}", json=study_doc(OTHER, labels=["b"], uid="9.9"))
    ref = ResourceRef(Level.SERIES, "5.6.7", IdKind.DICOM_UID, "9.9")
    assert [s.study_id for s in cache.studies_of(client, ref)] == [STUDY, OTHER]


def test_unknown_uid_resolves_to_nothing(client: OrthancClient, requests_mock: rm.Mocker) -> None:
    cache = StudyLabelCache()
    requests_mock.post(f"{BASE}/tools/find", json=[])
    ref = ResourceRef(Level.INSTANCE, "1.2", IdKind.DICOM_UID, None)
    assert cache.studies_of(client, ref) == ()


def test_orthanc_down_raises_and_caches_nothing(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    cache = StudyLabelCache()
    requests_mock.get(f"{BASE}/studies/{STUDY}", status_code=503)
    with pytest.raises(OrthancUnavailable):
        cache.study(client, STUDY)
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["ok"]))
    assert cache.study(client, STUDY).labels == {"ok"}  # type: ignore[union-attr]


def test_label_writes_through_the_client_invalidate_at_once(
    client: OrthancClient, requests_mock: rm.Mocker
) -> None:
    """Album edits, uploads and reconcile change labels through the client: the cache hears it."""
    cache = StudyLabelCache(ttl=60)
    cache.listen_to([client])
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=[]))
    assert cache.study(client, STUDY).labels == frozenset()  # type: ignore[union-attr]
    requests_mock.put(f"{BASE}/studies/{STUDY}/labels/album-x", text="")
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=["album-x"]))
    client.add_label(STUDY, "album-x")
    assert cache.study(client, STUDY).labels == {"album-x"}  # type: ignore[union-attr]
    requests_mock.delete(f"{BASE}/studies/{STUDY}/labels/album-x", status_code=503)
    requests_mock.get(f"{BASE}/studies/{STUDY}", json=study_doc(labels=[]))
    with pytest.raises(OrthancUnavailable):
        client.remove_label(STUDY, "album-x")  # a failed write may still have happened
    assert cache.study(client, STUDY).labels == frozenset()  # type: ignore[union-attr]
