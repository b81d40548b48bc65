"""Functional tests of the authentication seam (authsvc.views.auth + authsvc.identity.authn).

A tiny test-only endpoint reports what ``current_identity``/``current_actor`` return, so these
tests exercise the headers, the verifier built in services.py (Keycloak faked with
requests-mock) and the API key lookup on both databases.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import requests_mock as rm
from flask import Flask
from flask import jsonify
from flask.testing import FlaskClient

from authsvc.credentials.api_keys import generate_api_key
from authsvc.extensions import db
from authsvc.identity.roles import RoleGrant
from authsvc.identity.roles import RolesConfig
from authsvc.models import ApiKey
from authsvc.models import utcnow
from authsvc.views.auth import current_actor
from authsvc.views.auth import current_identity
from authsvc.views.auth import login_required
from tests import oidc

pytestmark = pytest.mark.functional

ROLES = RolesConfig(
    roles={
        "doctor": RoleGrant(frozenset({"view"}), frozenset({"cardio"})),
        "admin": RoleGrant(frozenset({"all"}), frozenset({"*"})),
    }
)


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return oidc.oidc_config()


def _install_probe(app: Flask) -> None:
    app.extensions["authsvc"].authenticator.roles = lambda: ROLES

    @app.get("/_test/whoami")
    def whoami() -> Any:
        identity = current_identity()
        actor = current_actor()
        return jsonify(
            kind=str(identity.kind),
            subject=identity.subject,
            username=identity.username,
            admin=actor.is_global_admin,
            permissions=sorted(actor.permissions),
        )

    @app.get("/_test/private")
    @login_required
    def private() -> Any:
        return jsonify(ok=True)


@pytest.fixture
def probe(db_app: Flask, requests_mock: rm.Mocker) -> FlaskClient:
    oidc.mock_idp(requests_mock)
    _install_probe(db_app)
    return db_app.test_client()


def _add_key(app: Flask, **fields: Any) -> str:
    generated = generate_api_key()
    values: dict[str, Any] = {
        "id": generated.key_id,
        "secret_hash": generated.secret_hash,
        "name": "backup script",
        "kind": "user",
        "owner_subject": "sub-alice",
        "owner_username": "alice",
        "roles": ["doctor"],
        "created_by": "user:sub-alice",
    }
    values.update(fields)
    with app.app_context():
        db.session.add(ApiKey(**values))
        db.session.commit()
    return generated.plaintext


def test_no_credentials_is_anonymous(probe: FlaskClient) -> None:
    body = probe.get("/_test/whoami").get_json()
    assert body["kind"] == "anonymous"
    assert body["permissions"] == []


def test_private_view_refuses_anonymous_with_401(probe: FlaskClient) -> None:
    response = probe.get("/_test/private")
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_jwt_identity_and_actor(probe: FlaskClient) -> None:
    token = oidc.make_token("alice", realm_roles=("doctor",))
    response = probe.get("/_test/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.get_json() == {
        "kind": "user",
        "subject": oidc.claims("alice")["sub"],
        "username": "alice",
        "admin": False,
        "permissions": ["view"],
    }
    lower = probe.get("/_test/private", headers={"Authorization": f"bearer {token}"})
    assert lower.status_code == 200


def test_admin_role_makes_admin_actor(probe: FlaskClient) -> None:
    token = oidc.make_token("bob", realm_roles=("admin",))
    body = probe.get("/_test/whoami", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert body["admin"] is True


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-jwt",
        "Bearer " + oidc.make_token("alice", key=oidc.foreign_key()),
        "Bearer " + oidc.make_token("alice", lifetime=-3600),
        "Bearer " + oidc.make_token("alice", iss="https://evil.test/realms/orthanc"),
        "Bearer " + oidc.make_token("alice", aud="someone-else", azp="someone-else"),
    ],
)
def test_bad_tokens_get_401_without_echoing_them(probe: FlaskClient, header: str) -> None:
    response = probe.get("/_test/whoami", headers={"Authorization": header})
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    assert header.split()[1] not in response.get_data(as_text=True)


def test_provider_down_gives_503(db_app: Flask, requests_mock: rm.Mocker) -> None:
    oidc.mock_idp(requests_mock, down=True)
    _install_probe(db_app)
    token = oidc.make_token("alice")
    response = db_app.test_client().get(
        "/_test/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 503
    assert response.get_json()["error"] == "oidc-unavailable"


def test_api_key_in_header(probe: FlaskClient, db_app: Flask) -> None:
    key = _add_key(db_app)
    body = probe.get("/_test/whoami", headers={"api-key": key}).get_json()
    assert body == {
        "kind": "api_key",
        "subject": "sub-alice",
        "username": "alice",
        "admin": False,
        "permissions": ["view"],
    }
    with db_app.app_context():
        row = db.session.get(ApiKey, key.split("_")[1])
        assert row is not None and row.last_used_at is not None


def test_api_key_as_bearer(probe: FlaskClient, db_app: Flask) -> None:
    key = _add_key(db_app)
    response = probe.get("/_test/whoami", headers={"Authorization": f"Bearer {key}"})
    assert response.get_json()["kind"] == "api_key"


def test_api_key_wrong_secret_revoked_expired(probe: FlaskClient, db_app: Flask) -> None:
    key = _add_key(db_app)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert probe.get("/_test/whoami", headers={"api-key": wrong}).status_code == 401
    revoked = _add_key(db_app, revoked_at=utcnow())
    response = probe.get("/_test/whoami", headers={"api-key": revoked})
    assert (response.status_code, response.get_json()["error"]) == (401, "token-revoked")
    expired = _add_key(db_app, expires_at=utcnow() - dt.timedelta(seconds=1))
    response = probe.get("/_test/whoami", headers={"api-key": expired})
    assert (response.status_code, response.get_json()["error"]) == (401, "token-expired")
    unknown = "ask_0123456789abcdef_" + "A" * 43
    assert probe.get("/_test/whoami", headers={"api-key": unknown}).status_code == 401


def test_api_key_and_bearer_together_are_refused(probe: FlaskClient, db_app: Flask) -> None:
    key = _add_key(db_app)
    token = oidc.make_token("alice")
    response = probe.get(
        "/_test/whoami", headers={"api-key": key, "Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


class TestCustomHeader:
    @pytest.fixture
    def extra_config(self) -> dict[str, Any]:
        return oidc.oidc_config(api_key_header="X-Api-Key")

    def test_configured_header_name(self, app: Flask, requests_mock: rm.Mocker) -> None:
        oidc.mock_idp(requests_mock)
        _install_probe(app)
        key = _add_key(app)
        client = app.test_client()
        assert client.get("/_test/private", headers={"X-Api-Key": key}).status_code == 200
        assert client.get("/_test/private", headers={"api-key": key}).status_code == 401


def test_last_use_write_failure_does_not_refuse_the_key(
    probe: FlaskClient, db_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from sqlalchemy.exc import OperationalError

    from authsvc.identity import authn

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("UPDATE api_key", {}, Exception("database is locked"))

    monkeypatch.setattr(authn, "sa", types.SimpleNamespace(update=locked))
    key = _add_key(db_app)
    response = probe.get("/_test/whoami", headers={"api-key": key})
    assert response.status_code == 200 and response.get_json()["kind"] == "api_key"
