"""The JSON API for API keys, share tokens and the roles configuration (views/credentials.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc.extensions import db
from authsvc.models import ApiKey
from authsvc.models import AuditEvent
from tests import oidc
from tests.plugin_client import PluginClient

pytestmark = pytest.mark.functional

ROLES = {
    "roles": {
        "admin-role": {"authorized-labels": ["*"], "permissions": ["all"]},
        "doctor-role": {"authorized-labels": ["cardio"], "permissions": ["view", "download"]},
        "uploader-role": {"authorized-labels": [], "permissions": ["upload"]},
    },
    "available-labels": [],
}
A_STUDY = {
    "orthanc-id": "b9c08539-26f93bde-c81ab0d7-bffaf2cb-a4d0bdd0",
    "dicom-uid": "1.2.840.113619.2.176.2025.1499492.7391.1171285944.390",
    "level": "study",
}


@pytest.fixture
def extra_config(tmp_path: Path) -> dict[str, Any]:
    roles_file = tmp_path / "roles.json"
    roles_file.write_text(json.dumps(ROLES))
    return oidc.oidc_config(
        roles_file=str(roles_file), plugin_username="share-user", plugin_password="change-me"
    )


@pytest.fixture
def client(db_app: Flask, requests_mock: rm.Mocker) -> FlaskClient:
    oidc.mock_idp(requests_mock)
    return db_app.test_client()


def bearer(username: str, *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + oidc.make_token(username, realm_roles=roles)}


ALICE = bearer("alice", "doctor-role")
BOB = bearer("bob", "doctor-role", "uploader-role")
ADMIN = bearer("root", "admin-role")


def _profile_of(client: FlaskClient, key: str) -> dict[str, Any]:
    plugin = PluginClient(client)
    response = plugin.post("/user/get-profile", {"token-key": "api-key", "token-value": key})
    result: dict[str, Any] = response.get_json()
    return result


# --- API keys ------------------------------------------------------------------------------------


def test_user_key_round_trip(client: FlaskClient, db_app: Flask) -> None:
    response = client.post("/api/api-keys", json={"name": "nightly backup"}, headers=ALICE)
    assert response.status_code == 201
    created = response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    key = created["key"]
    assert key.startswith("ask_") and created["roles"] == ["doctor-role"]
    assert created["kind"] == "user" and created["status"] == "active"
    # Stored as a hash only.
    with db_app.app_context():
        row = db.session.get(ApiKey, created["id"])
        assert row is not None and key not in json.dumps(
            {c.name: str(getattr(row, c.name)) for c in ApiKey.__table__.columns}
        )
    # The key works: API, plugin profile (acting as Alice with her roles).
    # A key cannot mint another key (it could outlive its own revocation).
    minted = client.post("/api/api-keys", json={"name": "x"}, headers={"api-key": key})
    assert minted.status_code == 403
    who = client.get("/api/api-keys", headers={"api-key": key})
    assert who.status_code == 200 and [k["id"] for k in who.get_json()["items"]] == [created["id"]]
    assert "key" not in who.get_json()["items"][0]
    profile = _profile_of(client, key)
    assert profile["user-id"] == oidc.claims("alice")["sub"]
    assert profile["permissions"] == ["download", "view"]
    # Revoke: refused from now on.
    revoked = client.delete(f"/api/api-keys/{created['id']}", headers=ALICE)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    assert client.get("/api/api-keys", headers={"api-key": key}).status_code == 401
    assert _profile_of(client, key)["name"] == "Anonymous"
    with db_app.app_context():
        actions = db.session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert [a for a in actions if a.startswith("api-key:")] == [
            "api-key:create",
            "api-key:revoke",
        ]


def test_user_key_may_hold_fewer_roles_never_more(client: FlaskClient) -> None:
    fewer = client.post(
        "/api/api-keys", json={"name": "upload only", "roles": ["uploader-role"]}, headers=BOB
    )
    assert fewer.status_code == 201 and fewer.get_json()["roles"] == ["uploader-role"]
    assert _profile_of(client, fewer.get_json()["key"])["permissions"] == ["upload"]
    more = client.post(
        "/api/api-keys", json={"name": "sneaky", "roles": ["admin-role"]}, headers=ALICE
    )
    assert more.status_code == 422
    assert "do not hold" in more.get_json()["message"]


def test_service_account_keys_are_for_admins(client: FlaskClient) -> None:
    body = {"name": "forwarder", "service_account": True, "roles": ["uploader-role"]}
    assert client.post("/api/api-keys", json=body, headers=ALICE).status_code == 403
    response = client.post("/api/api-keys", json=body, headers=ADMIN)
    assert response.status_code == 201
    created = response.get_json()
    assert created["kind"] == "service" and created["owner"] == f"api-key:{created['id']}"
    profile = _profile_of(client, created["key"])
    assert (profile["name"], profile["permissions"]) == ("forwarder", ["upload"])
    unknown = {**body, "roles": ["no-such-role"]}
    assert client.post("/api/api-keys", json=unknown, headers=ADMIN).status_code == 422
    no_roles = {"name": "x", "service_account": True}
    assert client.post("/api/api-keys", json=no_roles, headers=ADMIN).status_code == 422


def test_keys_of_others_are_invisible(client: FlaskClient) -> None:
    alice_key = client.post("/api/api-keys", json={"name": "a"}, headers=ALICE).get_json()
    assert client.get(f"/api/api-keys/{alice_key['id']}", headers=BOB).status_code == 404
    assert client.delete(f"/api/api-keys/{alice_key['id']}", headers=BOB).status_code == 404
    assert client.get("/api/api-keys", headers=BOB).get_json()["items"] == []
    assert client.get("/api/api-keys?all=true", headers=BOB).status_code == 403
    everything = client.get("/api/api-keys?all=true", headers=ADMIN).get_json()["items"]
    assert [k["id"] for k in everything] == [alice_key["id"]]
    assert client.delete(f"/api/api-keys/{alice_key['id']}", headers=ADMIN).status_code == 200
    assert client.get("/api/api-keys/nope", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": 5},
        {"name": "x" * 101},
        {"name": "ok", "expires_in_days": 0},
        {"name": "ok", "expires_in_days": "7"},
        {"name": "ok", "expires_in_days": 99999},
        {"name": "ok", "roles": "doctor-role"},
        {"name": "ok", "service_account": "yes"},
        {"name": "ok", "colour": "blue"},
        ["name"],
    ],
)
def test_bad_key_requests_are_422(client: FlaskClient, body: Any) -> None:
    response = client.post("/api/api-keys", json=body, headers=ALICE)
    assert response.status_code == 422


def test_expiring_key(client: FlaskClient) -> None:
    created = client.post(
        "/api/api-keys", json={"name": "week", "expires_in_days": 7}, headers=ALICE
    ).get_json()
    assert created["expires_at"] is not None


def test_api_requires_authentication(client: FlaskClient) -> None:
    for method, path in [
        ("GET", "/api/api-keys"),
        ("POST", "/api/api-keys"),
        ("GET", "/api/share-tokens"),
        ("GET", "/api/roles"),
    ]:
        response = client.open(path, method=method, json={})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --- share tokens --------------------------------------------------------------------------------


def test_share_tokens_list_and_revoke(client: FlaskClient) -> None:
    plugin = PluginClient(client)
    created = plugin.put(
        "/tokens/viewer-instant-link",
        {"resources": [A_STUDY], "server-id": None, "validity-duration": 600},
    ).get_json()
    validate = {
        "method": "get",
        "level": "study",
        "orthanc-id": A_STUDY["orthanc-id"],
        "token-key": "token",
        "token-value": created["token"],
        "server-id": None,
    }
    assert plugin.post("/tokens/validate", validate).get_json()["granted"] is True
    # Plugin-made tokens have no known owner: only admins see them.
    assert client.get("/api/share-tokens", headers=ALICE).get_json()["items"] == []
    assert client.get("/api/share-tokens?all=1", headers=ALICE).status_code == 403
    items = client.get("/api/share-tokens?all=1", headers=ADMIN).get_json()["items"]
    assert len(items) == 1 and items[0]["status"] == "active"
    assert created["token"] not in json.dumps(items)
    token_id = items[0]["id"]
    assert client.delete(f"/api/share-tokens/{token_id}", headers=ALICE).status_code == 404
    revoked = client.delete(f"/api/share-tokens/{token_id}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    assert plugin.post("/tokens/validate", validate).get_json()["granted"] is False
    assert client.get("/api/share-tokens/unknown", headers=ADMIN).status_code == 404


# --- roles ---------------------------------------------------------------------------------------


def test_roles_api_with_optimistic_concurrency(client: FlaskClient) -> None:
    assert client.get("/api/roles", headers=ALICE).status_code == 403
    current = client.get("/api/roles", headers=ADMIN)
    assert current.status_code == 200 and current.headers["ETag"] == '"1"'
    body = current.get_json()
    assert body["version"] == 1 and set(body["roles"]) == set(ROLES["roles"])
    body["roles"]["new-role"] = {"authorized-labels": [], "permissions": ["view"]}
    updated = client.put("/api/roles", json=body, headers=ADMIN)
    assert updated.status_code == 200 and updated.get_json()["version"] == 2
    # The same edit again is stale now: 409 with the field, 412 with If-Match.
    assert client.put("/api/roles", json=body, headers=ADMIN).status_code == 409
    stale = {**ADMIN, "If-Match": '"1"'}
    doc = {k: v for k, v in body.items() if k != "version"}
    assert client.put("/api/roles", json=doc, headers=stale).status_code == 412
    fresh = {**ADMIN, "If-Match": '"2"'}
    assert client.put("/api/roles", json=doc, headers=fresh).status_code == 200
    assert client.put("/api/roles", json=doc, headers=ADMIN).status_code == 422  # no version
    assert client.put("/api/roles", json=body, headers=ALICE).status_code == 403
    history = client.get("/api/roles/history", headers=ADMIN).get_json()["items"]
    assert [(h["version"], h["source"]) for h in history] == [
        (3, "api"),
        (2, "api"),
        (1, "import"),
    ]
    assert history[0]["changed_by"] == "user:" + oidc.claims("root")["sub"]
