"""Attack tests: what people who try to get in will try, each an ordinary test that could fail.

Families (the ``test_<family>_…`` prefix is what bench/results.py counts by):

* ``escalation``: every role of album A × every album action against album B it is not in;
* ``idor``: the ids of album B's members, tokens and studies through album A's routes;
* ``confusion``: one kind of token where another is expected, album A's on album B, server X's
  on server Y, another deployment's key ring;
* ``jwt``: alg none, HMAC keyed with the provider's public key, wrong iss/aud, expired,
  future nbf, a foreign key under the provider's kid, a flood of unknown kids;
* ``tamper``: every byte of every token kind changed, one at a time;
* ``replay``: a revoked token on every path that takes it;
* ``injection``: album names that try to become labels, paths or markup;
* ``paths``: gate path tricks (``..``, encoded slashes, ``//``, case, trailing dots, tokens in
  the query string);
* ``bodies``: oversized bodies;
* ``secrets``: every secret used in this module is grepped for in the captured logs.

Keycloak is the fake provider of tests/oidc.py and Orthanc the in-memory fake (with
``POST /instances``), on SQLite and PostgreSQL where the database matters.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc import albums
from authsvc.albums import Caller
from authsvc.credentials.api_keys import parse_api_key
from authsvc.credentials.sealing import generate_key
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AlbumReadToken
from authsvc.models import AlbumStudy
from authsvc.models import ApiKey
from authsvc.models import PendingLabel
from authsvc.models import ShareToken
from authsvc.models import UploadToken
from authsvc.policy import Actor
from authsvc.services import services
from tests import oidc
from tests.conftest import INSECURE_SECRET_KEY
from tests.conftest import api_key_row
from tests.conftest import base_config
from tests.conftest import running_app
from tests.dicom_factory import make_study
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeStudy
from tests.functional.uploads.test_uploads import UploadingOrthanc
from tests.plugin_client import PluginClient
from tests.plugin_client import basic

pytestmark = pytest.mark.functional

ADMIN = Caller(Actor("root", is_global_admin=True))
# Throw-away secrets, named as such; the "secrets" family greps the logs for each of them.
INSECURE_UPLOAD_RING = generate_key("t1")
INSECURE_SHARE_RING = generate_key("s1")
INSECURE_PLUGIN_PASSWORD = "insecure-plugin-password-0123456789"
ROLE_USERS = {"olga": "owner", "mona": "manager", "cody": "contributor", "vera": "viewer"}
BOB = "bob"  # owner of album B
STOW_BOUNDARY = "attack-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


def sub(username: str) -> str:
    return f"{username}-sub"


def bearer(username: str, **kwargs: Any) -> dict[str, str]:
    token = oidc.make_token(username, subject=sub(username), **kwargs)
    return {"Authorization": f"Bearer {token}"}


def stow_body(instance: bytes) -> bytes:
    return (
        f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + instance
        + f"\r\n--{STOW_BOUNDARY}--\r\n".encode()
    )


@dataclasses.dataclass
class World:
    """Album A (olga owner, mona manager, cody contributor, vera viewer) and album B (bob).

    B holds study ``b``, an upload token, a read token, bob's API key and a share link; study
    ``c`` is in no album; ``a`` is in album A.
    """

    app: Flask
    client: FlaskClient
    orthanc: UploadingOrthanc
    mock: rm.Mocker
    log: io.StringIO
    album_a: str
    album_b: str
    a: FakeStudy
    b: FakeStudy
    c: FakeStudy
    members_b: dict[str, int]
    members_a: dict[str, int]
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    token_ids: dict[str, str] = dataclasses.field(default_factory=dict)

    def gate(self, method: str, uri: str, headers: dict[str, str] | None = None) -> Any:
        return self.client.get(
            "/gate/auth",
            headers={"X-Original-Method": method, "X-Original-URI": uri, **(headers or {})},
        )

    def plugin(self) -> PluginClient:
        return PluginClient(self.client, auth=basic("orthanc-plugin", INSECURE_PLUGIN_PASSWORD))

    def validate(self, token: str, study: FakeStudy, **extra: Any) -> bool:
        body = {
            "method": "get",
            "level": "study",
            "server-id": None,
            "orthanc-id": study.id,
            "dicom-uid": study.uid,
            "token-key": "token",
            "token-value": token,
            **extra,
        }
        response = self.plugin().post("/tokens/validate", body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return bool(response.get_json()["granted"])

    def upload(self, album: str, headers: dict[str, str], *, stow: bool = False) -> Any:
        instance = make_study(n_instances=1)[0]
        if stow:
            return self.client.post(
                f"/dicom-web/albums/{album}/studies",
                data=stow_body(instance),
                headers={"Content-Type": STOW_TYPE, **headers},
            )
        return self.client.post(
            f"/api/albums/{album}/uploads",
            data=instance,
            headers={"Content-Type": "application/dicom", **headers},
        )

    def snapshot(self) -> dict[str, list[str]]:
        """Every row that an attack could change (audit and sign-in records aside)."""
        out: dict[str, list[str]] = {}
        with self.app.app_context():
            for model in (
                Album,
                AlbumMember,
                AlbumStudy,
                UploadToken,
                AlbumReadToken,
                PendingLabel,
                ApiKey,
                ShareToken,
            ):
                table = model.__table__
                # Usage stamps may move on a refused request; ownership and grants may not.
                cols = [c for c in table.columns if c.name not in {"last_used_at", "last_seen_at"}]
                rows = db.session.execute(sa.select(*cols)).all()
                out[table.name] = sorted(repr(tuple(row)) for row in rows)
        out["orthanc-labels"] = sorted(
            f"{s.id}:{sorted(s.labels)}" for s in self.orthanc.studies.values()
        )
        return out


def _config(tmp_path: Any, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "orthanc_url": URL,
        "orthanc_retries": 0,
        "upload_token_keys": INSECURE_UPLOAD_RING,
        "share_token_keys": INSECURE_SHARE_RING,
        "plugin_username": "orthanc-plugin",
        "plugin_password": INSECURE_PLUGIN_PASSWORD,
        "admin_roles": "admin",
        **oidc.oidc_config(),
    }
    settings.update(extra)
    return base_config(tmp_path, **settings)


def _build(app: Flask, orthanc: UploadingOrthanc, mock: rm.Mocker, log: io.StringIO) -> World:
    a = orthanc.add_study("1.2.840.9.1")
    b = orthanc.add_study("1.2.840.9.2")
    c = orthanc.add_study("1.2.840.9.3")
    with app.app_context():
        album_a = albums.create_album(services().archive, ADMIN, "A").album.id
        album_b = albums.create_album(services().archive, ADMIN, "B").album.id
        albums.add_studies(services().archive, ADMIN, album_a, [a.id])
        albums.add_studies(services().archive, ADMIN, album_b, [b.id])
        members_a = {
            user: albums.invite_member(ADMIN, album_a, "user", sub(user), role).id
            for user, role in ROLE_USERS.items()
        }
        members_b = {BOB: albums.invite_member(ADMIN, album_b, "user", sub(BOB), "owner").id}
        key, key_plaintext = api_key_row(sub(BOB), BOB, roles=[], name="bob's key")
        key_id = key.id  # read before the commit expires the row
        db.session.add(key)
        db.session.commit()
    world = World(
        app=app,
        client=app.test_client(),
        orthanc=orthanc,
        mock=mock,
        log=log,
        album_a=album_a,
        album_b=album_b,
        a=a,
        b=b,
        c=c,
        members_a=members_a,
        members_b=members_b,
    )
    world.tokens["api-key"] = key_plaintext
    world.token_ids["api-key"] = key_id
    bob = bearer(BOB)
    for kind, path in (("upload", "upload-tokens"), ("read", "read-tokens")):
        for album, owner in ((album_b, bob), (album_a, bearer("olga"))):
            made = world.client.post(f"/api/albums/{album}/{path}", json={}, headers=owner)
            assert made.status_code == 201, made.get_json()
            suffix = "" if album == album_b else "-a"
            world.tokens[kind + suffix] = made.get_json()["token"]
            world.token_ids[kind + suffix] = made.get_json()["id"]
    share = world.plugin().put(
        "/tokens/viewer-instant-link",
        {
            "resources": [{"level": "study", "orthanc-id": b.id, "dicom-uid": b.uid}],
            "server-id": None,
            "type": "viewer-instant-link",
            "validity-duration": 600,
        },
    )
    assert share.status_code == 200, share.get_data(as_text=True)
    world.tokens["share"] = share.get_json()["token"]
    world.tokens["jwt"] = oidc.make_token(BOB, subject=sub(BOB))
    return world


def _world(
    request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO, backend: str
) -> Iterator[World]:
    config = _config(tmp_path)
    if backend == "postgresql":
        config["database_url"] = request.getfixturevalue("pg_schema")
    with rm.Mocker() as mock:
        oidc.mock_idp(mock)
        orthanc = UploadingOrthanc(mock)
        with running_app(config, log_stream) as app:
            yield _build(app, orthanc, mock, log_stream)


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO
) -> Iterator[World]:
    yield from _world(request, tmp_path, log_stream, request.param)


@pytest.fixture
def lite(request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO) -> Iterator[World]:
    """The same world on SQLite only, for the floods (the database plays no part in them)."""
    yield from _world(request, tmp_path, log_stream, "sqlite")


# --- escalation: every role of album A × every album action on album B -----------------------

Attack = Callable[[World, dict[str, str]], Any]

ALBUM_ACTIONS: dict[str, Attack] = {
    "view": lambda w, h: w.client.get(f"/api/albums/{w.album_b}", headers=h),
    "rename": lambda w, h: w.client.patch(
        f"/api/albums/{w.album_b}", json={"name": "X"}, headers=h
    ),
    "delete": lambda w, h: w.client.delete(f"/api/albums/{w.album_b}", headers=h),
    "list-members": lambda w, h: w.client.get(f"/api/albums/{w.album_b}/members", headers=h),
    "invite-self-owner": lambda w, h: w.client.post(
        f"/api/albums/{w.album_b}/members",
        json={"kind": "user", "principal": sub("olga"), "role": "owner"},
        headers=h,
    ),
    "invite-group": lambda w, h: w.client.post(
        f"/api/albums/{w.album_b}/members",
        json={"kind": "group", "principal": "everyone", "role": "viewer"},
        headers=h,
    ),
    "demote-owner": lambda w, h: w.client.patch(
        f"/api/albums/{w.album_b}/members/{w.members_b[BOB]}", json={"role": "viewer"}, headers=h
    ),
    "remove-owner": lambda w, h: w.client.delete(
        f"/api/albums/{w.album_b}/members/{w.members_b[BOB]}", headers=h
    ),
    "leave": lambda w, h: w.client.post(f"/api/albums/{w.album_b}/leave", headers=h),
    "list-studies": lambda w, h: w.client.get(f"/api/albums/{w.album_b}/studies", headers=h),
    "add-studies": lambda w, h: w.client.post(
        f"/api/albums/{w.album_b}/studies", json={"studies": [w.c.id]}, headers=h
    ),
    "add-study": lambda w, h: w.client.put(f"/api/albums/{w.album_b}/studies/{w.c.id}", headers=h),
    "remove-studies": lambda w, h: w.client.post(
        f"/api/albums/{w.album_b}/studies/remove", json={"studies": [w.b.id]}, headers=h
    ),
    "remove-study": lambda w, h: w.client.delete(
        f"/api/albums/{w.album_b}/studies/{w.b.id}", headers=h
    ),
    "issue-upload-token": lambda w, h: w.client.post(
        f"/api/albums/{w.album_b}/upload-tokens", json={}, headers=h
    ),
    "list-upload-tokens": lambda w, h: w.client.get(
        f"/api/albums/{w.album_b}/upload-tokens", headers=h
    ),
    "revoke-upload-token": lambda w, h: w.client.delete(
        f"/api/albums/{w.album_b}/upload-tokens/{w.token_ids['upload']}", headers=h
    ),
    "issue-read-token": lambda w, h: w.client.post(
        f"/api/albums/{w.album_b}/read-tokens", json={}, headers=h
    ),
    "list-read-tokens": lambda w, h: w.client.get(
        f"/api/albums/{w.album_b}/read-tokens", headers=h
    ),
    "revoke-read-token": lambda w, h: w.client.delete(
        f"/api/albums/{w.album_b}/read-tokens/{w.token_ids['read']}", headers=h
    ),
    "upload": lambda w, h: w.upload(w.album_b, h),
    "stow": lambda w, h: w.upload(w.album_b, h, stow=True),
    "qido": lambda w, h: w.client.get(f"/dicom-web/albums/{w.album_b}/studies", headers=h),
    "wado-metadata": lambda w, h: w.client.get(
        f"/dicom-web/albums/{w.album_b}/studies/{w.b.uid}/metadata", headers=h
    ),
}


@pytest.mark.parametrize("user", [*ROLE_USERS, "stranger"])
def test_escalation_no_role_of_album_a_reaches_album_b(world: World, user: str) -> None:
    headers = bearer(user)
    before = world.snapshot()
    posted = world.orthanc.posted_instances()
    for action, attack in ALBUM_ACTIONS.items():
        response = attack(world, headers)
        assert response.status_code in (403, 404), (action, response.status_code)
        assert response.get_json()["error"], action
    for method in ("GET", "DELETE", "PUT"):
        assert world.gate(method, f"/studies/{world.b.id}", headers).status_code == 403
    assert world.snapshot() == before
    assert world.orthanc.posted_instances() == posted
    # Album B stays hidden: it is not in the attacker's list.
    listed = world.client.get("/api/albums", headers=headers).get_json()["items"]
    assert world.album_b not in {item["id"] for item in listed}


# --- IDOR: album B's ids through album A's routes, where the attacker is owner -------------------


def test_idor_ids_of_album_b_through_album_a(world: World) -> None:
    olga = bearer("olga")
    a = world.album_a
    before = world.snapshot()
    bob_member = world.members_b[BOB]
    attempts = [
        ("PATCH", f"/api/albums/{a}/members/{bob_member}", {"role": "viewer"}),
        ("DELETE", f"/api/albums/{a}/members/{bob_member}", None),
        ("DELETE", f"/api/albums/{a}/upload-tokens/{world.token_ids['upload']}", None),
        ("DELETE", f"/api/albums/{a}/read-tokens/{world.token_ids['read']}", None),
    ]
    for method, path, body in attempts:
        response = world.client.open(path, method=method, json=body, headers=olga)
        assert response.status_code == 404, (method, path, response.get_json())
    # Removing B's study "from A" must not touch B's label (nor report it as removed).
    removed = world.client.delete(f"/api/albums/{a}/studies/{world.b.id}", headers=olga)
    assert removed.status_code in (404, 409, 200)
    if removed.status_code == 200:
        assert removed.get_json()["status"] != "removed"
    bulk = world.client.post(
        f"/api/albums/{a}/studies/remove", json={"studies": [world.b.id]}, headers=olga
    )
    assert bulk.status_code == 200
    assert bulk.get_json()["summary"].get("removed", 0) == 0
    assert world.snapshot() == before
    # The tokens of B still work: nothing was revoked by the attempts above.
    assert (
        world.gate("GET", f"/studies/{world.b.id}", {"token": world.tokens["read"]}).status_code
        == 200
    )


def test_idor_credentials_of_others(world: World) -> None:
    """Bob's API key and the plugin's share link, through olga (no admin role)."""
    olga = bearer("olga")
    with world.app.app_context():
        share_id = db.session.scalars(sa.select(ShareToken.id)).one()
    before = world.snapshot()
    key_id = world.token_ids["api-key"]
    for method, path in (
        ("GET", f"/api/api-keys/{key_id}"),
        ("DELETE", f"/api/api-keys/{key_id}"),
        ("GET", f"/api/share-tokens/{share_id}"),
        ("DELETE", f"/api/share-tokens/{share_id}"),
    ):
        response = world.client.open(path, method=method, headers=olga)
        assert response.status_code in (403, 404), (method, path, response.status_code)
    for path in ("/api/api-keys?all=true", "/api/share-tokens?all=true"):
        listed = world.client.get(path, headers=olga)
        assert listed.status_code == 403 or listed.get_json()["items"] == [], path
    roles = world.client.put("/api/roles", json={"roles": {}}, headers=olga)
    assert roles.status_code in (403, 422)
    assert world.snapshot() == before
    # Both still work for their owners.
    study = f"/studies/{world.b.id}"
    assert world.gate("GET", study, {"api-key": world.tokens["api-key"]}).status_code == 200
    assert world.validate(world.tokens["share"], world.b) is True


FORGED_IDS = [
    "0",
    "-1",
    "999999999",
    "x" * 300,
    "%00",
    "1 OR 1=1",
    "' OR '1'='1",
    "../" + "a",
    "１",
    "+1",
    " 1",
    "1_0",
    "9" * 40,
]


def test_idor_forged_ids_are_404_on_every_id_route(world: World) -> None:
    olga = bearer("olga")
    a = world.album_a
    before = world.snapshot()
    for ident in FORGED_IDS:
        _forged_id_routes(world, olga, a, ident)
    assert world.snapshot() == before


def _forged_id_routes(world: World, olga: dict[str, str], a: str, ident: str) -> None:
    routes = [
        ("GET", f"/api/albums/{ident}"),
        ("PATCH", f"/api/albums/{ident}"),
        ("DELETE", f"/api/albums/{ident}"),
        ("GET", f"/api/albums/{ident}/members"),
        ("PATCH", f"/api/albums/{a}/members/{ident}"),
        ("DELETE", f"/api/albums/{a}/members/{ident}"),
        ("DELETE", f"/api/albums/{a}/upload-tokens/{ident}"),
        ("DELETE", f"/api/albums/{a}/read-tokens/{ident}"),
        ("GET", f"/dicom-web/albums/{ident}/studies"),
    ]
    for method, path in routes:
        response = world.client.open(path, method=method, json={"role": "viewer"}, headers=olga)
        assert response.status_code in (400, 404, 405, 422), (method, path, response.status_code)
        assert response.is_json


# --- token confusion --------------------------------------------------------------------------


def test_confusion_upload_token_is_only_an_upload_token(world: World) -> None:
    upload = world.tokens["upload"]
    # As a read token (gate, album DICOMweb) and as a share link (plugin): refused.
    assert world.gate("GET", f"/studies/{world.b.id}", {"token": upload}).status_code == 401
    as_bearer = {"Authorization": f"Bearer {upload}"}
    assert world.gate("GET", f"/studies/{world.b.id}", as_bearer).status_code == 401
    qido = world.client.get(f"/dicom-web/albums/{world.album_b}/studies", headers=as_bearer)
    assert qido.status_code == 401
    assert world.validate(upload, world.b) is False
    # As an API credential on the JSON API: refused.
    assert world.client.get("/api/albums", headers=as_bearer).status_code == 401
    # Album B's upload token on album A: refused, nothing stored.
    posted = world.orthanc.posted_instances()
    assert world.upload(world.album_a, as_bearer).status_code in (401, 403)
    assert world.upload(world.album_a, as_bearer, stow=True).status_code in (401, 403)
    assert world.orthanc.posted_instances() == posted
    # And on its own album it works (the control).
    assert world.upload(world.album_b, as_bearer).status_code == 200
    assert world.orthanc.posted_instances() == posted + 1


def test_confusion_read_and_share_tokens_never_upload(world: World) -> None:
    posted = world.orthanc.posted_instances()
    for kind in ("read", "share"):
        headers = {"Authorization": f"Bearer {world.tokens[kind]}"}
        for stow in (False, True):
            response = world.upload(world.album_b, headers, stow=stow)
            assert response.status_code == 401, (kind, stow, response.get_json())
        basic_auth = {
            "Authorization": "Basic "
            + base64.b64encode(f"token:{world.tokens[kind]}".encode()).decode()
        }
        assert world.upload(world.album_b, basic_auth).status_code == 401
    assert world.orthanc.posted_instances() == posted


def test_confusion_read_token_of_album_a_on_album_b(world: World) -> None:
    read_a = world.tokens["read-a"]
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": read_a}).status_code == 200
    assert world.gate("GET", f"/studies/{world.b.id}", {"token": read_a}).status_code == 403
    headers = {"Authorization": f"Bearer {read_a}"}
    qido = world.client.get(f"/dicom-web/albums/{world.album_b}/studies", headers=headers)
    assert qido.status_code in (401, 403, 404)
    # A read token is no share link and no API credential.
    assert world.validate(read_a, world.a) is False
    assert world.client.get("/api/albums", headers=headers).status_code == 401


def test_confusion_share_link_is_bound_to_its_study_and_server(world: World) -> None:
    share = world.tokens["share"]
    assert world.validate(share, world.b) is True
    assert world.validate(share, world.a) is False
    assert world.validate(share, world.b, **{"server-id": "other-server"}) is False
    made = world.plugin().put(
        "/tokens/viewer-instant-link",
        {
            "resources": [{"level": "study", "orthanc-id": world.c.id, "dicom-uid": world.c.uid}],
            "server-id": "server-x",
            "type": "viewer-instant-link",
            "validity-duration": 600,
        },
    )
    if made.status_code == 200:  # a deployment that knows server-x: bound to it
        token_x = made.get_json()["token"]
        assert world.validate(token_x, world.c, **{"server-id": "server-x"}) is True
        assert world.validate(token_x, world.c, **{"server-id": "server-y"}) is False
        assert world.validate(token_x, world.c) is False
    else:  # it does not: refused at creation
        assert made.status_code == 422
    # A share link never opens the album API nor the album's DICOMweb.
    headers = {"Authorization": f"Bearer {share}"}
    assert world.client.get("/api/albums", headers=headers).status_code == 401
    qido = world.client.get(f"/dicom-web/albums/{world.album_b}/studies", headers=headers)
    assert qido.status_code == 401


def test_confusion_tokens_of_another_deployment_are_refused(
    world: World, tmp_path: Any, log_stream: io.StringIO
) -> None:
    """Server Y, same key ids but its own rings: its tokens mean nothing to server X."""
    other_config = _config(
        tmp_path / "y",
        upload_token_keys=generate_key("t1"),
        share_token_keys=generate_key("s1"),
    )
    with running_app(other_config, log_stream) as other:
        y = _build(other, world.orthanc, world.mock, log_stream)
        for kind in ("upload", "read", "share"):
            token = y.tokens[kind]
            assert world.gate("GET", f"/studies/{world.b.id}", {"token": token}).status_code == 401
            assert world.validate(token, world.b) is False
            headers = {"Authorization": f"Bearer {token}"}
            assert world.upload(world.album_b, headers).status_code == 401


# --- JWT attacks ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _hs256_with(secret: bytes, claims: dict[str, Any]) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": oidc.KID}
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _forged_jwts() -> dict[str, str]:
    admin = {"realm_roles": ("admin",), "subject": sub(BOB)}
    claims = oidc.claims(BOB, **admin)
    public = oidc.signing_key().as_dict(private=False)
    public_pem = oidc.signing_key().as_pem(private=False)
    now = int(time.time())
    return {
        "alg-none": _compact({"alg": "none", "typ": "JWT", "kid": oidc.KID}, claims, b""),
        "alg-none-caps": _compact({"alg": "NONE", "kid": oidc.KID}, claims, b""),
        "hs256-public-pem": _hs256_with(public_pem, claims),
        "hs256-public-jwk": _hs256_with(json.dumps(public).encode(), claims),
        "hs256-modulus": _hs256_with(public["n"].encode(), claims),
        "wrong-iss": oidc.make_token(BOB, iss="https://evil.test/realms/orthanc", **admin),
        "wrong-aud": oidc.make_token(BOB, aud=["other-service"], azp="other", **admin),
        # Keycloak writes `account` into the tokens of every client of the realm: a token the
        # hospital's portal (another client) got for bob must not work here.
        "account-aud-other-client": oidc.make_token(
            BOB, aud=["account"], azp="hospital-portal", **admin
        ),
        "account-aud-no-azp": oidc.make_token(BOB, aud="account", azp=None, **admin),
        "expired": oidc.make_token(BOB, lifetime=-120, **admin),
        "future-nbf": oidc.make_token(BOB, nbf=now + 3600, **admin),
        "future-iat": oidc.make_token(BOB, iat=now + 3600, nbf=now + 3600, **admin),
        "foreign-key-same-kid": oidc.make_token(BOB, key=oidc.foreign_key(), **admin),
        "no-signature": oidc.make_token(BOB, **admin).rsplit(".", 1)[0] + ".",
        "id-token-typ": oidc.make_token(BOB, typ="ID", **admin),
        "empty": "",
        "dots": "..",
    }


def test_jwt_forgeries_are_refused_everywhere(lite: World) -> None:
    before = lite.snapshot()
    for attack, token in _forged_jwts().items():
        _jwt_refused(lite, attack, token)
    assert lite.snapshot() == before


def _jwt_refused(lite: World, attack: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    assert lite.client.get("/api/albums", headers=headers).status_code == 401, attack
    assert (
        lite.client.post("/api/albums", json={"name": "x"}, headers=headers).status_code == 401
    ), attack
    for uri in (f"/studies/{lite.b.id}", "/studies", "/tools/find"):
        assert lite.gate("GET", uri, headers).status_code == 401, (attack, uri)
        assert lite.gate("GET", uri, {"token": token}).status_code == 401, (attack, uri)
    qido = lite.client.get(f"/dicom-web/albums/{lite.album_b}/studies", headers=headers)
    assert qido.status_code == 401, attack
    assert lite.upload(lite.album_b, headers).status_code == 401, attack
    assert lite.validate(token, lite.b) is False, attack
    profile = lite.plugin().post(
        "/user/get-profile", {"token-key": "Authorization", "token-value": f"Bearer {token}"}
    )
    assert profile.status_code in (200, 401)
    if profile.status_code == 200:
        assert "admin" not in json.dumps(profile.get_json()).lower()
        assert profile.get_json().get("permissions", []) == []


def test_jwt_account_audience_counts_only_for_trusted_clients(lite: World) -> None:
    """The default trusted clients are the shipped realm's (orthanc, authsvc): their tokens
    that carry only `account` still work (orthanc-auth-service compatibility)."""
    for azp in ("orthanc", "authsvc"):
        token = oidc.make_token(BOB, aud=["account"], azp=azp, subject=sub(BOB))
        assert (
            lite.client.get("/api/albums", headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        ), azp
    token = oidc.make_token(BOB, aud=["account"], azp="hospital-portal", subject=sub(BOB))
    answer = lite.client.get("/api/albums", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert "audience" in json.dumps(answer.get_json())


def test_jwt_unknown_kid_flood_fetches_the_jwks_a_bounded_number_of_times(lite: World) -> None:
    fetches_before = sum(1 for r in lite.mock.request_history if r.url == oidc.JWKS_URL)
    for _ in range(200):
        token = oidc.make_token(BOB)
        head, body, sig = token.split(".")
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        header["kid"] = uuid.uuid4().hex
        forged = f"{_b64(json.dumps(header).encode())}.{body}.{sig}"
        assert (
            lite.gate("GET", "/studies", {"Authorization": f"Bearer {forged}"}).status_code == 401
        )
    fetches = sum(1 for r in lite.mock.request_history if r.url == oidc.JWKS_URL) - fetches_before
    assert fetches <= 2, fetches
    # The genuine key still works after the flood.
    assert lite.gate("GET", f"/studies/{lite.b.id}", bearer(BOB)).status_code == 200


# --- tampering: every byte of every token kind -------------------------------------------------


def _variants(token: str) -> Iterator[str]:
    """Yield the token with each character replaced by a different one that changes its meaning.

    JWT segments are base64url: a character whose unused low bits are all that changes may decode
    to the same bytes (a lenient decoder then rightly accepts it), so a replacement is kept only
    if the decoded segments differ. Sealed tokens and API keys are compared as text (authsvc
    checks their base64 is canonical, see authsvc/credentials/sealing.py).
    """
    alphabet = "AQgwBRhx0_-9."
    is_jwt = token.count(".") == 2 and token.startswith("ey")

    def meaning(text: str) -> tuple[Any, ...]:
        if not is_jwt:
            return (text,)
        parts = []
        for part in text.split("."):
            try:
                parts.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            except ValueError:
                parts.append(part)
        return (len(text.split(".")), *parts)

    original = meaning(token)
    for i, char in enumerate(token):
        for replacement in alphabet:
            if replacement == char:
                continue
            candidate = token[:i] + replacement + token[i + 1 :]
            if meaning(candidate) != original:
                yield candidate
                break
    yield token + "A"
    yield token[:-1]


def test_tamper_every_byte_of_gate_tokens(lite: World) -> None:
    study = f"/studies/{lite.b.id}"
    tried = 0
    for kind in ("read", "share", "api-key", "jwt"):
        token = lite.tokens[kind]
        headers = {"api-key": token} if kind == "api-key" else {"Authorization": f"Bearer {token}"}
        assert lite.gate("GET", study, headers).status_code == 200, kind  # the control
        for forged in _variants(token):
            headers = (
                {"api-key": forged} if kind == "api-key" else {"Authorization": f"Bearer {forged}"}
            )
            answer = lite.gate("GET", study, headers)
            assert answer.status_code == 401, (kind, forged)
            tried += 1
    assert tried > 500


def test_tamper_every_byte_of_upload_and_share_tokens(lite: World) -> None:
    posted = lite.orthanc.posted_instances()
    for forged in _variants(lite.tokens["upload"]):
        response = lite.client.post(
            f"/api/albums/{lite.album_b}/uploads",
            data=b"not even DICOM",
            headers={"Content-Type": "application/dicom", "Authorization": f"Bearer {forged}"},
        )
        assert response.status_code in (401, 403), forged
    assert lite.orthanc.posted_instances() == posted
    for forged in _variants(lite.tokens["share"]):
        assert lite.validate(forged, lite.b) is False, forged


# --- replay of revoked tokens on every path ---------------------------------------------------


def test_replay_revoked_tokens_on_every_path(world: World) -> None:
    bob = bearer(BOB)
    b = world.album_b
    read, upload, share = world.tokens["read"], world.tokens["upload"], world.tokens["share"]
    key = world.tokens["api-key"]
    # Controls: each works before revocation.
    assert world.gate("GET", f"/studies/{world.b.id}", {"token": read}).status_code == 200
    assert world.gate("GET", f"/studies/{world.b.id}", {"api-key": key}).status_code == 200
    assert world.validate(share, world.b) is True
    assert world.upload(b, {"Authorization": f"Bearer {upload}"}).status_code == 200

    assert (
        world.client.delete(
            f"/api/albums/{b}/read-tokens/{world.token_ids['read']}", headers=bob
        ).status_code
        == 200
    )
    assert world.client.delete(
        f"/api/albums/{b}/upload-tokens/{world.token_ids['upload']}", headers=bob
    ).status_code in (200, 204)
    with world.app.app_context():
        from authsvc.models import utcnow

        db.session.execute(sa.update(ApiKey).values(revoked_at=utcnow()))
        db.session.commit()
        # What the revoking view does next in this process (other processes: within the TTL).
        world.app.extensions["authsvc"].authenticator.api_keys.forget(world.token_ids["api-key"])
        share_tokens = world.app.extensions["authsvc"].share_tokens
        for row in db.session.scalars(sa.select(ShareToken)).all():
            share_tokens.revoke(row, actor="user:bob-sub", now=utcnow())
        db.session.commit()

    posted = world.orthanc.posted_instances()
    for token in (read, upload, share):
        for headers in ({"token": token}, {"Authorization": f"Bearer {token}"}):
            answer = world.gate("GET", f"/studies/{world.b.id}", headers)
            assert answer.status_code == 401, (token[:3], headers.keys())
            qido = world.client.get(f"/dicom-web/albums/{b}/studies", headers=headers)
            assert qido.status_code == 401
        assert world.gate("GET", f"/studies/{world.b.id}/archive?token={token}").status_code == 401
        assert world.validate(token, world.b) is False
        for stow in (False, True):
            refused = world.upload(b, {"Authorization": f"Bearer {token}"}, stow=stow)
            assert refused.status_code == 401
    assert world.gate("GET", f"/studies/{world.b.id}", {"api-key": key}).status_code == 401
    assert world.client.get("/api/albums", headers={"api-key": key}).status_code == 401
    assert world.orthanc.posted_instances() == posted


# --- label injection through album names --------------------------------------------------------


HOSTILE_NAMES = [
    "authsvc-" + "x" * 20,
    "../../studies",
    "A/../B",
    "label\nAuthorization: Bearer x",
    "<script>alert(1)</script>",
    "*",
    "' OR 1=1 --",
    "admin",
    "\u202eevil",
    "%2e%2e%2f",
]


def test_injection_album_names_never_become_labels(world: World) -> None:
    for name in HOSTILE_NAMES:
        _hostile_name(world, name)


def _hostile_name(world: World, name: str) -> None:
    olga = bearer("olga")
    created = world.client.post("/api/albums", json={"name": name}, headers=olga)
    assert created.status_code in (201, 422), created.get_json()
    if created.status_code == 422:
        return
    album = created.get_json()
    label = album["orthanc_label"]
    assert label.isascii() and label.replace("-", "").replace("_", "").isalnum(), label
    assert name not in label or name.isalnum()
    assert (
        world.client.put(
            f"/api/albums/{album['id']}/studies/{world.a.id}", headers=olga
        ).status_code
        == 200
    )
    assert label in world.orthanc.labels_of(world.a)
    # The name is never used as a label, nor as another album's label.
    for study in world.orthanc.studies.values():
        assert name not in study.labels
    # The name comes back as data, unchanged.
    assert world.client.get(f"/api/albums/{album['id']}", headers=olga).get_json()["name"] == name


# --- gate path tricks --------------------------------------------------------------------------


def test_paths_tricks_never_reach_another_study(world: World) -> None:
    vera = bearer("vera")  # viewer of album A: may read study a, nothing else
    a, b = world.a.id, world.b.id
    assert world.gate("GET", f"/studies/{a}", vera).status_code == 200  # the control
    tricks = [
        f"/studies/{a}/../{b}",
        f"/studies/{a}/..%2F{b}",
        f"/studies/{a}%2F..%2F{b}",
        f"/studies/{a}/%2e%2e/{b}",
        f"/studies/{a}/%252e%252e/{b}",
        f"//studies/{b}",
        f"/studies//{b}",
        f"/STUDIES/{b}",
        f"/Studies/{b}",
        f"/studies/{b}.",
        f"/studies/{b}./",
        f"/studies/{b}%2e",
        f"/studies/{b.upper()}",
        f"/studies/{a};/../{b}",
        f"/studies/{a}%00/../{b}",
        f"/studies/{a}\\..\\{b}",
        f"/studies/{b}?study={a}",
        f"/studies/{b}#/studies/{a}",
        f"/./studies/{b}",
        f"/studies/{a}/../../studies/{b}",
        f"/dicom-web/studies/{world.b.uid}/../{world.a.uid}",
        f"/dicom-web/studies/{world.a.uid}/../../studies/{world.b.uid}",
        f"/dicom-web//studies/{world.b.uid}",
        f"/studies/{a}/../../tools/find",
        "/tools/find/.",
        "/tools//find",
    ]
    for uri in tricks:
        answer = world.gate("GET", uri, vera)
        assert answer.status_code == 403, (uri, answer.status_code)
        assert world.gate("DELETE", uri, vera).status_code == 403, uri
        assert world.gate("POST", uri, vera).status_code == 403, uri


def test_paths_query_string_tokens_open_only_their_scope(world: World) -> None:
    read_a = world.tokens["read-a"]
    a, b = world.a.id, world.b.id
    assert world.gate("GET", f"/studies/{a}?token={read_a}").status_code == 200  # control
    tricks = [
        f"/studies/{b}?token={read_a}",
        f"/studies/{b}?token={read_a}&token=x",
        f"/studies/{b}?x=1&token={read_a}",
        f"/studies/{a}/../{b}?token={read_a}",
        f"/studies/{b}?Token={read_a}",
        f"/studies/{b}?token={read_a}%00",
        f"/studies/{b}?token[]={read_a}",
    ]
    for uri in tricks:
        assert world.gate("GET", uri).status_code in (401, 403), uri
    # A token in the query string never lets a caller write.
    for method in ("POST", "PUT", "DELETE"):
        assert world.gate(method, f"/studies/{a}?token={read_a}").status_code in (401, 403)


# --- oversized bodies --------------------------------------------------------------------------


def test_bodies_oversized_json_is_refused_cleanly(lite: World) -> None:
    olga = bearer("olga")
    huge = b'{"name": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    for path in ("/api/albums", f"/api/albums/{lite.album_a}/members"):
        response = lite.client.post(
            path, data=huge, headers={**olga, "Content-Type": "application/json"}
        )
        assert response.status_code in (413, 422), (path, response.status_code)
        assert response.is_json
    deep = b"[" * 100_000 + b"]" * 100_000
    response = lite.client.post(
        "/api/albums", data=deep, headers={**olga, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    plugin = lite.plugin().post("/tokens/validate", raw=huge)
    assert plugin.status_code in (400, 413)
    plugin = lite.plugin().post("/tokens/validate", raw=deep)
    assert plugin.status_code in (400, 413)


# --- secrets in logs --------------------------------------------------------------------------


def test_secrets_never_reach_the_logs(world: World) -> None:
    """Use every credential once, right and wrong, then grep everything that was logged."""
    b = world.b
    for kind in ("read", "share", "upload", "jwt"):
        token = world.tokens[kind]
        world.gate("GET", f"/studies/{b.id}?token={token}")
        world.gate("GET", f"/studies/{world.c.id}", {"Authorization": f"Bearer {token}"})
        world.validate(token, b)
        world.upload(world.album_b, {"Authorization": f"Bearer {token}"})
        world.client.get(f"/dicom-web/albums/{world.album_b}/studies?token={token}")
    world.gate("GET", f"/studies/{b.id}", {"api-key": world.tokens["api-key"]})
    world.client.get("/api/albums", headers={"api-key": world.tokens["api-key"] + "x"})
    PluginClient(world.client, auth=basic("orthanc-plugin", INSECURE_PLUGIN_PASSWORD + "x")).post(
        "/tokens/validate", {}
    )
    logged = world.log.getvalue()
    assert logged  # the run did log: the grep below means something
    secrets = [
        INSECURE_PLUGIN_PASSWORD,
        INSECURE_SECRET_KEY,
        INSECURE_UPLOAD_RING.split(":", 1)[1],
        INSECURE_SHARE_RING.split(":", 1)[1],
        *world.tokens.values(),
        # The key's secret part, parsed the way authsvc parses it (a base64url secret may
        # itself hold "_", so splitting on the last one could leave a one-letter "secret").
        parse_api_key(world.tokens["api-key"]).secret,
        world.tokens["jwt"].rsplit(".", 1)[1],
    ]
    for secret in secrets:
        assert secret not in logged, secret[:12]


# --- CSRF and session fixation on the admin pages -----------------------------------------------


class _StubIdp:
    """Stands in for the OIDC client at the sign-in callback: the provider said yes."""

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token

    def authorize_access_token(self) -> dict[str, str]:
        return {"access_token": self.access_token, "id_token": "an-id-token"}


def test_csrf_and_session_fixation_on_the_pages(
    lite: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authsvc.views.admin import sign_in

    client = lite.client
    # The attacker plants a session (sid and CSRF token of their choosing) in the victim's browser.
    with client.session_transaction() as session:
        session["admin_sid"] = "planted-sid"
        session["admin_csrf"] = "planted-csrf"
    assert client.get("/admin/albums").status_code == 302  # a planted sid opens nothing
    monkeypatch.setattr(
        sign_in, "_idp", lambda: _StubIdp(oidc.make_token("olga", subject=sub("olga")))
    )
    assert client.get("/admin/callback?code=c&state=s").status_code == 302
    with client.session_transaction() as session:
        assert session["admin_sid"] != "planted-sid"
        assert session["admin_csrf"] != "planted-csrf"
        real_csrf = session["admin_csrf"]
    assert client.get("/admin/albums").status_code == 200  # the victim is signed in
    before = lite.snapshot()
    # Forms posted without the session's token (cross-site, or with the planted one) fail.
    for form in (
        {"name": "csrf"},
        {"name": "csrf", "csrf_token": "planted-csrf"},
        {"name": "csrf", "csrf_token": ""},
        {"name": "csrf", "csrf_token": real_csrf[:-1]},
    ):
        assert client.post("/admin/albums", data=form).status_code == 403, form
    assert client.post("/admin/logout", data={"csrf_token": "planted-csrf"}).status_code == 403
    assert lite.snapshot() == before
    # The token is bound to its session: another browser cannot use it.
    other = lite.app.test_client()
    stolen = other.post("/admin/albums", data={"name": "x", "csrf_token": real_csrf})
    assert stolen.status_code == 403
    assert lite.snapshot() == before
    # The control: with its own token the form goes through.
    made = client.post("/admin/albums", data={"name": "csrf ok", "csrf_token": real_csrf})
    assert made.status_code == 302
    assert lite.snapshot() != before
