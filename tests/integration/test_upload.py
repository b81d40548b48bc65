"""Uploads into albums against the real Orthanc and a real PostgreSQL (and a real gunicorn).

Studies are generated DICOM (tests/dicom_factory.py); every claim about Orthanc is read back
from Orthanc itself: the instances it holds, the labels on the studies. The "Orthanc goes away
between storing and labelling" case stops and restarts a private Orthanc by its PID.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from authsvc import albums
from authsvc.albums import Caller
from authsvc.credentials import upload_token_records as records
from authsvc.extensions import db
from authsvc.models import PendingLabel
from authsvc.orthanc import OrthancClient
from authsvc.policy import Actor
from authsvc.services import services
from tests import processes
from tests.conftest import _make_app
from tests.conftest import base_config
from tests.dicom_factory import make_study

INSECURE_RING = "it1:aW5zZWN1cmUtdXBsb2FkLXRlc3Qta2V5LTAwMDAwMDA"
BOUNDARY = "authsvc-it-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
READ = frozenset({"view"})
OWNER = Caller(actor=Actor(subject="it-owner", permissions=READ))
VIEWER = Caller(actor=Actor(subject="it-viewer", permissions=READ))
LIMITS = records.TokenLimits(default_lifetime=3600, max_lifetime=86_400)


def make_app(orthanc_url: str, database_url: str, tmp_path: Path, log_stream: io.StringIO) -> Flask:
    config = base_config(
        tmp_path,
        database_url=database_url,
        orthanc_url=orthanc_url,
        orthanc_retries=0,
        upload_token_keys=INSECURE_RING,
        album_label_prefix="up" + uuid.uuid4().hex[:8] + "-",
    )
    return _make_app(config, log_stream)


@pytest.fixture
def app(
    orthanc: processes.OrthancService, pg_schema: str, tmp_path: Path, log_stream: io.StringIO
) -> Iterator[Flask]:
    app = make_app(orthanc.url, pg_schema, tmp_path, log_stream)
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


def new_album() -> tuple[str, str]:
    """Create an album owned by OWNER with VIEWER as viewer; return (id, label)."""
    view = albums.create_album(services().archive, OWNER, "Uploads " + uuid.uuid4().hex[:6])
    albums.invite_member(OWNER, view.album.id, "user", VIEWER.subject, "viewer")
    return view.album.id, view.album.label


def issue(album_id: str, **body: Any) -> records.IssuedToken:
    from authsvc.services import services as registry

    return records.issue(OWNER, album_id, body, ring=registry().upload_keys, limits=LIMITS)


def stow_body(instances: list[bytes]) -> bytes:
    out = b""
    for instance in instances:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += instance + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def uids(instance: bytes) -> tuple[str, str]:
    ds = pydicom.dcmread(io.BytesIO(instance))
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def orthanc_study(orthanc_url: str, study_uid: str) -> dict[str, Any] | None:
    found = requests.post(
        f"{orthanc_url}/tools/find",
        json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        timeout=10,
    ).json()
    return found[0] if found else None


def orthanc_has_instance(orthanc_url: str, sop_uid: str) -> bool:
    found = requests.post(
        f"{orthanc_url}/tools/find",
        json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}},
        timeout=10,
    ).json()
    return bool(found)


def test_stow_with_a_token_puts_the_study_in_the_album(
    app: Flask, orthanc: processes.OrthancService
) -> None:
    album_id, label = new_album()
    issued = issue(album_id, max_uses=2)
    instances = make_study(n_series=2, n_instances=3)
    study_uid, _ = uids(instances[0])
    client: FlaskClient = app.test_client()
    response = client.post(
        f"/dicom-web/albums/{album_id}/studies",
        data=stow_body(instances),
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {issued.token}"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["00081199"]["Value"]) == 6
    assert body["00081190"]["Value"][0].endswith(
        f"/dicom-web/albums/{album_id}/studies/{study_uid}"
    )
    study = orthanc_study(orthanc.url, study_uid)
    assert study is not None
    assert label in study["Labels"]
    assert len(study["Series"]) == 2
    # Visible to the album's viewers (through the album's own listing).
    listed = albums.list_studies(services().archive, VIEWER, album_id)
    assert [item["study_instance_uid"] for item in listed.items] == [study_uid]
    # Twice is harmless: Orthanc answers AlreadyStored, the album is unchanged.
    again = client.post(
        f"/dicom-web/albums/{album_id}/studies",
        data=stow_body(instances),
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {issued.token}"},
    )
    assert again.status_code == 200
    assert albums.list_studies(services().archive, VIEWER, album_id).total == 1


def test_zip_upload_puts_the_study_in_the_album(
    app: Flask, orthanc: processes.OrthancService
) -> None:
    album_id, label = new_album()
    issued = issue(album_id)
    instances = make_study(n_instances=4, modality="MR")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, data in enumerate(instances):
            archive.writestr(f"DICOM/S1/IM{index}", data)
        archive.writestr("README.TXT", "exported by a CD writer")
    response = app.test_client().post(
        f"/api/albums/{album_id}/uploads",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/zip", "upload-token": issued.token},
    )
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()["summary"]
    assert summary["stored"] == 4 and summary["skipped"] == 1 and summary["pending_studies"] == 0
    study = orthanc_study(orthanc.url, uids(instances[0])[0])
    assert study is not None and label in study["Labels"]


def test_revoked_token_is_refused_and_orthanc_unchanged(
    app: Flask, orthanc: processes.OrthancService
) -> None:
    album_id, _ = new_album()
    issued = issue(album_id)
    records.revoke(OWNER, album_id, issued.row.id)
    instances = make_study(n_instances=1)
    study_uid, sop_uid = uids(instances[0])
    response = app.test_client().post(
        f"/dicom-web/albums/{album_id}/studies",
        data=stow_body(instances),
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {issued.token}"},
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "token-revoked"
    assert not orthanc_has_instance(orthanc.url, sop_uid)
    assert orthanc_study(orthanc.url, study_uid) is None


def test_orthanc_stopping_before_labelling_leaves_a_pending_label_that_is_retried(
    testenv_state: Path, pg_schema: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    private = processes.start_orthanc(testenv_state / "orthanc-upload", processes.free_port())
    try:
        app = make_app(private.url, pg_schema, tmp_path, log_stream)
        with app.app_context():
            album_id, label = new_album()
            issued = issue(album_id)
            instances = make_study(n_instances=1)
            study_uid, sop_uid = uids(instances[0])

            # Orthanc goes away right after it stored the instance, before authsvc labels it.
            original = OrthancClient.store_instance

            def store_then_stop(self: OrthancClient, body: Any) -> dict[str, Any]:
                answer = original(self, body)
                private.stop()
                return answer

            OrthancClient.store_instance = store_then_stop  # type: ignore[method-assign]
            try:
                response = app.test_client().post(
                    f"/dicom-web/albums/{album_id}/studies",
                    data=stow_body(instances),
                    headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {issued.token}"},
                )
            finally:
                OrthancClient.store_instance = original  # type: ignore[method-assign]
            assert response.status_code == 202, response.get_data(as_text=True)
            assert "not yet in the album" in response.headers["Warning"]
            assert len(response.get_json()["00081199"]["Value"]) == 1
            pending = db.session.query(PendingLabel).all()
            assert [(p.label, p.op) for p in pending] == [(label, "add")]
            db.session.rollback()

            private.restart()  # same storage: the instance is still there, unlabelled
            study = orthanc_study(private.url, study_uid)
            assert study is not None and label not in study["Labels"]
            report = albums.retry_pending_labels(services().archive, due_only=False)
            assert report.applied == 1 and report.remaining == 0
            study = orthanc_study(private.url, study_uid)
            assert study is not None and label in study["Labels"]
            assert orthanc_has_instance(private.url, sop_uid)
            db.session.remove()
            db.engine.dispose()
    finally:
        private.stop()


@pytest.fixture
def gunicorn_env() -> dict[str, str]:
    """Extra environment for the gunicorn-served app (a test module or class may override)."""
    return {}


@pytest.fixture
def served(
    orthanc: processes.OrthancService,
    pg_schema: str,
    tmp_path: Path,
    log_stream: io.StringIO,
    gunicorn_env: dict[str, str],
) -> Iterator[tuple[Flask, processes.Service]]:
    """The app in-process (to make albums and tokens) and the same app under gunicorn."""
    app = make_app(orthanc.url, pg_schema, tmp_path, log_stream)
    settings = app.extensions["authsvc"].settings
    env = {
        "AUTHSVC_ENV": "testing",
        "AUTHSVC_DATA_DIR": str(tmp_path / "gunicorn-data"),
        "AUTHSVC_SECRET_KEY": "insecure-gunicorn-secret-key-0123456789abcdef",
        "AUTHSVC_DATABASE_URL": pg_schema.replace("postgresql+psycopg://", "postgresql://"),
        "AUTHSVC_ORTHANC_URL": orthanc.url,
        "AUTHSVC_UPLOAD_TOKEN_KEYS": INSECURE_RING,
        "AUTHSVC_ALBUM_LABEL_PREFIX": settings.album_label_prefix,
        **gunicorn_env,
    }
    server = processes.start_gunicorn_app(tmp_path / "gunicorn", processes.free_port(), env)
    with app.app_context(), server:
        yield app, server
        db.session.remove()
        db.engine.dispose()


def test_dicomweb_client_stores_into_the_album_through_gunicorn(
    served: tuple[Flask, processes.Service], orthanc: processes.OrthancService
) -> None:
    from dicomweb_client.api import DICOMwebClient

    _, server = served
    album_id, label = new_album()
    issued = issue(album_id)
    instances = make_study(n_series=1, n_instances=3)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in instances]
    client = DICOMwebClient(
        url=f"{server.url}/dicom-web/albums/{album_id}",
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    answer = client.store_instances(datasets=datasets)
    stored = [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence]
    assert sorted(stored) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert "FailedSOPSequence" not in answer
    study = orthanc_study(orthanc.url, str(datasets[0].StudyInstanceUID))
    assert study is not None and label in study["Labels"]
    assert albums.list_studies(services().archive, VIEWER, album_id).total == 1

    # 3D Slicer's DICOMweb send takes only an address: the token rides in its user info.
    slicer_like = DICOMwebClient(
        url=f"http://token:{issued.token}@{processes.LOOPBACK}:{server.port}"
        f"/dicom-web/albums/{album_id}"
    )
    more = [pydicom.dcmread(io.BytesIO(data)) for data in make_study(n_instances=2)]
    answer = slicer_like.store_instances(datasets=more)
    assert len(answer.ReferencedSOPSequence) == 2
    assert albums.list_studies(services().archive, VIEWER, album_id).total == 2

    # A token for another album gets a clear refusal from the same client.
    other_id, _ = new_album()
    wrong = DICOMwebClient(
        url=f"{server.url}/dicom-web/albums/{other_id}",
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    with pytest.raises(requests.HTTPError) as info:
        wrong.store_instances(datasets=[pydicom.dcmread(io.BytesIO(make_study()[0]))])
    assert info.value.response.status_code == 403
    assert "another album" in info.value.response.json()["message"]


def _with_pixels(instance: bytes, side: int) -> bytes:
    """Return the instance with a ``side`` x ``side`` 16-bit image instead of its own."""
    ds = pydicom.dcmread(io.BytesIO(instance))
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


class TestLongUploads:
    """An upload may stream for longer than gunicorn's worker timeout, with sync workers (the
    default: authsvc.liveness reports progress) and with threaded ones."""

    @pytest.fixture(params=["1", "2"], ids=["sync", "gthread"])
    def gunicorn_env(self, request: pytest.FixtureRequest) -> dict[str, str]:
        return {"AUTHSVC_WORKER_TIMEOUT": "5", "AUTHSVC_THREADS": request.param}

    def test_a_slow_client_outlives_the_worker_timeout(
        self, served: tuple[Flask, processes.Service], orthanc: processes.OrthancService
    ) -> None:
        import time

        _, server = served
        album_id, label = new_album()
        issued = issue(album_id)
        # 128 kB of pixels each: a sync worker reads 256 kB at a time, and reports progress
        # after each read (a client sending less than that per worker_timeout is stalled).
        instances = [_with_pixels(i, 256) for i in make_study(n_instances=40)]

        def slowly() -> Iterator[bytes]:
            # About 10 s in all: twice the worker timeout.
            for instance in instances:
                time.sleep(0.25)
                yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                yield instance + b"\r\n"
            yield f"--{BOUNDARY}--\r\n".encode()

        response = requests.post(
            f"{server.url}/dicom-web/albums/{album_id}/studies",
            data=slowly(),
            headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {issued.token}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["00081199"]["Value"]) == 40
        study = orthanc_study(orthanc.url, uids(instances[0])[0])
        assert study is not None and label in study["Labels"]
