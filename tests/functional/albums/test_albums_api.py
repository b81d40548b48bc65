"""The albums JSON API (/api/albums…) through the test client, on SQLite and PostgreSQL.

Keycloak is the fake provider of tests/oidc.py, Orthanc the in-memory fake of
tests/fake_orthanc.py. Covers authentication, every bad-input case of each endpoint, the
role matrix of every action (what each role may do, and the status it gets when it may not),
concurrency headers and pagination.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc.extensions import db
from authsvc.identity.roles import RoleGrant
from authsvc.identity.roles import RolesConfig
from authsvc.models import AuditEvent
from tests import oidc
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc

pytestmark = pytest.mark.functional

ROLES = RolesConfig(
    roles={
        "doctor": RoleGrant(frozenset({"view"}), frozenset({"teamA"})),
        "admin": RoleGrant(frozenset({"all"}), frozenset({"*"})),
    }
)


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return oidc.oidc_config(orthanc_url=URL, orthanc_server_id="main", orthanc_retries=0)


class Api:
    """The test client plus helpers speaking as one user or another."""

    def __init__(self, app: Flask, orthanc: FakeOrthanc) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.orthanc = orthanc

    def headers(self, user: str | None, **claims: Any) -> dict[str, str]:
        if user is None:
            return {}
        roles = ("admin",) if user == "root" else ("doctor",)
        token = oidc.make_token(user, realm_roles=roles, **claims)
        return {"Authorization": f"Bearer {token}"}

    def call(
        self, method: str, path: str, user: str | None = "alice", json: Any = None, **kw: Any
    ) -> Any:
        headers = {**self.headers(user), **kw.pop("headers", {})}
        return self.client.open(path, method=method, json=json, headers=headers, **kw)

    def album(self, user: str = "alice", name: str = "Knee MRI") -> dict[str, Any]:
        response = self.call("POST", "/api/albums", user, {"name": name})
        assert response.status_code == 201, response.json
        body: dict[str, Any] = response.json
        return body

    def invite(self, album_id: str, who: str, role: str, by: str = "alice") -> int:
        response = self.call(
            "POST",
            f"/api/albums/{album_id}/members",
            by,
            {"kind": "user", "principal": sub(who), "role": role},
        )
        assert response.status_code == 201, response.json
        member_id: int = response.json["id"]
        return member_id


def sub(username: str) -> str:
    """The subject the fake provider gives ``username``."""
    return str(oidc.claims(username)["sub"])


@pytest.fixture
def api(db_app: Flask, requests_mock: rm.Mocker) -> Api:
    oidc.mock_idp(requests_mock)
    orthanc = FakeOrthanc(requests_mock)
    db_app.extensions["authsvc"].authenticator.roles = lambda: ROLES
    return Api(db_app, orthanc)


# --- authentication ------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/api/albums"),
    ("POST", "/api/albums"),
    ("GET", "/api/albums/x"),
    ("PATCH", "/api/albums/x"),
    ("DELETE", "/api/albums/x"),
    ("GET", "/api/albums/x/members"),
    ("POST", "/api/albums/x/members"),
    ("PATCH", "/api/albums/x/members/1"),
    ("DELETE", "/api/albums/x/members/1"),
    ("POST", "/api/albums/x/leave"),
    ("GET", "/api/albums/x/studies"),
    ("POST", "/api/albums/x/studies"),
    ("POST", "/api/albums/x/studies/remove"),
    ("PUT", "/api/albums/x/studies/1.2.3"),
    ("DELETE", "/api/albums/x/studies/1.2.3"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_credentials(api: Api, method: str, path: str) -> None:
    response = api.call(method, path, None, {"name": "x"})
    assert response.status_code == 401
    assert response.json["error"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    bad = api.call(method, path, None, {}, headers={"Authorization": "Bearer eyJnope"})
    assert bad.status_code == 401


# --- albums -------------------------------------------------------------------------------------


def test_create_get_list(api: Api) -> None:
    response = api.call("POST", "/api/albums", json={"name": "Knee ☃", "description": "d"})
    assert response.status_code == 201
    album = response.json
    assert response.headers["Location"] == f"/api/albums/{album['id']}"
    assert response.headers["ETag"] == '"1"'
    assert album["my_role"] == "owner" and album["member_count"] == 1
    assert album["orthanc_label"].startswith("album-") and album["version"] == 1
    got = api.call("GET", f"/api/albums/{album['id']}")
    assert got.status_code == 200 and got.json["name"] == "Knee ☃"
    listing = api.call("GET", "/api/albums").json
    assert listing["total"] == 1 and listing["items"][0]["id"] == album["id"]
    assert api.call("GET", "/api/albums", "bob").json["total"] == 0


def test_other_users_and_unknown_ids_get_404(api: Api) -> None:
    album = api.album()
    for path in ("", "/members", "/studies"):
        assert api.call("GET", f"/api/albums/{album['id']}{path}", "bob").status_code == 404
        assert api.call("GET", f"/api/albums/nope{path}").status_code == 404
    assert api.call("GET", "/api/albums/" + "x" * 500).status_code == 404
    # Global admins see it (and everything with ?all=true).
    assert api.call("GET", f"/api/albums/{album['id']}", "root").status_code == 200
    assert api.call("GET", "/api/albums?all=true", "root").json["total"] == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"data": "{", "content_type": "application/json"}, 400, "invalid-json"),
        ({"data": "", "content_type": "application/json"}, 400, "bad-request"),
        ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415, None),
        ({"json": ["name"]}, 422, "validation-failed"),
        ({"json": {}}, 422, "validation-failed"),
        ({"json": {"name": "x", "colour": "red"}}, 422, "validation-failed"),
        ({"json": {"name": None}}, 422, "validation-failed"),
        ({"json": {"name": ""}}, 422, "validation-failed"),
        ({"json": {"name": "x" * 201}}, 422, "validation-failed"),
        ({"json": {"name": "x", "description": 5}}, 422, "validation-failed"),
        ({"json": {"name": "x", "server_id": "elsewhere"}}, 422, "validation-failed"),
    ],
)
def test_create_rejects_bad_input(
    api: Api, kwargs: dict[str, Any], status: int, error: str | None
) -> None:
    response = api.client.post("/api/albums", headers=api.headers("alice"), **kwargs)
    assert response.status_code == status
    if error:
        assert response.json["error"] == error
    if status == 422:
        assert all({"field", "message"} <= set(d) for d in response.json["details"])


def test_validation_details_name_each_field(api: Api) -> None:
    response = api.call("POST", "/api/albums", json={"description": 1, "extra": 2})
    fields = sorted(d["field"] for d in response.json["details"])
    assert fields == ["extra", "name"]


def test_rename_with_etag_and_version(api: Api) -> None:
    album = api.album()
    path = f"/api/albums/{album['id']}"
    ok = api.call("PATCH", path, json={"name": "New"}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"' and ok.json["name"] == "New"
    stale = api.call("PATCH", path, json={"name": "Lost"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412 and stale.json["details"] == {"version": 2}
    conflict = api.call("PATCH", path, json={"name": "Lost", "version": 1})
    assert conflict.status_code == 409
    assert (
        api.call("PATCH", path, json={"name": "x"}, headers={"If-Match": "junk"}).status_code == 412
    )
    assert api.call("PATCH", path, json={"name": "x", "version": "2"}).status_code == 422
    assert api.call("PATCH", path, json={}).status_code == 422
    assert api.call("PATCH", path, json={"label": "mine"}).status_code == 422
    star = api.call("PATCH", path, json={"description": "d"}, headers={"If-Match": "*"})
    assert star.status_code == 200 and star.json["version"] == 3
    assert api.call("GET", path).json["name"] == "New"


def test_delete_with_stale_etag_is_refused(api: Api) -> None:
    album = api.album()
    path = f"/api/albums/{album['id']}"
    api.call("PATCH", path, json={"name": "v2"})
    assert api.call("DELETE", path, headers={"If-Match": '"1"'}).status_code == 412
    assert api.call("DELETE", path, json={"version": 1}).status_code == 409
    assert api.call("DELETE", path, json={"nope": 1}).status_code == 422
    assert api.call("DELETE", path, headers={"If-Match": '"2"'}).status_code == 204
    assert api.call("GET", path).status_code == 404


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=-1", "offset=1.5"])
def test_bad_pagination_is_422(api: Api, query: str) -> None:
    album = api.album()
    for path in ("/api/albums", f"/api/albums/{album['id']}/members"):
        response = api.call("GET", f"{path}?{query}")
        assert response.status_code == 422
        assert response.json["details"][0]["field"] in {"limit", "offset"}


def test_pagination(api: Api) -> None:
    for name in "cab":
        api.album(name=name)
    page = api.call("GET", "/api/albums?offset=1&limit=1").json
    assert page["total"] == 3 and [a["name"] for a in page["items"]] == ["b"]


# --- members ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"kind": "robot", "principal": "x", "role": "viewer"}, ["kind"]),
        ({"kind": "user", "principal": "", "role": "viewer"}, ["principal"]),
        ({"kind": "user", "principal": 7, "role": "viewer"}, ["principal"]),
        ({"kind": "email", "principal": "no-at-sign", "role": "viewer"}, ["principal"]),
        ({"kind": "user", "principal": "x", "role": "king"}, ["role"]),
        ({"kind": "user", "principal": "x"}, ["role"]),
        ({"kind": "user", "principal": "x", "role": "viewer", "admin": True}, ["admin"]),
        ({"kind": "group", "principal": "/", "role": "viewer"}, ["principal"]),
    ],
)
def test_invite_rejects_bad_input(api: Api, body: dict[str, Any], fields: list[str]) -> None:
    album = api.album()
    response = api.call("POST", f"/api/albums/{album['id']}/members", json=body)
    assert response.status_code == 422
    assert [d["field"] for d in response.json["details"]] == fields


def test_members_flow(api: Api) -> None:
    album = api.album()
    base = f"/api/albums/{album['id']}/members"
    bob = api.invite(album["id"], "bob", "viewer")
    dup = api.call("POST", base, json={"kind": "user", "principal": sub("bob"), "role": "owner"})
    assert dup.status_code == 409 and dup.json["details"] == {"member_id": bob}
    invite = api.call(
        "POST", base, json={"kind": "email", "principal": "Carol@Example.test", "role": "manager"}
    )
    assert invite.status_code == 201 and invite.json["principal"] == "carol@example.test"
    # Carol logs in with that verified e-mail: the invitation becomes her membership.
    assert api.call("GET", f"/api/albums/{album['id']}", "carol").json["my_role"] == "manager"
    listing = api.call("GET", base, "bob").json
    assert [(m["kind"], m["role"]) for m in listing["items"]] == [
        ("user", "owner"),
        ("user", "manager"),
        ("user", "viewer"),
    ]
    assert api.call("PATCH", f"{base}/{bob}", json={"role": "contributor"}).json["role"] == (
        "contributor"
    )
    assert api.call("PATCH", f"{base}/{bob}", json={"role": "czar"}).status_code == 422
    assert api.call("PATCH", f"{base}/{bob}", json={}).status_code == 422
    assert api.call("PATCH", f"{base}/99999", json={"role": "viewer"}).status_code == 404
    assert api.call("PATCH", f"{base}/abc", json={"role": "viewer"}).status_code == 404
    assert api.call("POST", f"/api/albums/{album['id']}/leave", "bob").status_code == 204
    assert api.call("GET", f"/api/albums/{album['id']}", "bob").status_code == 404
    last = api.call("POST", f"/api/albums/{album['id']}/leave")
    assert last.status_code == 403 and "owner" in last.json["message"]


def test_unverified_email_does_not_bind(api: Api) -> None:
    album = api.album()
    api.call(
        "POST",
        f"/api/albums/{album['id']}/members",
        json={"kind": "email", "principal": "dave@example.test", "role": "viewer"},
    )
    token = oidc.make_token("dave", realm_roles=("doctor",), email_verified=False)
    response = api.client.get(
        f"/api/albums/{album['id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 404


# --- the role matrix ---------------------------------------------------------------------------

Setup = dict[str, Any]
Action = Callable[[Api, Setup, str], Any]


def _matrix_setup(api: Api) -> Setup:
    album = api.album("alice")
    album_id = album["id"]
    members = {"alice": 0}
    for user, role in (("mona", "manager"), ("cody", "contributor"), ("vera", "viewer")):
        members[user] = api.invite(album_id, user, role)
    members["olga"] = api.invite(album_id, "olga", "owner")
    members["tess"] = api.invite(album_id, "tess", "viewer")  # a target to edit or remove
    study = api.orthanc.add_study("1.2.840.1", labels={album["orthanc_label"]})
    api.call("POST", f"/api/albums/{album_id}/studies", "root", {"studies": [study.id]})
    other = api.orthanc.add_study("1.2.840.2", labels={"teamA"})
    return {"album": album_id, "members": members, "study": study.id, "teamA": other.id}


ACTIONS: dict[str, Action] = {
    "view": lambda a, s, u: a.call("GET", f"/api/albums/{s['album']}", u),
    "list-members": lambda a, s, u: a.call("GET", f"/api/albums/{s['album']}/members", u),
    "list-studies": lambda a, s, u: a.call("GET", f"/api/albums/{s['album']}/studies", u),
    "add-study": lambda a, s, u: a.call("PUT", f"/api/albums/{s['album']}/studies/{s['teamA']}", u),
    "remove-study": lambda a, s, u: a.call(
        "DELETE", f"/api/albums/{s['album']}/studies/{s['study']}", u
    ),
    "invite-viewer": lambda a, s, u: a.call(
        "POST",
        f"/api/albums/{s['album']}/members",
        u,
        {"kind": "group", "principal": "g1", "role": "viewer"},
    ),
    "invite-owner": lambda a, s, u: a.call(
        "POST",
        f"/api/albums/{s['album']}/members",
        u,
        {"kind": "group", "principal": "g2", "role": "owner"},
    ),
    "change-role": lambda a, s, u: a.call(
        "PATCH",
        f"/api/albums/{s['album']}/members/{s['members']['tess']}",
        u,
        {"role": "contributor"},
    ),
    "demote-owner": lambda a, s, u: a.call(
        "PATCH",
        f"/api/albums/{s['album']}/members/{s['members']['olga']}",
        u,
        {"role": "viewer"},
    ),
    "remove-member": lambda a, s, u: a.call(
        "DELETE", f"/api/albums/{s['album']}/members/{s['members']['tess']}", u
    ),
    "remove-owner": lambda a, s, u: a.call(
        "DELETE", f"/api/albums/{s['album']}/members/{s['members']['olga']}", u
    ),
    "rename": lambda a, s, u: a.call("PATCH", f"/api/albums/{s['album']}", u, {"name": "R"}),
    "delete": lambda a, s, u: a.call("DELETE", f"/api/albums/{s['album']}", u),
}

# Expected status per action for: owner, manager, contributor, viewer, stranger, admin.
# (doctor-role users see teamA studies, so every member may try adding the teamA study.)
USERS = ("alice", "mona", "cody", "vera", "sam", "root")
MATRIX: dict[str, tuple[int, ...]] = {
    "view": (200, 200, 200, 200, 404, 200),
    "list-members": (200, 200, 200, 200, 404, 200),
    "list-studies": (200, 200, 200, 200, 404, 200),
    "add-study": (200, 200, 200, 403, 404, 200),
    "remove-study": (200, 200, 403, 403, 404, 200),
    "invite-viewer": (201, 201, 403, 403, 404, 201),
    "invite-owner": (201, 403, 403, 403, 404, 201),
    "change-role": (200, 200, 403, 403, 404, 200),
    "demote-owner": (200, 403, 403, 403, 404, 200),
    "remove-member": (204, 204, 403, 403, 404, 204),
    "remove-owner": (204, 403, 403, 403, 404, 204),
    "rename": (200, 403, 403, 403, 404, 200),
    "delete": (204, 403, 403, 403, 404, 204),
}


@pytest.mark.parametrize("action", sorted(MATRIX))
def test_role_matrix(api: Api, action: str) -> None:
    setup = _matrix_setup(api)
    got = []
    for user in USERS:
        response = ACTIONS[action](api, setup, user)
        got.append(response.status_code)
        if response.status_code < 300:
            setup = _matrix_setup(api)  # the next user faces a fresh album
    assert tuple(got) == MATRIX[action]


def test_denials_are_audited(api: Api) -> None:
    setup = _matrix_setup(api)
    ACTIONS["rename"](api, setup, "vera")
    ACTIONS["view"](api, setup, "sam")
    with api.app.app_context():
        denied = db.session.execute(
            sa.select(AuditEvent.action, AuditEvent.actor).where(AuditEvent.outcome == "denied")
        ).all()
    assert ("album:edit", f"user:{sub('vera')}") in denied
    assert ("album:view", f"user:{sub('sam')}") in denied


# --- studies ------------------------------------------------------------------------------------


def test_studies_bulk_and_single(api: Api) -> None:
    album = api.album("root")
    base = f"/api/albums/{album['id']}/studies"
    s1 = api.orthanc.add_study("1.3.1")
    s2 = api.orthanc.add_study("1.3.2")
    added = api.call("POST", base, "root", {"studies": [s1.id, "1.3.2", "1.3.404"]}).json
    assert [r["status"] for r in added["results"]] == ["added", "added", "not-found"]
    assert added["summary"] == {"added": 2, "not-found": 1}
    assert album["orthanc_label"] in api.orthanc.labels_of(s2)
    listing = api.call("GET", f"{base}?limit=1", "root").json
    assert listing["total"] == 2 and len(listing["items"]) == 1
    assert listing["items"][0]["instance_count"] == 3
    assert api.call("PUT", f"{base}/1.3.404", "root").status_code == 404
    assert api.call("PUT", f"{base}/{s1.id}", "root").json["status"] == "already-present"
    assert api.call("DELETE", f"{base}/{s1.id}", "root").json["status"] == "removed"
    assert api.call("DELETE", f"{base}/{s1.id}", "root").status_code == 404
    removed = api.call("POST", f"{base}/remove", "root", {"studies": ["1.3.2"]}).json
    assert removed["results"][0]["status"] == "removed"
    assert api.orthanc.labels_of(s2) == set()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"studies": []},
        {"studies": "1.2.3"},
        {"studies": [3]},
        {"studies": ["../etc"]},
        {"studies": ["1.2"], "more": 1},
        ["1.2.3"],
    ],
)
def test_study_bodies_are_validated(api: Api, body: Any) -> None:
    album = api.album("root")
    for path in ("studies", "studies/remove"):
        response = api.call("POST", f"/api/albums/{album['id']}/{path}", "root", body)
        assert response.status_code == 422


def test_single_study_ref_is_validated(api: Api) -> None:
    album = api.album("root")
    response = api.call("PUT", f"/api/albums/{album['id']}/studies/not-a-uid", "root")
    assert response.status_code == 422


def test_orthanc_down_is_503_not_500(api: Api) -> None:
    album = api.album("root")
    api.orthanc.down = True
    response = api.call("GET", f"/api/albums/{album['id']}/studies", "root")
    assert response.status_code == 503 and response.json["error"] == "orthanc-unavailable"
    add = api.call("POST", f"/api/albums/{album['id']}/studies", "root", {"studies": ["1.2.3"]})
    assert add.status_code == 503
