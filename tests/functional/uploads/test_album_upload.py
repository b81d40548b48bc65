"""The album page's upload (POST /admin/albums/<id>/upload) through the Flask test client.

On SQLite and PostgreSQL, Orthanc faked by the uploading fake of test_uploads (it records every
call, so a refusal can prove Orthanc saw nothing). The page's script and the no-script form
in Chromium, against the real Orthanc, are in tests/integration/test_browser_upload.py.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity import admin_sessions
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AlbumStudy
from authsvc.models import AuditEvent
from authsvc.views import album_upload
from tests.dicom_factory import make_study
from tests.fake_orthanc import URL
from tests.functional.uploads.test_uploads import UploadingOrthanc
from tests.functional.uploads.test_uploads import study_uid

pytestmark = pytest.mark.functional

CSRF = "csrf-token-of-the-upload-test-session"
ALBUM = "album-up"
LABEL = "authsvc-uploadalbum"
PATH = f"/admin/albums/{ALBUM}/upload"
JSON = {"Accept": "application/json"}


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return {"orthanc_url": URL, "orthanc_retries": 0}


@pytest.fixture
def orthanc() -> Iterator[UploadingOrthanc]:
    with rm.Mocker() as mock:
        yield UploadingOrthanc(mock)


def person(name: str) -> Identity:
    return Identity(
        kind=IdentityKind.USER,
        subject=f"sub-{name}",
        username=name,
        name=name.title(),
        email=f"{name}@example.test",
        email_verified=True,
    )


@pytest.fixture
def album(db_app: Flask) -> str:
    """An album with an owner, a contributor (carl) and a viewer (vic)."""
    with db_app.app_context():
        db.session.add(
            Album(
                id=ALBUM,
                name="Uploads",
                description="",
                label=LABEL,
                server_id="",
                created_by="sub-olga",
            )
        )
        db.session.flush()
        for who, role in (("olga", "owner"), ("carl", "contributor"), ("vic", "viewer")):
            db.session.add(
                AlbumMember(
                    album_id=ALBUM,
                    principal_kind="user",
                    principal=f"sub-{who}",
                    role=role,
                    added_by="sub-olga",
                )
            )
        db.session.commit()
    return ALBUM


def signed_in(app: Flask, who: str) -> FlaskClient:
    client = app.test_client()
    with app.app_context():
        sid = admin_sessions.start_session(person(who), "the-id-token", 3600)
    with client.session_transaction() as session:
        session["admin_sid"] = sid
        session["admin_csrf"] = CSRF
    return client


def form(files: list[tuple[str, bytes]], *, csrf: str | None = CSRF) -> dict[str, Any]:
    """A form body: the CSRF field first (as the page's form sends it), then the files."""
    data: dict[str, Any] = {}
    if csrf is not None:
        data["csrf_token"] = csrf
    data["file"] = [(io.BytesIO(content), name) for name, content in files]
    return data


def dicom_files(n: int = 3, **kw: Any) -> list[tuple[str, bytes]]:
    return [(f"IM{i:04d}.dcm", data) for i, data in enumerate(make_study(n_instances=n, **kw))]


def album_studies(app: Flask) -> set[str]:
    with app.app_context():
        return set(
            db.session.execute(
                sa.select(AlbumStudy.study_id).where(AlbumStudy.album_id == ALBUM)
            ).scalars()
        )


def test_album_page_shows_the_upload_form_to_contributors_only(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    page = signed_in(db_app, "carl").get(f"/admin/albums/{album}")
    assert page.status_code == 200
    html = page.text
    assert 'id="upload-form"' in html and 'enctype="multipart/form-data"' in html
    # The CSRF field comes before the file input: the server checks it before any file.
    assert html.index('name="csrf_token"', html.index('id="upload-form"')) < html.index(
        'id="upload-files"'
    )
    assert "/static/album-upload.js" in html and "<script>" not in html.split('id="upload"')[1]
    assert "upload-form" not in signed_in(db_app, "vic").get(f"/admin/albums/{album}").text


def test_script_upload_answers_per_file_json_and_labels_the_study(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    files = dicom_files(3)
    response = signed_in(db_app, "carl").post(
        PATH, data=form(files, csrf=None), headers={**JSON, "X-CSRF-Token": CSRF}
    )
    assert response.status_code == 200, response.text
    body = response.get_json()
    assert body["summary"]["stored"] == 3
    assert [i["name"] for i in body["instances"]] == [name for name, _ in files]
    assert body["studies"][0]["study_instance_uid"] == study_uid(files[0][1])
    assert body["studies"][0]["in_album"] is True
    study_id = body["studies"][0]["orthanc_id"]
    assert LABEL in orthanc.labels_of(study_id)
    assert album_studies(db_app) == {study_id}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_sending_a_batch_again_stores_nothing_twice_and_labels_again(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    """What the script does after a cut connection: the same batch, answered "already present"."""
    files = dicom_files(2)
    client = signed_in(db_app, "carl")
    headers = {**JSON, "X-CSRF-Token": CSRF}
    first = client.post(PATH, data=form(files), headers=headers)
    assert first.status_code == 200
    study_id = first.get_json()["studies"][0]["orthanc_id"]
    orthanc.studies[study_id].labels.discard(LABEL)  # say the label was lost meanwhile
    again = client.post(PATH, data=form(files), headers=headers)
    assert again.status_code == 200, again.text
    assert again.get_json()["summary"]["already_stored"] == 2
    assert len(orthanc.instances) == 2
    assert LABEL in orthanc.labels_of(study_id)


def test_no_script_form_answers_a_summary_page(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    files = [*dicom_files(2), ("notes.txt", b"not an image")]
    response = signed_in(db_app, "carl").post(PATH, data=form(files))
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.text
    assert "<strong>2</strong> stored" in html and "<strong>1</strong> refused" in html
    assert study_uid(files[0][1]) in html
    assert "notes.txt" in html and "Not a DICOM file" in html
    assert orthanc.posted_instances() == 2


def test_zip_archive_is_unpacked_into_the_album(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in dicom_files(4):
            archive.writestr(f"study/{name}", data)
        archive.writestr("README.txt", "burned by the CD writer")
    response = signed_in(db_app, "carl").post(
        PATH, data=form([("study.zip", buffer.getvalue())]), headers=JSON
    )
    assert response.status_code == 200, response.text
    summary = response.get_json()["summary"]
    assert summary["stored"] == 4 and summary["skipped"] == 1 and summary["studies"] == 1
    assert len(album_studies(db_app)) == 1


@pytest.mark.parametrize(
    ("csrf", "header"),
    [(None, None), ("wrong-token", None), (None, "wrong-token"), ("", None)],
)
def test_missing_or_wrong_csrf_token_is_refused_before_orthanc(
    db_app: Flask, album: str, orthanc: UploadingOrthanc, csrf: str | None, header: str | None
) -> None:
    headers = dict(JSON)
    if header is not None:
        headers["X-CSRF-Token"] = header
    response = signed_in(db_app, "carl").post(
        PATH, data=form(dicom_files(1), csrf=csrf), headers=headers
    )
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert orthanc.posted_instances() == 0


def test_a_file_before_the_csrf_field_is_refused(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    boundary = "b0undary"
    ((name, data),) = dicom_files(1)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode() + data
    body += (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
        f"{CSRF}\r\n--{boundary}--\r\n"
    ).encode()
    response = signed_in(db_app, "carl").post(
        PATH, data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 403
    assert orthanc.posted_instances() == 0


def test_a_viewer_may_not_upload(db_app: Flask, album: str, orthanc: UploadingOrthanc) -> None:
    response = signed_in(db_app, "vic").post(
        PATH, data=form(dicom_files(1)), headers={**JSON, "X-CSRF-Token": CSRF}
    )
    assert response.status_code == 403
    assert "contributor" in response.get_json()["message"] or response.get_json()["message"]
    assert orthanc.posted_instances() == 0
    with db_app.app_context():
        denied = db.session.execute(
            sa.select(AuditEvent).where(
                AuditEvent.action == "album:upload", AuditEvent.outcome == "denied"
            )
        ).scalars()
        assert [row.actor for row in denied] == ["user:sub-vic"]


def test_a_stranger_gets_not_found_and_no_session_is_forbidden(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    stranger = signed_in(db_app, "mallory").post(
        PATH, data=form(dicom_files(1)), headers={**JSON, "X-CSRF-Token": CSRF}
    )
    assert stranger.status_code == 404
    anonymous = db_app.test_client().post(PATH, data=form(dicom_files(1)), headers=JSON)
    assert anonymous.status_code == 403
    assert orthanc.posted_instances() == 0


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b"{}", 415),
        ("application/dicom", b"DICM", 415),
        ("multipart/form-data", b"x", 400),  # no boundary
        ("multipart/form-data; boundary=zz", b"garbage without the boundary", 400),
        ("multipart/form-data; boundary=zz", b"", 400),
    ],
)
def test_bad_input_is_a_clear_4xx_json_error(
    db_app: Flask,
    album: str,
    orthanc: UploadingOrthanc,
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    response = signed_in(db_app, "carl").post(
        PATH, data=body, content_type=content_type, headers={**JSON, "X-CSRF-Token": CSRF}
    )
    assert response.status_code == status, response.text
    error = response.get_json()
    assert error["error"] and error["message"]
    assert "Traceback" not in response.text


def test_only_a_form_field_and_no_file_is_explained(
    db_app: Flask, album: str, orthanc: UploadingOrthanc
) -> None:
    # What Chromium sends when Upload is pressed with no file chosen.
    boundary = "----WebKitFormBoundaryx"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{CSRF}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
    ).encode()
    response = signed_in(db_app, "carl").post(
        PATH, data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 400
    assert "contains no file" in response.text
    assert response.mimetype == "text/html"


def test_no_script_form_has_its_smaller_limit(
    db_app: Flask, album: str, orthanc: UploadingOrthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(album_upload, "NO_SCRIPT_MAX_FILES", 2)
    client = signed_in(db_app, "carl")
    form_post = client.post(PATH, data=form(dicom_files(3)))
    # The first two are stored and labelled; the third is refused with the limit named.
    assert form_post.status_code == 200
    assert "<strong>2</strong> stored" in form_post.text and "limit" in form_post.text
    script_post = client.post(
        PATH, data=form(dicom_files(3)), headers={**JSON, "X-CSRF-Token": CSRF}
    )
    assert script_post.get_json()["summary"]["stored"] == 3
