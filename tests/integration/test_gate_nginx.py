"""The nginx gate and album DICOMweb, end to end: real nginx (nginx/gate.conf.template as
deployed), authsvc under gunicorn, the real Orthanc and users of the real OIDC provider.

Cast (scripts/testenv/idp/realm.json): bob is a global admin (realm role ``admin``); carol has
no role at all and is a *viewer* of album A; alice is a *manager* of album A (her ``doctor``
role grants nothing here: no roles configuration). Study A1 and A2 are in album A, study B in
album B, study C in no album.
"""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from flask import Flask

from authsvc import albums
from authsvc.app import create_app
from authsvc.credentials.sealing import generate_key
from authsvc.database import init_db
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.policy import Actor
from authsvc.services import services
from tests import deploy_kit
from tests import processes
from tests.dicom_factory import make_study

INSECURE_SECRET = "insecure-gate-test-secret-key-0123456789abcdef"
#: How long nginx may reuse a "yes" (short, so the revocation tests wait little).
GATE_CACHE_SECONDS = 2


@dataclass
class Study:
    """One study stored in Orthanc for these tests."""

    id: str
    uid: str
    series_uid: str
    instance_uid: str


@dataclass
class Env:
    """Everything the tests talk to."""

    base: str  # nginx, the only door
    orthanc: processes.OrthancService
    idp: processes.IdpService
    app: Flask
    album_a: str
    album_b: str
    studies: dict[str, Study]
    tokens: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {**(self.auth(user) if user else {}), **kwargs.pop("headers", {})}
        return requests.get(self.base + path, headers=headers, timeout=30, **kwargs)


def _store(orthanc: processes.OrthancService, description: str, n_instances: int = 2) -> Study:
    instances = make_study(n_series=1, n_instances=n_instances, study_description=description)
    answer: dict[str, Any] = {}
    for blob in instances:
        stored = requests.post(f"{orthanc.url}/instances", data=blob, timeout=30)
        stored.raise_for_status()
        answer = stored.json()
    ds = pydicom.dcmread(io.BytesIO(instances[-1]))
    return Study(
        answer["ParentStudy"], ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )


def _until(check: Callable[[], bool]) -> None:
    """Poll ``check`` until it holds; fail if nginx's decision cache keeps it longer."""
    limit = time.monotonic() + GATE_CACHE_SECONDS + 1.5
    while not check():
        assert time.monotonic() < limit, f"not seen within {GATE_CACHE_SECONDS}s + slack"
        time.sleep(0.2)


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: processes.OrthancService,
    idp: processes.IdpService,
) -> Iterator[Env]:
    state = tmp_path_factory.mktemp("gate")
    settings = {
        "env": "testing",
        "data_dir": str(state / "data"),
        "secret_key": INSECURE_SECRET,
        "orthanc_url": orthanc.url,
        "oidc_issuer": idp.issuer,
        "oidc_client_id": "authsvc",
        "admin_roles": "admin",
        "upload_token_keys": generate_key("it"),
        # nginx is the one proxy in front of authsvc: trust its X-Forwarded-* headers.
        "proxy_count": "1",
        "gate_cache_seconds": str(GATE_CACHE_SECONDS),
    }
    app = create_app(settings)
    with app.app_context():
        init_db(db.engine)

    authsvc_port = processes.free_port()
    server = processes.start_gunicorn_app(
        state / "authsvc",
        authsvc_port,
        {f"AUTHSVC_{key.upper()}": value for key, value in settings.items()},
    )
    nginx_port = processes.free_port()
    nginx = deploy_kit.start_nginx_templates(
        state / "nginx",
        nginx_port,
        {
            "gate.conf.template": {
                "GATE_LISTEN": f"127.0.0.1:{nginx_port}",
                "SERVER_NAME": "_",
                "AUTHSVC_UPSTREAM": f"127.0.0.1:{authsvc_port}",
                "ORTHANC_UPSTREAM": f"127.0.0.1:{orthanc.port}",
                "KEYCLOAK_UPSTREAM": f"127.0.0.1:{idp.port}",
            }
        },
        ready_path="/app/explorer.html",
    )
    tokens = {u: idp.password_token(u)["access_token"] for u in ("alice", "bob", "carol")}
    studies = {
        "A1": _store(orthanc, "gate A1"),
        "A2": _store(orthanc, "gate A2"),
        "B": _store(orthanc, "gate B"),
        "C": _store(orthanc, "gate C"),
    }
    with app.app_context():
        admin = albums.Caller(Actor(_subject(tokens["bob"]), is_global_admin=True))
        album_a = albums.create_album(services().archive, admin, "Gate album A").album.id
        album_b = albums.create_album(services().archive, admin, "Gate album B").album.id
        albums.add_studies(services().archive, admin, album_a, [studies["A1"].id, studies["A2"].id])
        albums.add_studies(services().archive, admin, album_b, [studies["B"].id])
        albums.invite_member(admin, album_a, "user", _subject(tokens["carol"]), "viewer")
        albums.invite_member(admin, album_a, "user", _subject(tokens["alice"]), "manager")
    try:
        yield Env(
            f"http://127.0.0.1:{nginx_port}", orthanc, idp, app, album_a, album_b, studies, tokens
        )
    finally:
        nginx.stop()
        server.stop()
        with app.app_context():
            db.engine.dispose()


# --- the gate in front of Orthanc ---------------------------------------------------------------


def test_anonymous_gets_401_and_static_assets_pass(env: Env) -> None:
    a1 = env.studies["A1"]
    denied = env.get(f"/studies/{a1.id}")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert env.get("/app/explorer.html").status_code == 200
    assert env.get("/system").status_code == 200


def test_viewer_reads_a_study_of_her_album_over_rest_wado_and_archive(env: Env) -> None:
    a1 = env.studies["A1"]
    rest = env.get(f"/studies/{a1.id}", "carol")
    assert rest.status_code == 200
    assert rest.json()["MainDicomTags"]["StudyInstanceUID"] == a1.uid

    metadata = env.get(f"/dicom-web/studies/{a1.uid}/metadata", "carol")
    assert metadata.status_code == 200
    assert {d["0020000D"]["Value"][0] for d in metadata.json()} == {a1.uid}
    frame = env.get(
        f"/dicom-web/studies/{a1.uid}/series/{a1.series_uid}/instances/{a1.instance_uid}/frames/1",
        "carol",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert frame.status_code == 200
    assert frame.headers["Content-Type"].startswith("multipart/related")

    wado_uri = env.get(
        f"/wado?requestType=WADO&studyUID={a1.uid}&seriesUID={a1.series_uid}"
        f"&objectUID={a1.instance_uid}&contentType=application/dicom",
        "carol",
    )
    assert wado_uri.status_code == 200
    assert pydicom.dcmread(io.BytesIO(wado_uri.content)).SOPInstanceUID == a1.instance_uid
    b = env.studies["B"]
    wado_uri_b = env.get(
        f"/wado?requestType=WADO&studyUID={b.uid}&seriesUID={b.series_uid}"
        f"&objectUID={b.instance_uid}&contentType=application/dicom",
        "carol",
    )
    assert wado_uri_b.status_code == 403

    archive = env.get(f"/studies/{a1.id}/archive", "carol")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert len([n for n in zf.namelist() if not n.endswith("/")]) == 2


def test_viewer_gets_403_outside_her_album_and_on_delete(env: Env) -> None:
    b, c, a1 = env.studies["B"], env.studies["C"], env.studies["A1"]
    assert env.get(f"/studies/{b.id}", "carol").status_code == 403
    assert env.get(f"/studies/{c.id}/archive", "carol").status_code == 403
    assert env.get(f"/dicom-web/studies/{b.uid}/metadata", "carol").status_code == 403
    deleted = requests.delete(f"{env.base}/studies/{a1.id}", headers=env.auth("carol"), timeout=30)
    assert deleted.status_code == 403
    # Not even a manager deletes from Orthanc: only global admins do.
    deleted = requests.delete(f"{env.base}/studies/{a1.id}", headers=env.auth("alice"), timeout=30)
    assert deleted.status_code == 403
    assert requests.get(f"{env.orthanc.url}/studies/{a1.id}", timeout=10).status_code == 200


def test_non_admin_cannot_list_or_search_the_whole_server(env: Env) -> None:
    for user in ("carol", "alice"):
        find = requests.post(
            f"{env.base}/tools/find",
            json={"Level": "Study", "Query": {}},
            headers=env.auth(user),
            timeout=30,
        )
        assert find.status_code == 403
        assert env.get("/dicom-web/studies", user).status_code == 403
        assert env.get("/studies", user).status_code == 403
        assert env.get("/changes", user).status_code == 403
    # The admin may.
    assert env.get("/dicom-web/studies", "bob").status_code == 200
    assert env.get("/studies", "bob").status_code == 200


def test_bad_credentials_are_401_and_a_malformed_uri_403(env: Env) -> None:
    a1 = env.studies["A1"]
    bad = env.get(f"/studies/{a1.id}", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401
    # A case variant of a route is a trick: refused even to the admin.
    assert env.get(f"/Studies/{a1.id}", "bob").status_code == 403


# --- album DICOMweb -------------------------------------------------------------------------------


def test_album_qido_returns_exactly_the_albums_studies(env: Env) -> None:
    found = env.get(f"/dicom-web/albums/{env.album_a}/studies", "carol")
    assert found.status_code == 200
    uids = {d["0020000D"]["Value"][0] for d in found.json()}
    assert uids == {env.studies["A1"].uid, env.studies["A2"].uid}
    # RetrieveURLs point at the album endpoint, through nginx.
    for dataset in found.json():
        url = dataset["00081190"]["Value"][0]
        assert url.startswith(f"{env.base}/dicom-web/albums/{env.album_a}/studies/"), url
    # Paging and matching.
    page = env.get(f"/dicom-web/albums/{env.album_a}/studies?limit=1&offset=1", "carol").json()
    assert len(page) == 1
    matched = env.get(
        f"/dicom-web/albums/{env.album_a}/studies?StudyDescription=*A2", "carol"
    ).json()
    assert [d["0020000D"]["Value"][0] for d in matched] == [env.studies["A2"].uid]
    # Asking for a study outside the album finds nothing.
    outside = env.get(
        f"/dicom-web/albums/{env.album_a}/studies?StudyInstanceUID={env.studies['B'].uid}", "carol"
    )
    assert outside.status_code == 200 and outside.json() == []
    # Series of the album, all from its studies.
    series = env.get(f"/dicom-web/albums/{env.album_a}/series", "carol").json()
    assert {d["0020000D"]["Value"][0] for d in series} == uids


def test_album_wado_refuses_studies_outside_the_album_and_non_members(env: Env) -> None:
    b, a1 = env.studies["B"], env.studies["A1"]
    assert (
        env.get(f"/dicom-web/albums/{env.album_a}/studies/{b.uid}/metadata", "carol").status_code
        == 404
    )
    assert (
        env.get(f"/dicom-web/albums/{env.album_a}/studies/{a1.uid}/metadata", "carol").status_code
        == 200
    )
    # carol is no member of album B: the album does not exist for her.
    assert env.get(f"/dicom-web/albums/{env.album_b}/studies", "carol").status_code == 404
    assert env.get(f"/dicom-web/albums/{env.album_a}/studies").status_code == 401


def test_album_read_token_works_until_revoked(env: Env) -> None:
    created = requests.post(
        f"{env.base}/api/albums/{env.album_a}/read-tokens",
        json={"lifetime": 3600, "note": "external viewer"},
        headers=env.auth("alice"),
        timeout=30,
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert created.json()["dicomweb_url"] == f"{env.base}/dicom-web/albums/{env.album_a}"
    # A viewer may not hand out read tokens.
    refused = requests.post(
        f"{env.base}/api/albums/{env.album_a}/read-tokens", headers=env.auth("carol"), timeout=30
    )
    assert refused.status_code == 403
    bearer = {"Authorization": f"Bearer {token}"}
    a1, b = env.studies["A1"], env.studies["B"]

    assert env.get(f"/dicom-web/albums/{env.album_a}/studies", headers=bearer).status_code == 200
    assert env.get(f"/dicom-web/albums/{env.album_b}/studies", headers=bearer).status_code == 404
    # Through the gate too: its album's studies, read-only, nothing else.
    assert env.get(f"/studies/{a1.id}", headers=bearer).status_code == 200
    assert env.get(f"/studies/{a1.id}?token={token}").status_code == 200
    assert env.get(f"/studies/{b.id}", headers=bearer).status_code == 403
    assert env.get("/studies", headers=bearer).status_code == 403
    modify = requests.post(
        f"{env.base}/studies/{a1.id}/modify", json={}, headers=bearer, timeout=30
    )
    assert modify.status_code == 403

    revoked = requests.delete(
        f"{env.base}/api/albums/{env.album_a}/read-tokens/{created.json()['id']}",
        headers=env.auth("alice"),
        timeout=30,
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"]
    # authsvc's own endpoints, and any gate request nginx has no decision for: refused at once.
    assert env.get(f"/dicom-web/albums/{env.album_a}/studies", headers=bearer).status_code == 401
    assert env.get(f"/studies/{a1.id}/series", headers=bearer).status_code == 401
    # What nginx had already been told "yes" to: refused once that yes is gate_cache_seconds old.
    _until(lambda: env.get(f"/studies/{a1.id}", headers=bearer).status_code == 401)


def test_dicomweb_client_searches_and_retrieves_through_the_album(env: Env) -> None:
    client = DICOMwebClient(
        url=f"{env.base}/dicom-web/albums/{env.album_a}", headers=env.auth("carol")
    )
    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {
        env.studies["A1"].uid,
        env.studies["A2"].uid,
    }
    a1 = env.studies["A1"]
    series = client.search_for_series(study_instance_uid=a1.uid)
    assert [s["0020000E"]["Value"][0] for s in series] == [a1.series_uid]
    instances = client.retrieve_study(a1.uid)
    assert {ds.SOPInstanceUID for ds in instances} >= {a1.instance_uid}
    assert all(ds.StudyInstanceUID == a1.uid for ds in instances)
    metadata = client.retrieve_study_metadata(a1.uid)
    assert len(metadata) == 2
    frames = client.retrieve_instance_frames(a1.uid, a1.series_uid, a1.instance_uid, [1])
    assert len(frames) == 1 and len(frames[0]) == 8 * 8 * 2
    with pytest.raises(requests.HTTPError):
        client.retrieve_study_metadata(env.studies["B"].uid)


def test_dicomweb_client_stores_into_the_album(env: Env) -> None:
    """STOW-RS through the album endpoint (alice: manager); the study shows up in its QIDO."""
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in make_study(n_series=1, n_instances=2)]
    uid = datasets[0].StudyInstanceUID
    manager = DICOMwebClient(
        url=f"{env.base}/dicom-web/albums/{env.album_a}", headers=env.auth("alice")
    )
    answer = manager.store_instances(datasets)
    stored = answer.ReferencedSOPSequence
    assert len(stored) == 2
    viewer = DICOMwebClient(
        url=f"{env.base}/dicom-web/albums/{env.album_a}", headers=env.auth("carol")
    )
    assert uid in {s["0020000D"]["Value"][0] for s in viewer.search_for_studies()}
    assert len(viewer.retrieve_study(uid)) == 2
    # A viewer may not store.
    with pytest.raises(requests.HTTPError):
        viewer.store_instances([pydicom.dcmread(io.BytesIO(make_study(n_instances=1)[0]))])


def test_upload_token_stow_at_orthancs_dicomweb_root_lands_in_the_album(env: Env) -> None:
    """A tool pointed at Orthanc's own DICOMweb (through nginx) with an upload token."""
    issued = requests.post(
        f"{env.base}/api/albums/{env.album_a}/upload-tokens",
        json={"lifetime_seconds": 600},
        headers=env.auth("alice"),
        timeout=10,
    )
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in make_study(n_series=1, n_instances=2)]
    uid = datasets[0].StudyInstanceUID
    for header in ({"Authorization": f"Bearer {token}"}, {"token": token}):
        client = DICOMwebClient(url=f"{env.base}/dicom-web", headers=header)
        answer = client.store_instances(datasets)
        assert len(answer.ReferencedSOPSequence) == 2
    found = requests.post(
        f"{env.orthanc.url}/tools/find",
        json={"Level": "Study", "Query": {"StudyInstanceUID": uid}},
        timeout=10,
    ).json()
    assert len(found) == 1
    labels = requests.get(f"{env.orthanc.url}/studies/{found[0]}/labels", timeout=10).json()
    assert labels == [_album_label(env, env.album_a)]
    # The album's viewer sees it; the upload token reads nothing.
    viewer = DICOMwebClient(
        url=f"{env.base}/dicom-web/albums/{env.album_a}", headers=env.auth("carol")
    )
    assert uid in {s["0020000D"]["Value"][0] for s in viewer.search_for_studies()}
    refused = env.get(f"/studies/{found[0]}", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code in (401, 403)


def _album_label(env: Env, album_id: str) -> str:
    with env.app.app_context():
        album = db.session.get(Album, album_id)
        assert album is not None
        return str(album.label)


def test_manager_removes_a_study_from_the_album(env: Env, tmp_path: Path) -> None:
    a2 = env.studies["A2"]
    assert env.get(f"/studies/{a2.id}", "carol").status_code == 200
    removed = requests.delete(
        f"{env.base}/api/albums/{env.album_a}/studies/{a2.id}",
        headers=env.auth("alice"),
        timeout=30,
    )
    assert removed.status_code in (200, 204), removed.text
    # authsvc's label cache heard the change at once: a request nginx has no decision for...
    assert env.get(f"/studies/{a2.id}/instances", "carol").status_code == 403
    # ...and nginx's reuse of the earlier "yes" ends within gate_cache_seconds.
    _until(lambda: env.get(f"/studies/{a2.id}", "carol").status_code == 403)
    found = env.get(f"/dicom-web/albums/{env.album_a}/studies", "carol").json()
    uids = {d["0020000D"]["Value"][0] for d in found}
    assert env.studies["A1"].uid in uids and a2.uid not in uids
    # The study itself is still in Orthanc.
    assert requests.get(f"{env.orthanc.url}/studies/{a2.id}", timeout=10).status_code == 200
