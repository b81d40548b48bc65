"""Upload tokens and album uploads through the HTTP API, on SQLite and PostgreSQL, Orthanc faked.

The fake Orthanc (tests/fake_orthanc.py, extended here with ``POST /instances``) records every
call, so each refusal can prove that Orthanc saw nothing. The real Orthanc is exercised in
tests/integration/test_upload.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import requests
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc import albums
from authsvc.credentials.album_tokens import issue_album_read_token
from authsvc.credentials.album_tokens import issue_upload_token
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AlbumStudy
from authsvc.models import AuditEvent
from authsvc.models import PendingLabel
from authsvc.models import UploadToken
from authsvc.models import utcnow
from authsvc.services import services
from tests.conftest import api_key_row
from tests.dicom_factory import make_study
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc
from tests.fake_orthanc import orthanc_id

pytestmark = pytest.mark.functional

# Throw-away ring, named as such.
INSECURE_RING = "t1:aW5zZWN1cmUtdXBsb2FkLXRlc3Qta2V5LTAwMDAwMDA"
LABEL = "authsvc-testalbum1"
OTHER_LABEL = "authsvc-testalbum2"
BOUNDARY = "authsvc-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


class UploadingOrthanc(FakeOrthanc):
    """The albums fake plus ``POST /instances`` and ``GET /series/<id>``."""

    def __init__(self, mock: rm.Mocker) -> None:
        super().__init__(mock)
        self.instances: dict[str, str] = {}  # SOPInstanceUID -> study id
        self.series: dict[str, str] = {}  # series id -> SeriesInstanceUID
        #: When True, label changes fail (instances are still stored).
        self.labels_down = False

    def posted_instances(self) -> int:
        return sum(1 for method, path in self.calls if (method, path) == ("POST", "/instances"))

    def _dispatch(self, request: Any, context: Any) -> Any:
        path, method = request.path, request.method
        if self.labels_down and "/labels/" in path and not self.down:
            self.calls.append((method, path))
            raise requests.ConnectionError("fake Orthanc refuses label changes")
        if (method, path) == ("POST", "/instances") and not self.down:
            self.calls.append((method, path))
            body = request.body if isinstance(request.body, bytes) else request.body.read()
            try:
                ds = pydicom.dcmread(io.BytesIO(body))
                study_uid = str(ds.StudyInstanceUID)
                series_uid = str(ds.SeriesInstanceUID)
                sop_uid = str(ds.SOPInstanceUID)
            except Exception:  # noqa: BLE001 - whatever pydicom raises, Orthanc says 400
                context.status_code = 400
                return {"Message": "Bad file format"}
            study_id = orthanc_id(study_uid)
            if study_id not in self.studies:
                self.add_study(study_uid)
            series_id = orthanc_id(series_uid)
            self.series[series_id] = series_uid
            status = "AlreadyStored" if sop_uid in self.instances else "Success"
            self.instances[sop_uid] = study_id
            return {
                "ID": orthanc_id(sop_uid),
                "ParentStudy": study_id,
                "ParentSeries": series_id,
                "ParentPatient": "p",
                "Path": f"/instances/{orthanc_id(sop_uid)}",
                "Status": status,
            }
        if method == "GET" and path.startswith("/series/") and not self.down:
            self.calls.append((method, path))
            uid = self.series.get(path.rsplit("/", 1)[1])
            if uid is None:
                context.status_code = 404
                return {"Message": "Unknown resource"}
            return {"MainDicomTags": {"SeriesInstanceUID": uid}}
        return super()._dispatch(request, context)


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return {"upload_token_keys": INSECURE_RING, "orthanc_url": URL, "orthanc_retries": 0}


@pytest.fixture
def orthanc() -> Iterator[UploadingOrthanc]:
    with rm.Mocker() as mock:
        yield UploadingOrthanc(mock)


@dataclasses.dataclass
class World:
    """An album (owner alice, manager mia, contributors carl and cora, viewer vic) and keys."""

    app: Flask
    client: FlaskClient
    orthanc: UploadingOrthanc
    keys: dict[str, str]
    album: str = "album-one"
    other_album: str = "album-two"

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def issue(self, who: str = "carl", **body: Any) -> dict[str, Any]:
        response = self.client.post(
            f"/api/albums/{self.album}/upload-tokens", json=body, headers=self.auth(who)
        )
        assert response.status_code == 201, response.get_json()
        return dict(response.get_json())

    def stow(self, body: bytes, token: str, **headers: str) -> Any:
        return self.client.post(
            f"/dicom-web/albums/{self.album}/studies",
            data=body,
            headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {token}", **headers},
        )

    def row(self, token_id: str) -> UploadToken:
        with self.app.app_context():
            row = db.session.get(UploadToken, token_id)
            assert row is not None
            db.session.expunge(row)
            return row

    def audit(self, action: str) -> list[AuditEvent]:
        with self.app.app_context():
            rows = db.session.execute(
                sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            ).scalars()
            out = list(rows)
            for row in out:
                db.session.expunge(row)
            return out

    def album_studies(self) -> set[str]:
        with self.app.app_context():
            return set(
                db.session.execute(
                    sa.select(AlbumStudy.study_id).where(AlbumStudy.album_id == self.album)
                ).scalars()
            )


@pytest.fixture
def world(db_app: Flask, orthanc: UploadingOrthanc) -> World:
    keys: dict[str, str] = {}
    with db_app.app_context():
        for album_id, label in (("album-one", LABEL), ("album-two", OTHER_LABEL)):
            db.session.add(
                Album(
                    id=album_id,
                    name=album_id,
                    description="",
                    label=label,
                    server_id="",
                    created_by="sub-alice",
                )
            )
        db.session.flush()
        roles = {"alice": "owner", "mia": "manager", "carl": "contributor", "cora": "contributor"}
        roles["vic"] = "viewer"
        for who in [*roles, "mallory"]:
            row, plaintext = api_key_row(f"sub-{who}", who, roles=[], name=f"{who}'s key")
            db.session.add(row)
            keys[who] = plaintext
            if who in roles:
                db.session.add(
                    AlbumMember(
                        album_id="album-one",
                        principal_kind="user",
                        principal=f"sub-{who}",
                        role=roles[who],
                        added_by="sub-alice",
                    )
                )
        db.session.commit()
    return World(app=db_app, client=db_app.test_client(), orthanc=orthanc, keys=keys)


def stow_body(instances: list[bytes], *, close: bool = True) -> bytes:
    out = b"preamble is ignored\r\n"
    for instance in instances:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += instance + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return out


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def sop_uid(instance: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(instance)).SOPInstanceUID)


def pending_count() -> int:
    return int(db.session.execute(sa.select(sa.func.count()).select_from(PendingLabel)).scalar())


def study_uid(instance: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(instance)).StudyInstanceUID)


# --- issuing, listing, revoking ------------------------------------------------------------


def test_contributor_issues_a_token_shown_once(world: World) -> None:
    issued = world.issue("carl", lifetime_seconds=3600, max_uses=5, note="CT from scanner 2")
    assert issued["token"].startswith("up1.")
    assert issued["album_id"] == world.album
    assert issued["max_uses"] == 5 and issued["use_count"] == 0
    assert issued["state"] == "active"
    expires = dt.datetime.fromisoformat(issued["expires_at"])
    assert dt.timedelta(minutes=59) < expires - utcnow() <= dt.timedelta(hours=1)
    listed = world.client.get(
        f"/api/albums/{world.album}/upload-tokens", headers=world.auth("carl")
    ).get_json()["items"]
    assert [t["id"] for t in listed] == [issued["id"]]
    assert "token" not in listed[0]
    assert issued["token"] not in str(listed)
    # Only the row is stored: the token text appears nowhere in the database.
    with world.app.app_context():
        row = db.session.get(UploadToken, issued["id"])
        assert row is not None and row.created_by == "sub-carl" and row.note == "CT from scanner 2"
    events = world.audit("token:upload:create")
    assert len(events) == 1 and events[0].detail["token_id"] == issued["id"]
    assert issued["token"] not in str(events[0].detail)


def test_default_lifetime_and_bounds(world: World) -> None:
    issued = world.issue("carl")
    expires = dt.datetime.fromisoformat(issued["expires_at"])
    assert dt.timedelta(hours=23) < expires - utcnow() <= dt.timedelta(days=1)
    for bad in ({"lifetime_seconds": 10**9}, {"lifetime_seconds": "1h"}, {"max_uses": 0}):
        response = world.client.post(
            f"/api/albums/{world.album}/upload-tokens", json=bad, headers=world.auth("carl")
        )
        assert response.status_code == 422, bad
    response = world.client.post(
        f"/api/albums/{world.album}/upload-tokens", json={"album": "x"}, headers=world.auth("carl")
    )
    assert response.status_code == 422


@pytest.mark.parametrize(("who", "status"), [("vic", 403), ("mallory", 404)])
def test_viewers_and_strangers_cannot_issue(world: World, who: str, status: int) -> None:
    response = world.client.post(
        f"/api/albums/{world.album}/upload-tokens", json={}, headers=world.auth(who)
    )
    assert response.status_code == status
    assert world.client.post(f"/api/albums/{world.album}/upload-tokens", json={}).status_code == 401


def test_contributors_list_their_own_managers_list_all(world: World) -> None:
    carl = world.issue("carl")["id"]
    cora = world.issue("cora")["id"]

    def listed(who: str) -> set[str]:
        response = world.client.get(
            f"/api/albums/{world.album}/upload-tokens", headers=world.auth(who)
        )
        assert response.status_code == 200
        return {t["id"] for t in response.get_json()["items"]}

    assert listed("carl") == {carl}
    assert listed("cora") == {cora}
    assert listed("mia") == {carl, cora}
    assert listed("alice") == {carl, cora}
    assert (
        world.client.get(
            f"/api/albums/{world.album}/upload-tokens", headers=world.auth("vic")
        ).status_code
        == 403
    )


def test_revocation_rules(world: World) -> None:
    carl = world.issue("carl")
    cora = world.issue("cora")
    url = f"/api/albums/{world.album}/upload-tokens/"
    # A contributor cannot revoke (or even see) someone else's token.
    assert world.client.delete(url + cora["id"], headers=world.auth("carl")).status_code == 404
    assert world.row(cora["id"]).revoked_at is None
    assert world.client.delete(url + "no-such-token", headers=world.auth("mia")).status_code == 404
    # Their own: yes. A manager: anyone's. Twice: harmless, first time kept.
    mine = world.client.delete(url + carl["id"], headers=world.auth("carl")).get_json()
    assert mine["state"] == "revoked"
    first = world.client.delete(url + cora["id"], headers=world.auth("mia")).get_json()
    again = world.client.delete(url + cora["id"], headers=world.auth("mia")).get_json()
    assert first["revoked_at"] == again["revoked_at"]
    assert len(world.audit("token:upload:revoke")) == 2


# --- uploading with a token ----------------------------------------------------------------


def test_stow_with_a_token_puts_the_study_in_the_album(world: World) -> None:
    token = world.issue("carl", max_uses=3)
    instances = make_study(n_series=2, n_instances=2)
    response = world.stow(stow_body(instances), token["token"])
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/dicom+json"
    body = response.get_json()
    referenced = body["00081199"]["Value"]
    assert sorted(r["00081155"]["Value"][0] for r in referenced) == sorted(
        sop_uid(i) for i in instances
    )
    assert "00081198" not in body
    uid = study_uid(instances[0])
    assert body["00081190"]["Value"] == [
        f"http://localhost/dicom-web/albums/{world.album}/studies/{uid}"
    ]
    assert all(
        r["00081190"]["Value"][0].startswith(
            f"http://localhost/dicom-web/albums/{world.album}/studies/{uid}/series/"
        )
        for r in referenced
    )
    study = orthanc_id(uid)
    assert world.orthanc.labels_of(study) == {LABEL}
    assert world.album_studies() == {study}
    row = world.row(token["id"])
    assert row.use_count == 1 and row.last_used_at is not None
    (event,) = world.audit("album:upload")
    assert event.actor == f"upload-token:{token['id']}"
    assert event.outcome == "success"
    assert event.detail["token_id"] == token["id"]
    assert event.detail["stored"] == 4 and event.detail["studies"] == 1
    assert event.detail["study_ids"] == [study]


def test_uploading_the_same_instances_twice_is_harmless(world: World) -> None:
    token = world.issue("carl")["token"]
    instances = make_study(n_instances=3)
    assert world.stow(stow_body(instances), token).status_code == 200
    again = world.stow(stow_body(instances), token)
    assert again.status_code == 200
    assert len(again.get_json()["00081199"]["Value"]) == 3
    assert world.album_studies() == {orthanc_id(study_uid(instances[0]))}
    events = world.audit("album:upload")
    assert events[-1].detail["already_stored"] == 3


def test_token_header_is_accepted_too(world: World) -> None:
    token = world.issue("carl")["token"]
    response = world.client.post(
        f"/dicom-web/albums/{world.album}/studies",
        data=stow_body(make_study()),
        headers={"Content-Type": STOW_TYPE, "upload-token": token},
    )
    assert response.status_code == 200


def _seal(world: World, *, purpose: Purpose = Purpose.UPLOAD, **overrides: Any) -> str:
    """A token sealed with the app's ring but with chosen claims (for refusal tests)."""
    claims: dict[str, Any] = {
        "token_id": "tok-x",
        "album_id": world.album,
        "server_id": "",
        "issuer": "sub-carl",
        "lifetime": dt.timedelta(hours=1),
        "now": utcnow(),
    }
    claims.update(overrides)
    ring = KeyRing.from_text(INSECURE_RING)
    issue = issue_upload_token if purpose is Purpose.UPLOAD else issue_album_read_token
    return issue(ring, **claims)


@pytest.mark.parametrize(
    ("case", "status", "code", "words"),
    [
        ("revoked", 401, "token-revoked", "revoked"),
        ("expired", 401, "token-expired", "expired"),
        ("not-yet-valid", 401, "token-expired", "not valid yet"),
        ("tampered", 401, "token-invalid", "invalid"),
        ("other-album", 403, "forbidden", "another album"),
        ("other-server", 401, "token-invalid", "another Orthanc server"),
        ("used-up", 401, "token-revoked", "maximum"),
        ("read-token", 401, "token-invalid", "not an upload token"),
        ("unknown-row", 401, "token-revoked", "no longer valid"),
        ("garbage", 401, "token-invalid", "invalid"),
    ],
)
def test_bad_tokens_are_refused_before_orthanc_sees_a_byte(
    world: World, case: str, status: int, code: str, words: str
) -> None:
    issued = world.issue("carl", max_uses=1)
    token = issued["token"]
    if case == "revoked":
        world.client.delete(
            f"/api/albums/{world.album}/upload-tokens/{issued['id']}", headers=world.auth("carl")
        )
    elif case == "expired":
        token = _seal(world, now=utcnow() - dt.timedelta(hours=2))
    elif case == "not-yet-valid":
        token = _seal(world, now=utcnow() + dt.timedelta(hours=2))
    elif case == "tampered":
        token = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    elif case == "other-album":
        token = _seal(world, album_id=world.other_album)
    elif case == "other-server":
        token = _seal(world, server_id="another-orthanc")
    elif case == "used-up":
        assert world.stow(stow_body(make_study()), token).status_code == 200
    elif case == "read-token":
        token = _seal(world, purpose=Purpose.ALBUM_READ)
    elif case == "unknown-row":
        token = _seal(world)
    elif case == "garbage":
        token = "up1.t1.bm90LWEtdG9rZW4"
    before = world.orthanc.posted_instances()
    labels_before = {s.id: set(s.labels) for s in world.orthanc.studies.values()}
    response = world.stow(stow_body(make_study()), token)
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["error"] == code
    assert words in body["message"]
    assert token not in response.get_data(as_text=True)
    assert world.orthanc.posted_instances() == before
    assert {s.id: set(s.labels) for s in world.orthanc.studies.values()} == labels_before
    denied = [e for e in world.audit("album:upload") if e.outcome == "denied"]
    assert denied and token not in str(denied[-1].detail)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"", STOW_TYPE, 400, "empty"),
        (b"hello", "application/json", 415, "multipart/related"),
        (b"x", "multipart/related; boundary=abc", 400, "boundary"),
        (b"x", 'multipart/related; type="application/dicom+json"; boundary=x', 415, "dicom+json"),
        (b"x", 'multipart/related; type="application/dicom"', 400, "no boundary"),
        (stow_body([b"GIF89a not dicom at all" * 10]), STOW_TYPE, 409, "Not a DICOM file"),
        (stow_body(make_study(n_instances=1), close=False), STOW_TYPE, 400, "closing boundary"),
        (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"\0" * 50,
            STOW_TYPE,
            400,
            "closing boundary",
        ),
    ],
    ids=[
        "empty",
        "json",
        "boundary-not-in-body",
        "metadata-type",
        "no-boundary",
        "not-dicom",
        "unterminated",
        "truncated-part",
    ],
)
def test_bad_stow_bodies_get_a_clear_4xx_and_orthanc_stays_unchanged(
    world: World, body: bytes, content_type: str, status: int, words: str
) -> None:
    issued = world.issue("carl", max_uses=1)
    response = world.client.post(
        f"/dicom-web/albums/{world.album}/studies",
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {issued['token']}"},
    )
    assert response.status_code == status, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    if status == 409:  # STOW-RS form: every instance failed, each with its reason
        failed = response.get_json()["00081198"]["Value"]
        assert failed[0]["00081197"]["Value"] == [0xC000]
        assert words in response.headers["Warning"]
    else:
        assert words in response.get_json()["message"], text
    assert world.orthanc.posted_instances() == 0
    assert world.album_studies() == set()
    # Nothing was stored, so the use is given back: the one-use token still works.
    assert world.row(issued["id"]).use_count == 0
    assert world.stow(stow_body(make_study()), issued["token"]).status_code == 200


def test_size_limit_refuses_before_reading(world: World) -> None:
    settings = world.app.extensions["authsvc"].settings
    world.app.extensions["authsvc"].settings = dataclasses.replace(settings, upload_max_bytes=2048)
    token = world.issue("carl")["token"]
    response = world.stow(stow_body(make_study(n_instances=3)), token)
    assert response.status_code == 413
    assert "2048" in response.get_json()["message"]
    assert world.orthanc.posted_instances() == 0


def test_count_limit_stops_the_upload_and_reports_what_was_stored(world: World) -> None:
    settings = world.app.extensions["authsvc"].settings
    world.app.extensions["authsvc"].settings = dataclasses.replace(settings, upload_max_instances=2)
    token = world.issue("carl")["token"]
    instances = make_study(n_instances=3)
    response = world.stow(stow_body(instances), token)
    assert response.status_code == 202
    assert "more than 2" in response.headers["Warning"]
    assert len(response.get_json()["00081199"]["Value"]) == 2
    assert world.orthanc.posted_instances() == 2
    # What was stored is in the album: nothing is lost, nothing is hidden.
    assert world.album_studies() == {orthanc_id(study_uid(instances[0]))}


def test_mixed_upload_reports_each_instance(world: World) -> None:
    token = world.issue("carl")["token"]
    good = make_study(n_instances=2)
    response = world.stow(stow_body([good[0], b"not dicom" * 30, good[1]]), token)
    assert response.status_code == 202
    body = response.get_json()
    assert len(body["00081199"]["Value"]) == 2
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]


# --- nothing lost --------------------------------------------------------------------------


def test_labelling_failure_is_recorded_and_retried(world: World) -> None:
    token = world.issue("carl")["token"]
    instances = make_study()
    study = orthanc_id(study_uid(instances[0]))
    world.orthanc.labels_down = True
    response = world.stow(stow_body(instances), token)
    assert response.status_code == 202
    assert "not yet in the album" in response.headers["Warning"]
    assert study_uid(instances[0]) in response.headers["Warning"]  # says which study
    assert len(response.get_json()["00081199"]["Value"]) == 2
    assert world.orthanc.labels_of(study) == set()
    with world.app.app_context():
        pending = db.session.execute(sa.select(PendingLabel)).scalars().all()
        assert [(p.study_id, p.label, p.op) for p in pending] == [(study, LABEL, "add")]
    # The album already records the study (reconcile knows), and the audit row says pending.
    assert world.album_studies() == {study}
    (event,) = world.audit("album:upload")
    assert event.detail["pending_study_ids"] == [study]
    world.orthanc.labels_down = False
    with world.app.app_context():
        report = albums.retry_pending_labels(services().archive, due_only=False)
        assert report.applied == 1
        assert pending_count() == 0
    assert world.orthanc.labels_of(study) == {LABEL}


def test_plain_upload_reports_pending_studies(world: World) -> None:
    token = world.issue("carl")["token"]
    world.orthanc.labels_down = True
    instance = make_study(n_instances=1)[0]
    response = world.client.post(
        f"/api/albums/{world.album}/uploads",
        data=instance,
        headers={"Content-Type": "application/dicom", "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["studies"] == [
        {
            "orthanc_id": orthanc_id(study_uid(instance)),
            "study_instance_uid": study_uid(instance),
            "in_album": False,
        }
    ]
    assert body["warnings"] and "retries" in body["warnings"][0]


def test_orthanc_down_gives_503_and_records_nothing(world: World) -> None:
    issued = world.issue("carl", max_uses=1)
    world.orthanc.down = True
    response = world.stow(stow_body(make_study()), issued["token"])
    assert response.status_code == 503
    assert response.get_json()["error"] == "orthanc-unavailable"
    assert world.album_studies() == set()
    with world.app.app_context():
        assert pending_count() == 0
    assert world.row(issued["id"]).use_count == 0
    (event,) = world.audit("album:upload")
    assert event.outcome == "failure" and event.detail["error"] == "orthanc-unavailable"
    world.orthanc.down = False
    assert world.stow(stow_body(make_study()), issued["token"]).status_code == 200


# --- plain uploads -------------------------------------------------------------------------


def test_plain_dicom_zip_and_form_uploads(world: World) -> None:
    token = world.issue("carl")["token"]
    url = f"/api/albums/{world.album}/uploads"
    headers = {"Authorization": f"Bearer {token}"}

    one = make_study(n_instances=1)
    response = world.client.post(
        url, data=one[0], headers={**headers, "Content-Type": "application/dicom"}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["summary"]["stored"] == 1

    zipped = make_study(n_instances=3)
    archive = zip_of(
        {
            **{f"DICOM/IM{i}": data for i, data in enumerate(zipped)},
            "README.txt": b"burned by a CD writer",
            "__MACOSX/._IM0": b"resource fork",
        }
    )
    response = world.client.post(
        url, data=archive, headers={**headers, "Content-Type": "application/zip"}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["summary"]["stored"] == 3 and body["summary"]["skipped"] == 1
    assert {i["name"] for i in body["instances"] if i["status"] == "stored"} == {
        "DICOM/IM0",
        "DICOM/IM1",
        "DICOM/IM2",
    }

    form = make_study(n_instances=2)
    response = world.client.post(
        url,
        data={
            "files": [
                (io.BytesIO(form[0]), "a.dcm"),
                (io.BytesIO(zip_of({"b.dcm": form[1]})), "b.zip"),
            ]
        },
        headers=headers,
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    assert [i["name"] for i in response.get_json()["instances"]] == ["a.dcm", "b.zip/b.dcm"]

    assert world.album_studies() == {orthanc_id(study_uid(s[0])) for s in (one, zipped, form)}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"", "application/dicom", 400, "empty"),
        (b"plain text", "text/plain", 415, "application/dicom"),
        (b"x" * 200, "application/dicom", 422, "Not a DICOM file"),
        (b"PK\x03\x04 broken zip" * 20, "application/zip", 422, "ZIP"),
        (b"not a zip" * 20, "application/zip", 400, "not a ZIP"),
        (zip_of({"README": b"nothing here"}), "application/zip", 400, "no DICOM"),
    ],
    ids=["empty", "text", "not-dicom", "broken-zip", "not-zip", "zip-without-dicom"],
)
def test_bad_plain_uploads(
    world: World, body: bytes, content_type: str, status: int, words: str
) -> None:
    token = world.issue("carl")["token"]
    response = world.client.post(
        f"/api/albums/{world.album}/uploads",
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == status, response.get_json()
    assert words in response.get_json()["error" if status == 422 else "message"] or words in str(
        response.get_json()
    )
    assert world.orthanc.posted_instances() == 0


# --- uploading as a user -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"), [("carl", 200), ("alice", 200), ("vic", 403), ("mallory", 404)]
)
def test_users_upload_with_their_own_credentials(world: World, who: str, status: int) -> None:
    response = world.client.post(
        f"/dicom-web/albums/{world.album}/studies",
        data=stow_body(make_study()),
        headers={"Content-Type": STOW_TYPE, **world.auth(who)},
    )
    assert response.status_code == status, response.get_json()
    assert world.orthanc.posted_instances() == (2 if status == 200 else 0)
    (event,) = world.audit("album:upload")
    assert event.actor == f"user:sub-{who}" or event.actor.endswith(f":sub-{who}")


def test_anonymous_upload_is_401(world: World) -> None:
    response = world.client.post(
        f"/dicom-web/albums/{world.album}/studies",
        data=stow_body(make_study()),
        headers={"Content-Type": STOW_TYPE},
    )
    assert response.status_code == 401
    assert world.orthanc.posted_instances() == 0


def test_unknown_album_is_404_for_tokens_too(world: World) -> None:
    token = world.issue("carl")["token"]
    response = world.client.post(
        "/dicom-web/albums/no-such-album/studies",
        data=stow_body(make_study()),
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 404
    assert world.orthanc.posted_instances() == 0


def test_token_as_basic_auth_password_for_url_only_tools(world: World) -> None:
    import base64

    token = world.issue("carl")["token"]

    def basic(user: str, password: str) -> dict[str, str]:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Content-Type": STOW_TYPE, "Authorization": f"Basic {raw}"}

    url = f"/dicom-web/albums/{world.album}/studies"
    ok = world.client.post(url, data=stow_body(make_study()), headers=basic("token", token))
    assert ok.status_code == 200
    # Only the user name "token" carries an upload token; anything else is not a credential.
    other = world.client.post(url, data=stow_body(make_study()), headers=basic("carl", token))
    assert other.status_code == 401
    assert world.orthanc.posted_instances() == 2


class TestBehindAProxy:
    """RetrieveURLs point at the album root as the client reached it (host, scheme, prefix)."""

    @pytest.fixture
    def extra_config(self) -> dict[str, Any]:
        return {
            "upload_token_keys": INSECURE_RING,
            "orthanc_url": URL,
            "orthanc_retries": 0,
            "proxy_count": 1,
        }

    def test_retrieve_urls_use_the_forwarded_root(self, world: World) -> None:
        token = world.issue("carl")["token"]
        instances = make_study(n_instances=1)
        response = world.stow(
            stow_body(instances),
            token,
            **{
                "X-Forwarded-Host": "pacs.example.org",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Prefix": "/authsvc",
            },
        )
        assert response.status_code == 200
        url = response.get_json()["00081190"]["Value"][0]
        expected = f"https://pacs.example.org/authsvc/dicom-web/albums/{world.album}/studies/"
        assert url == expected + study_uid(instances[0])


def test_the_last_use_cannot_be_won_twice(world: World) -> None:
    """Two uploads racing for a one-use token: exactly one is let through."""
    import threading

    from authsvc.credentials import upload_token_records as records
    from authsvc.errors import TokenRevoked

    token = world.issue("carl", max_uses=1)["token"]
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        with world.app.app_context():
            ring = world.app.extensions["authsvc"].upload_keys
            barrier.wait()
            try:
                records.authorize(services().makers, ring, token, world.album)
                result = "ok"
            except TokenRevoked:
                result = "used-up"
            finally:
                db.session.remove()
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["ok", "used-up", "used-up", "used-up"]


# --- STOW-RS with no album in the path: the token names it -----------------------------------


@pytest.mark.parametrize("header", ["Authorization", "upload-token", "token"])
def test_stow_at_the_dicomweb_root_lands_in_the_tokens_album(world: World, header: str) -> None:
    token = world.issue("carl")
    value = f"Bearer {token['token']}" if header == "Authorization" else token["token"]
    instances = make_study(n_series=1, n_instances=2)
    response = world.client.post(
        "/dicom-web/studies",
        data=stow_body(instances),
        headers={"Content-Type": STOW_TYPE, header: value},
    )
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/dicom+json"
    referenced = response.get_json()["00081199"]["Value"]
    assert sorted(r["00081155"]["Value"][0] for r in referenced) == sorted(
        sop_uid(i) for i in instances
    )
    study = orthanc_id(study_uid(instances[0]))
    assert world.orthanc.labels_of(study) == {LABEL}
    assert world.album_studies() == {study}
    assert world.row(token["id"]).use_count == 1
    (event,) = world.audit("album:upload")
    assert event.actor == f"upload-token:{token['id']}" and event.outcome == "success"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthenticated"),  # no token at all
        ({"Authorization": "Bearer up1.garbage"}, "token-invalid"),
        ({"upload-token": "not-a-token"}, "token-invalid"),
    ],
)
def test_stow_at_the_root_without_a_good_token_is_401_and_orthanc_sees_nothing(
    world: World, headers: dict[str, str], code: str
) -> None:
    response = world.client.post(
        "/dicom-web/studies",
        data=stow_body(make_study()),
        headers={"Content-Type": STOW_TYPE, **headers},
    )
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"] == code
    assert world.orthanc.posted_instances() == 0


def test_stow_at_the_root_refuses_expired_revoked_and_user_credentials(world: World) -> None:
    expired = _seal(world, now=utcnow() - dt.timedelta(hours=2))
    revoked = world.issue("carl")
    world.client.delete(
        f"/api/albums/{world.album}/upload-tokens/{revoked['id']}", headers=world.auth("carl")
    )
    for headers, code in (
        ({"Authorization": f"Bearer {expired}"}, "token-expired"),
        ({"Authorization": f"Bearer {revoked['token']}"}, "token-revoked"),
        # A contributor's own key names no album: this route is for upload tokens only.
        (world.auth("carl"), "unauthenticated"),
    ):
        response = world.client.post(
            "/dicom-web/studies",
            data=stow_body(make_study()),
            headers={"Content-Type": STOW_TYPE, **headers},
        )
        assert (response.status_code, response.get_json()["error"]) == (401, code)
    assert world.orthanc.posted_instances() == 0
    assert {e.outcome for e in world.audit("album:upload")} == {"denied"}
