"""``GET /gate/auth``, album read tokens and album DICOMweb access checks, through the Flask
test client on SQLite and PostgreSQL, with Keycloak and Orthanc faked.

The real nginx and Orthanc are driven in tests/integration/test_gate_nginx.py; here each
answer of the HTTP edge is pinned: only 200/401/403 from the gate, reasons in a header, 404
for albums a caller may not know, read tokens that stop at once when revoked.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc import albums
from authsvc.albums import Caller
from authsvc.credentials.sealing import generate_key
from authsvc.extensions import db
from authsvc.models import AuditEvent
from authsvc.policy import Actor
from authsvc.services import services
from tests import oidc
from tests.conftest import base_config
from tests.conftest import running_app
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc
from tests.fake_orthanc import FakeStudy

pytestmark = pytest.mark.functional

ADMIN = Caller(Actor("root", is_global_admin=True))
CAROL_SUB = "carol-sub"
ALICE_SUB = "alice-sub"


@pytest.fixture(params=["sqlite", "postgresql"])
def gate_app(
    request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO
) -> Iterator[tuple[Flask, FakeOrthanc, rm.Mocker]]:
    config = base_config(
        tmp_path,
        orthanc_url=URL,
        orthanc_retries=0,
        upload_token_keys=generate_key("t1"),
        admin_roles="admin",
        proxy_count=1,
        **oidc.oidc_config(),
    )
    if request.param == "postgresql":
        config["database_url"] = request.getfixturevalue("pg_schema")
    with rm.Mocker() as mock:
        oidc.mock_idp(mock)
        fake = FakeOrthanc(mock)
        with running_app(config, log_stream) as app:
            yield app, fake, mock


@pytest.fixture
def world(gate_app: tuple[Flask, FakeOrthanc, rm.Mocker]) -> dict[str, Any]:
    """Album A (carol viewer, alice manager) holding study A; album B holding study B."""
    app, fake, mock = gate_app
    study_a = fake.add_study("1.2.840.1")
    study_b = fake.add_study("1.2.840.2")
    study_c = fake.add_study("1.2.840.3")
    with app.app_context():
        album_a = albums.create_album(services().archive, ADMIN, "A").album
        album_b = albums.create_album(services().archive, ADMIN, "B").album
        albums.add_studies(services().archive, ADMIN, album_a.id, [study_a.id])
        albums.add_studies(services().archive, ADMIN, album_b.id, [study_b.id])
        albums.invite_member(ADMIN, album_a.id, "user", CAROL_SUB, "viewer")
        albums.invite_member(ADMIN, album_a.id, "user", ALICE_SUB, "manager")
        ids = {"album_a": album_a.id, "album_b": album_b.id}
    return {"app": app, "fake": fake, "mock": mock, "a": study_a, "b": study_b, "c": study_c, **ids}


def bearer(username: str, sub: str, **kwargs: Any) -> dict[str, str]:
    # Module-level tokens are signed at import: they must outlive a whole test session.
    kwargs.setdefault("lifetime", 86_400)
    return {"Authorization": f"Bearer {oidc.make_token(username, subject=sub, **kwargs)}"}


CAROL = bearer("carol", CAROL_SUB)
ALICE = bearer("alice", ALICE_SUB)
ROOT = bearer("root", "root-sub", realm_roles=("admin",))


def gate(client: FlaskClient, method: str, uri: str, headers: dict[str, str] | None = None) -> Any:
    return client.get(
        "/gate/auth",
        headers={"X-Original-Method": method, "X-Original-URI": uri, **(headers or {})},
    )


def test_viewer_reads_her_album_and_nothing_else(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    a: FakeStudy = world["a"]
    b: FakeStudy = world["b"]
    assert gate(client, "GET", f"/studies/{a.id}", CAROL).status_code == 200
    assert gate(client, "GET", f"/dicom-web/studies/{a.uid}/metadata", CAROL).status_code == 200
    denied = gate(client, "GET", f"/studies/{b.id}", CAROL)
    assert denied.status_code == 403
    assert denied.headers["X-Authsvc-Reason"]
    assert gate(client, "DELETE", f"/studies/{a.id}", CAROL).status_code == 403
    assert gate(client, "POST", "/tools/find", CAROL).status_code == 403
    assert gate(client, "GET", "/dicom-web/studies", CAROL).status_code == 403


def test_only_a_yes_to_a_read_may_be_reused_by_nginx(world: dict[str, Any]) -> None:
    """X-Accel-Expires: gate_cache_seconds on an allowed GET/HEAD, 0 on anything else."""
    app: Flask = world["app"]
    client = app.test_client()
    a: FakeStudy = world["a"]
    b: FakeStudy = world["b"]
    frame = f"/dicom-web/studies/{a.uid}/series/1.2/instances/1.2.3/frames/1"
    ttl = str(app.extensions["authsvc"].settings.gate_cache_seconds)
    assert ttl == "5"
    for method in ("GET", "HEAD"):
        allowed = gate(client, method, frame, CAROL)
        assert allowed.status_code == 200
        assert allowed.headers["X-Accel-Expires"] == ttl
    refusals = [
        gate(client, "GET", f"/studies/{b.id}", CAROL),  # 403: policy
        gate(client, "GET", f"/studies/{a.id}"),  # 401: no credentials
        gate(client, "GET", f"/studies/{a.id}", {"Authorization": "Bearer junk"}),
    ]
    for answer in refusals:
        assert answer.status_code in (401, 403)
        assert answer.headers["X-Accel-Expires"] == "0"
    # An allowed write is asked about every time (root may upload).
    upload = gate(client, "POST", "/instances", ROOT)
    assert upload.status_code == 200
    assert upload.headers["X-Accel-Expires"] == "0"


def test_gate_cache_seconds_zero_turns_reuse_off(tmp_path: Any, log_stream: io.StringIO) -> None:
    config = base_config(tmp_path, orthanc_url=URL, gate_cache_seconds=0, **oidc.oidc_config())
    with rm.Mocker() as mock:
        oidc.mock_idp(mock)
        with running_app(config, log_stream) as app:
            answer = gate(app.test_client(), "GET", "/ui/app/index.html")
            assert answer.status_code == 200
            assert answer.headers["X-Accel-Expires"] == "0"


def test_anonymous_is_401_and_static_passes(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    answer = gate(client, "GET", f"/studies/{world['a'].id}")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert gate(client, "GET", "/ui/app/index.html").status_code == 200


def test_bad_credentials_are_401(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    uri = f"/studies/{world['a'].id}"
    assert gate(client, "GET", uri, {"Authorization": "Bearer junk"}).status_code == 401
    expired = bearer("carol", CAROL_SUB, lifetime=-3600)
    assert gate(client, "GET", uri, expired).status_code == 401
    assert gate(client, "GET", uri, {"Authorization": "Bearer ar1.k.garbage"}).status_code == 401


def test_admin_passes_without_asking_orthanc(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    fake: FakeOrthanc = world["fake"]
    before = len(fake.calls)
    assert gate(client, "DELETE", f"/studies/{world['c'].id}", ROOT).status_code == 200
    assert gate(client, "GET", "/studies", ROOT).status_code == 200
    assert len(fake.calls) == before


def test_orthanc_down_is_403_with_a_reason_and_logged(
    world: dict[str, Any], log_stream: io.StringIO
) -> None:
    client = world["app"].test_client()
    world["fake"].down = True
    answer = gate(client, "GET", f"/studies/{world['a'].id}", CAROL)
    assert answer.status_code == 403
    assert answer.headers["X-Authsvc-Reason"] == "orthanc unavailable"
    assert "Orthanc unavailable" in log_stream.getvalue()


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("", ""),
        ("GET", ""),
        ("BREW", "/studies"),
        ("GET", "/studies/%2e%2e/x"),
        ("GET", "x" * 9000),
        ("GET", "/\x00"),
        ("GET", "/dicom-web/studies/../../x"),
    ],
)
def test_the_gate_answers_nothing_but_200_401_403(
    world: dict[str, Any], method: str, uri: str
) -> None:
    client = world["app"].test_client()
    for headers in (None, CAROL, ROOT):
        answer = gate(client, method, uri, headers)
        assert answer.status_code in (200, 401, 403)
        if method != "GET" or not uri.startswith("/ui"):
            assert answer.status_code != 200


def test_label_removed_by_authsvc_is_seen_by_the_gate_at_once(world: dict[str, Any]) -> None:
    app: Flask = world["app"]
    client = app.test_client()
    a: FakeStudy = world["a"]
    assert gate(client, "GET", f"/studies/{a.id}", CAROL).status_code == 200
    with app.app_context():
        albums.remove_studies(services().archive, ADMIN, world["album_a"], [a.id])
    assert gate(client, "GET", f"/studies/{a.id}", CAROL).status_code == 403


# --- read tokens ------------------------------------------------------------------------------


def test_read_token_lifecycle(world: dict[str, Any]) -> None:
    app: Flask = world["app"]
    client = app.test_client()
    album = world["album_a"]
    a: FakeStudy = world["a"]
    b: FakeStudy = world["b"]
    assert client.post(f"/api/albums/{album}/read-tokens", headers=CAROL).status_code == 403
    assert (
        client.post(f"/api/albums/{world['album_b']}/read-tokens", headers=ALICE).status_code == 404
    )
    assert client.post(f"/api/albums/{album}/read-tokens").status_code == 401
    bad = client.post(f"/api/albums/{album}/read-tokens", json={"lifetime": 5}, headers=ALICE)
    assert bad.status_code == 422

    created = client.post(
        f"/api/albums/{album}/read-tokens", json={"note": "for the lab"}, headers=ALICE
    )
    assert created.status_code == 201
    token = created.get_json()["token"]
    assert token.startswith("ar1.")
    listed = client.get(f"/api/albums/{album}/read-tokens", headers=ALICE).get_json()["items"]
    assert [t["id"] for t in listed] == [created.get_json()["id"]]
    assert "token" not in listed[0]
    assert listed[0]["last_used_at"] is None

    as_token = {"Authorization": f"Bearer {token}"}
    assert gate(client, "GET", f"/studies/{a.id}", as_token).status_code == 200
    assert gate(client, "GET", f"/studies/{a.id}/archive?token={token}").status_code == 200
    assert gate(client, "GET", f"/studies/{a.id}", {"token": token}).status_code == 200
    assert gate(client, "GET", f"/studies/{b.id}", as_token).status_code == 403
    assert gate(client, "POST", f"/studies/{a.id}/modify", as_token).status_code == 403
    assert gate(client, "GET", "/studies", as_token).status_code == 403
    listed = client.get(f"/api/albums/{album}/read-tokens", headers=ALICE).get_json()["items"]
    assert listed[0]["last_used_at"] is not None

    revoked = client.delete(
        f"/api/albums/{album}/read-tokens/{created.get_json()['id']}", headers=ALICE
    )
    assert revoked.status_code == 200
    assert gate(client, "GET", f"/studies/{a.id}", as_token).status_code == 401
    with app.app_context():
        actions = db.session.execute(sa.select(AuditEvent.action)).scalars().all()
    assert "token:album-read:create" in actions and "token:album-read:revoke" in actions


# --- album DICOMweb access checks (no streaming needed) ------------------------------------------


def test_album_dicomweb_access(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    album_a, album_b = world["album_a"], world["album_b"]
    b: FakeStudy = world["b"]
    assert client.get(f"/dicom-web/albums/{album_a}/studies").status_code == 401
    assert client.get(f"/dicom-web/albums/{album_b}/studies", headers=CAROL).status_code == 404
    assert client.get("/dicom-web/albums/nope/studies", headers=CAROL).status_code == 404
    outside = client.get(f"/dicom-web/albums/{album_a}/studies/{b.uid}/metadata", headers=CAROL)
    assert outside.status_code == 404
    odd = client.get(f"/dicom-web/albums/{album_a}/studies/1.2.*/metadata", headers=CAROL)
    assert odd.status_code == 400


def test_share_link_opens_its_study_read_only(world: dict[str, Any]) -> None:
    from authsvc.credentials.share_links import ResourceLevel
    from authsvc.credentials.share_links import ResourceRef
    from authsvc.models import utcnow
    from authsvc.orthanc.plugin_protocol import CreateRequest

    app: Flask = world["app"]
    client = app.test_client()
    a: FakeStudy = world["a"]
    c: FakeStudy = world["c"]
    with app.app_context():
        created = app.extensions["authsvc"].share_tokens.create(
            CreateRequest(
                token_type="download-instant-link",
                resources=(ResourceRef(ResourceLevel.STUDY, orthanc_id=c.id, dicom_uid=c.uid),),
                request_id=None,
                expiration_date=None,
                validity_duration=600,
                server_id=None,
            ),
            # Made through the plugin: no user maker whose rights the link would stand on
            # (tests/functional/test_attacks_credentials.py covers links made by users).
            created_by="plugin",
            now=utcnow(),
        )
        db.session.commit()
    token = created.token
    # Study C is in no album: the link alone opens it, for reading only.
    assert gate(client, "GET", f"/studies/{c.id}/archive?token={token}").status_code == 200
    assert gate(client, "GET", f"/studies/{c.id}", {"token": token}).status_code == 200
    assert gate(client, "GET", f"/studies/{a.id}", {"token": token}).status_code == 403
    assert gate(client, "DELETE", f"/studies/{c.id}", {"token": token}).status_code == 403
    assert gate(client, "POST", "/tools/find", {"token": token}).status_code == 403
    assert gate(client, "GET", f"/studies/{c.id}", {"token": "sh1.k.forged"}).status_code == 401


def test_album_qido_behind_a_proxy_prefix(world: dict[str, Any]) -> None:
    """Only album studies come back, paged here, with URLs on the public album root."""
    from authsvc.orthanc.dicomweb import MARKER_HOST

    a: FakeStudy = world["a"]
    b: FakeStudy = world["b"]

    def dataset(study: FakeStudy) -> dict[str, Any]:
        return {
            "0020000D": {"vr": "UI", "Value": [study.uid]},
            "00081190": {
                "vr": "UR",
                "Value": [f"http://{MARKER_HOST}/dicom-web/studies/{study.uid}"],
            },
        }

    # Orthanc "ignores" the UID restriction here: the second line of defence must hold.
    qido = world["mock"].get(f"{URL}/dicom-web/studies", json=[dataset(b), dataset(a)])
    client = world["app"].test_client()
    album = world["album_a"]
    proxy = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pacs.example",
        "X-Forwarded-Prefix": "/pacs",
    }
    answer = client.get(
        f"/dicom-web/albums/{album}/studies?PatientName=Doe*&limit=5&token=",
        headers={**CAROL, **proxy},
    )
    assert answer.status_code == 200
    assert answer.mimetype == "application/dicom+json"
    assert answer.get_json() == [
        {
            "0020000D": {"vr": "UI", "Value": [a.uid]},
            "00081190": {
                "vr": "UR",
                "Value": [f"https://pacs.example/pacs/dicom-web/albums/{album}/studies/{a.uid}"],
            },
        }
    ]
    sent = qido.last_request
    assert sent.headers["Forwarded"] == f"host={MARKER_HOST};proto=http"
    assert sent.query == f"patientname=doe*&studyinstanceuid={a.uid}"
    empty = client.get(f"/dicom-web/albums/{album}/studies?offset=1", headers=CAROL)
    assert empty.get_json() == []


def test_album_qido_sends_ohifs_includefield_list_as_separate_fields(
    world: dict[str, Any],
) -> None:
    """OHIF 3's study list asks ``includefield=a%2Cb``; Orthanc only reads repeated fields."""
    a: FakeStudy = world["a"]
    qido = world["mock"].get(f"{URL}/dicom-web/studies", json=[])
    client = world["app"].test_client()
    answer = client.get(
        f"/dicom-web/albums/{world['album_a']}/studies?limit=101&offset=0"
        "&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030",
        headers=CAROL,
    )
    assert answer.status_code == 200
    sent = qido.last_request.url.split("?", 1)[1]
    assert sent == (
        "fuzzymatching=false&includefield=00081030&includefield=00080060"
        f"&includefield=00080090&includefield=00100030&StudyInstanceUID={a.uid}"
    )
    refused = client.get(
        f"/dicom-web/albums/{world['album_a']}/studies?includefield=0008%261030", headers=CAROL
    )
    assert refused.status_code == 400
    assert "includefield" in refused.get_json()["message"]


def test_oe2_sends_the_keycloak_token_in_the_token_header(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    a: FakeStudy = world["a"]
    jwt = oidc.make_token("carol", subject=CAROL_SUB)
    assert gate(client, "GET", f"/studies/{a.id}", {"token": jwt}).status_code == 200
    assert gate(client, "GET", f"/studies/{world['b'].id}", {"token": jwt}).status_code == 403


def test_a_user_with_a_link_gets_what_either_allows(world: dict[str, Any]) -> None:
    app: Flask = world["app"]
    client = app.test_client()
    a: FakeStudy = world["a"]
    b: FakeStudy = world["b"]
    created = client.post(f"/api/albums/{world['album_b']}/read-tokens", headers=ROOT)
    assert created.status_code == 201
    link = created.get_json()["token"]
    # carol reads A as a member and B through the album B read token; nothing else.
    assert gate(client, "GET", f"/studies/{a.id}?token={link}", CAROL).status_code == 200
    assert gate(client, "GET", f"/studies/{b.id}?token={link}", CAROL).status_code == 200
    assert gate(client, "GET", f"/studies/{world['c'].id}?token={link}", CAROL).status_code == 403
    assert gate(client, "DELETE", f"/studies/{b.id}?token={link}", CAROL).status_code == 403
