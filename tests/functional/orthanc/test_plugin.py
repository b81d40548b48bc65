"""Contract tests of the Orthanc plugin callbacks: every vector of protocol spec §12, and more.

Requests are sent the way the plugin sends them (HTTP Basic, chunked JSON bodies with sorted
keys, see tests/plugin_client.py). Keycloak is faked with requests-mock and keys the tests
generate; the legacy tokens are the spec's own HS256 vectors (secret ``my-secret-key``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask

from authsvc.credentials.api_keys import generate_api_key
from authsvc.extensions import db
from authsvc.models import ApiKey
from authsvc.models import AuditEvent
from authsvc.models import RolesConfigHistory
from authsvc.models import ShareToken
from authsvc.models import utcnow
from tests import oidc
from tests.plugin_client import PluginClient
from tests.plugin_client import basic
from tests.plugin_client import chunked

pytestmark = pytest.mark.functional

# --- the spec's vectors (§12) ----------------------------------------------------------------

A_ID = "b9c08539-26f93bde-c81ab0d7-bffaf2cb-a4d0bdd0"
A_UID = "1.2.840.113619.2.176.2025.1499492.7391.1171285944.390"
B_ID = "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"
B_UID = "2.16.840.1.113669.632.20.1211.10000357775"
VALID_SHARE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6bnVsbCwicmVzb3VyY2VzIjpbeyJkaWNvbV91aWQiOiIxLjI"
    "uODQwLjExMzYxOS4yLjE3Ni4yMDI1LjE0OTk0OTIuNzM5MS4xMTcxMjg1OTQ0LjM5MCIsIm9ydGhhbmNfaWQiOiJiOW"
    "MwODUzOS0yNmY5M2JkZS1jODFhYjBkNy1iZmZhZjJjYi1hNGQwYmRkMCIsInVybCI6bnVsbCwibGV2ZWwiOiJzdHVke"
    "SJ9XSwidHlwZSI6InN0b25lLXZpZXdlci1wdWJsaWNhdGlvbiIsImV4cGlyYXRpb25fZGF0ZSI6IjIwOTktMTItMzFU"
    "MjM6NTk6NTkrMDA6MDAiLCJ2YWxpZGl0eV9kdXJhdGlvbiI6bnVsbH0.P8CAe-5_3yRgknTfOsJrvs-XdCMjW1z9QBLQ"
    "CVaYaoQ"
)
EXPIRED_SHARE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6bnVsbCwicmVzb3VyY2VzIjpbeyJkaWNvbV91aWQiOiIxLjI"
    "uODQwLjExMzYxOS4yLjE3Ni4yMDI1LjE0OTk0OTIuNzM5MS4xMTcxMjg1OTQ0LjM5MCIsIm9ydGhhbmNfaWQiOiJiOW"
    "MwODUzOS0yNmY5M2JkZS1jODFhYjBkNy1iZmZhZjJjYi1hNGQwYmRkMCIsInVybCI6bnVsbCwibGV2ZWwiOiJzdHVke"
    "SJ9XSwidHlwZSI6InN0b25lLXZpZXdlci1wdWJsaWNhdGlvbiIsImV4cGlyYXRpb25fZGF0ZSI6IjIwMjAtMDEtMDFU"
    "MDA6MDA6MDArMDA6MDAiLCJ2YWxpZGl0eV9kdXJhdGlvbiI6bnVsbH0.BTb9GAlPP3VUw_UhbC4NEkCmSqS9GRwfC6Ic"
    "qeTyshI"
)
ORTHANC_ROOT = "http://localhost/orthanc/"

# permissions.json of §10.5 + doctor-role (P1) + label-restricted and uploader roles (P7, P8),
# with comments and the underscore spelling, as orthanc-auth-service files have them.
PERMISSIONS_FILE = """
// orthanc-auth-service permissions.json
{
  "roles": {
    "admin-role":    {"authorized-labels": ["*"], "permissions": ["all", "admin-permissions"]},
    "doctor-role":   {"authorized_labels": ["*"],
                      "permissions": ["view", "download", "share", "send"]},
    "external-role": {"authorized-labels": ["external"], "permissions": ["view", "download"]},
    "user-a-role":   {"authorized-labels": ["label_a"], "permissions": ["view"]},
    "forwarder-role": {"authorized-labels": ["*"], "permissions": ["upload"]}, /* P7 */
  },
  "available-labels": []
}
"""

A_STUDY = {"orthanc-id": A_ID, "dicom-uid": A_UID}
B_STUDY = {"orthanc-id": B_ID, "dicom-uid": B_UID}


def validate_body(
    token: str | None, study: dict[str, str] = A_STUDY, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"method": "get", "level": "study", "server-id": None, **study}
    if token is not None:
        body["token-key"] = "token"
        body["token-value"] = token
    body.update(extra)
    return body


@pytest.fixture
def extra_config(tmp_path: Path) -> dict[str, Any]:
    roles_file = tmp_path / "permissions.json"
    roles_file.write_text(PERMISSIONS_FILE)
    return oidc.oidc_config(
        plugin_username="share-user",
        plugin_password="change-me",
        legacy_share_secret="my-secret-key",
        public_orthanc_root=ORTHANC_ROOT,
        roles_file=str(roles_file),
        share_token_never_expires=True,
        share_token_max_lifetime=0,
    )


@pytest.fixture
def plugin(db_app: Flask, requests_mock: rm.Mocker) -> PluginClient:
    oidc.mock_idp(requests_mock)
    return PluginClient(db_app.test_client())


def _json(response: Any) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    # The plugin parses with jsoncpp: the exact JSON text matters (integers, booleans).
    return json.loads(response.get_data(as_text=True))


def _validity_is_int(text: str) -> bool:
    compact = text.replace(" ", "")
    return '"validity":60' in compact and '"validity":60.' not in compact


# --- transport: HTTP Basic, chunked bodies -----------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, basic("share-user", "wrong"), basic("someone", "change-me"), "Bearer x", "Basic !!!"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/user/get-profile"),
        ("POST", "/tokens/validate"),
        ("PUT", "/tokens/stone-viewer-publication"),
        ("POST", "/tokens/decode"),
        ("GET", "/settings/roles"),
        ("PUT", "/settings/roles"),
    ],
)
def test_every_callback_needs_the_plugin_credentials(
    app: Flask, method: str, path: str, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = app.test_client().open(path, method=method, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert response.get_json()["error"] == "unauthenticated"


class TestWithoutPluginPassword:
    @pytest.fixture
    def extra_config(self) -> dict[str, Any]:
        return {}

    def test_no_configured_password_refuses_everything(self, app: Flask) -> None:
        # Default: no plugin_password -> fail closed, whatever is sent.
        for auth in (basic("orthanc-plugin", ""), basic("orthanc-plugin", "x")):
            response = PluginClient(app.test_client(), auth=auth).post(
                "/tokens/validate", validate_body(VALID_SHARE)
            )
            assert response.status_code == 401
            assert "not configured" in response.get_json()["message"]


def test_chunked_body_really_is_chunked_framing(plugin: PluginClient) -> None:
    # The helper hands the app a de-chunked stream like gunicorn; make sure the framing helper
    # itself is right, since integration tests send its output on a raw socket.
    assert chunked(b'{"a":1}', size=3) == b'3\r\n{"a\r\n3\r\n":1\r\n1\r\n}\r\n0\r\n\r\n'


def test_content_length_bodies_work_too(db_app: Flask, requests_mock: rm.Mocker) -> None:
    oidc.mock_idp(requests_mock)
    response = db_app.test_client().post(
        "/tokens/validate", json=validate_body(VALID_SHARE), headers={"Authorization": basic()}
    )
    assert response.get_json() == {"granted": True, "validity": 60}


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"", 400), (b"{not json", 400), (b"[1,2]", 400), (b'"x"', 400), (b"\xff\xfe", 400)],
)
@pytest.mark.parametrize("path", ["/user/get-profile", "/tokens/validate", "/tokens/decode"])
def test_unparsable_bodies_are_clear_4xx(
    plugin: PluginClient, path: str, raw: bytes, status: int
) -> None:
    response = plugin.post(path, raw=raw)
    assert response.status_code == status
    assert "error" in response.get_json()


# --- C1: validation (§12.1) ---------------------------------------------------------------------


def test_v1_share_token_granted(plugin: PluginClient) -> None:
    body = validate_body(VALID_SHARE, labels=["label_a"])
    response = plugin.post("/tokens/validate", body, headers={"token": VALID_SHARE})
    assert _json(response) == {"granted": True, "validity": 60}
    assert _validity_is_int(response.get_data(as_text=True))
    assert "true" in response.get_data(as_text=True)


def test_v2_bearer_prefix_in_body(plugin: PluginClient) -> None:
    body = validate_body(
        None, **{"token-key": "Authorization", "token-value": f"Bearer {VALID_SHARE}"}
    )
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": True, "validity": 60}


def test_v3_other_study_denied(plugin: PluginClient) -> None:
    body = validate_body(VALID_SHARE, B_STUDY)
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": False, "validity": 60}


def test_v4_expired_denied(plugin: PluginClient) -> None:
    body = validate_body(EXPIRED_SHARE)
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": False, "validity": 60}


def test_v5_anonymous_denied(plugin: PluginClient) -> None:
    assert _json(plugin.post("/tokens/validate", validate_body(None))) == {
        "granted": False,
        "validity": 60,
    }


def test_v6_system_level_denied(plugin: PluginClient) -> None:
    body = {
        "method": "get",
        "level": "system",
        "uri": "/changes",
        "token-key": "token",
        "token-value": VALID_SHARE,
        "server-id": None,
    }
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": False, "validity": 60}


class TestServerId:
    @pytest.fixture
    def extra_config(self, extra_config: dict[str, Any]) -> dict[str, Any]:
        return {**extra_config, "orthanc_server_id": "orthanc-public"}

    def test_v7_server_id_mismatch_denied(self, plugin: PluginClient) -> None:
        body = validate_body(VALID_SHARE, **{"server-id": "orthanc-private"})
        assert _json(plugin.post("/tokens/validate", body))["granted"] is False
        body = validate_body(VALID_SHARE, **{"server-id": None})
        assert _json(plugin.post("/tokens/validate", body))["granted"] is False
        body = validate_body(VALID_SHARE, **{"server-id": "orthanc-public"})
        assert _json(plugin.post("/tokens/validate", body))["granted"] is True

    def test_sealed_token_is_bound_to_its_server(self, plugin: PluginClient) -> None:
        token = _create(plugin, "viewer-instant-link", **{"server-id": "orthanc-public"})["token"]
        body = validate_body(token, **{"server-id": "orthanc-public"})
        assert _json(plugin.post("/tokens/validate", body))["granted"] is True
        refused = plugin.put(
            "/tokens/viewer-instant-link",
            {"resources": [{**A_STUDY, "level": "study"}], "server-id": "elsewhere"},
        )
        assert refused.status_code == 422


def test_v8_internal_post_granted(plugin: PluginClient) -> None:
    body = validate_body(
        None,
        method="post",
        **{"token-key": "Authorization", "token-value": f"Bearer {VALID_SHARE}"},
    )
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": True, "validity": 60}


@pytest.mark.parametrize("method", ["delete", "put", "patch", "", None, 7])
def test_hardened_share_tokens_never_write(plugin: PluginClient, method: Any) -> None:
    body = validate_body(VALID_SHARE, method=method)
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": False, "validity": 60}


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "",
        "Bearer ",
        "sh1.x.y",
        VALID_SHARE[:-3] + "abc",
        oidc.make_token("alice", realm_roles=("admin-role",)),
        "ask_0123456789abcdef_" + "A" * 43,
        "x" * 100_000,
    ],
)
def test_v9_garbage_tokens_denied(plugin: PluginClient, token: str) -> None:
    assert _json(plugin.post("/tokens/validate", validate_body(token))) == {
        "granted": False,
        "validity": 60,
    }


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"level": "study"},
        {"method": "get", "level": 5, "orthanc-id": A_ID, "token-value": VALID_SHARE},
        {"method": "get", "level": "study", "orthanc-id": ["x"], "token-value": VALID_SHARE},
        {"method": "get", "level": "study", "token-value": VALID_SHARE, "server-id": None},
        {"method": "get", "level": "study", "orthanc-id": A_ID, "token-value": {"x": 1}},
        {**validate_body(VALID_SHARE), "server-id": 5},
        {**validate_body(VALID_SHARE), "level": "galaxy"},
    ],
)
def test_ill_typed_validate_fields_deny(plugin: PluginClient, body: dict[str, Any]) -> None:
    assert _json(plugin.post("/tokens/validate", body)) == {"granted": False, "validity": 60}


def test_validate_matches_by_either_id(plugin: PluginClient) -> None:
    by_uid = validate_body(VALID_SHARE, {"dicom-uid": A_UID})
    by_id = validate_body(VALID_SHARE, {"orthanc-id": A_ID})
    mixed = validate_body(VALID_SHARE, {"orthanc-id": A_ID, "dicom-uid": B_UID})
    assert _json(plugin.post("/tokens/validate", by_uid))["granted"] is True
    assert _json(plugin.post("/tokens/validate", by_id))["granted"] is True
    assert _json(plugin.post("/tokens/validate", mixed))["granted"] is False


# --- C2: profiles (§12.2) -----------------------------------------------------------------------

ANONYMOUS = {
    "name": "Anonymous",
    "user-id": None,
    "permissions": [],
    "authorized-labels": [],
    "groups": [],
    "validity": 60,
}


def test_p1_keycloak_user(plugin: PluginClient) -> None:
    token = oidc.make_token(
        "myuser",
        subject="3cd50e87-a0e6-40a4-bebf-3eab0cb7b6c0",
        name="my user",
        realm_roles=("default-roles-orthanc", "offline_access", "doctor-role"),
    )
    body = {"token-key": "token", "token-value": token, "server-id": None}
    response = plugin.post("/user/get-profile", body)
    assert _json(response) == {
        "name": "my user",
        "user-id": "3cd50e87-a0e6-40a4-bebf-3eab0cb7b6c0",
        "permissions": sorted(["view", "download", "share", "send"]),
        "authorized-labels": ["*"],
        "groups": [],
        "validity": 60,
    }
    assert _validity_is_int(response.get_data(as_text=True))


def test_p2_same_with_bearer_prefix(plugin: PluginClient) -> None:
    token = oidc.make_token("myuser", realm_roles=("doctor-role",), groups=("/radiology",))
    body = {"token-key": "Authorization", "token-value": f"Bearer {token}", "server-id": None}
    profile = _json(plugin.post("/user/get-profile", body))
    assert profile["permissions"] == ["download", "send", "share", "view"]
    assert profile["groups"] == ["/radiology"]


@pytest.mark.parametrize(
    "body",
    [
        {"token-key": "", "token-value": "", "server-id": None},  # P3
        {"token-key": "Authorization", "token-value": "", "server-id": None},  # P4
        {"token-key": "token", "token-value": VALID_SHARE, "server-id": None},  # P5
        {"token-key": "token", "token-value": oidc.make_token(lifetime=-3600)},  # P6 expired
        {"token-key": "token", "token-value": oidc.make_token(key=oidc.foreign_key())},  # P6
        {"token-key": "token", "token-value": "Bearer garbage"},
        {"token-key": "api-key", "token-value": "ask_0123456789abcdef_" + "A" * 43},
        {"token-key": 5, "token-value": ["x"], "server-id": {"a": 1}},
        {},
    ],
)
def test_p3_to_p6_anonymous_profile(plugin: PluginClient, body: dict[str, Any]) -> None:
    assert _json(plugin.post("/user/get-profile", body)) == ANONYMOUS


def test_hs256_signed_with_public_key_is_anonymous(plugin: PluginClient) -> None:
    # Algorithm confusion: an HS256 token "signed" with the provider's public key material.
    import hashlib
    import hmac

    from authsvc.credentials.sealing import _b64url_encode  # noqa: PLC2701 - test of a raw token shape

    header = _b64url_encode(json.dumps({"alg": "HS256", "kid": oidc.KID}).encode())
    payload = _b64url_encode(
        json.dumps(oidc.claims("mallory", realm_roles=("admin-role",))).encode()
    )
    public = json.dumps(oidc.signing_key().as_dict(private=False)).encode()
    signature = _b64url_encode(
        hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    )
    body = {"token-key": "token", "token-value": f"{header}.{payload}.{signature}"}
    assert _json(plugin.post("/user/get-profile", body)) == ANONYMOUS


def test_p7_api_key(plugin: PluginClient, db_app: Flask) -> None:
    key = generate_api_key()
    with db_app.app_context():
        db.session.add(
            ApiKey(
                id=key.key_id,
                secret_hash=key.secret_hash,
                name="forwarder",
                kind="service",
                owner_subject="993274db-e4f4-465d-8e3e-52e665541ff7",
                owner_username="forwarder",
                roles=["forwarder-role"],
                created_by="user:admin",
            )
        )
        db.session.commit()
    body = {"token-key": "api-key", "token-value": key.plaintext, "server-id": None}
    assert _json(plugin.post("/user/get-profile", body)) == {
        "name": "forwarder",
        "user-id": "993274db-e4f4-465d-8e3e-52e665541ff7",
        "permissions": ["upload"],
        "authorized-labels": ["*"],
        "groups": [],
        "validity": 60,
    }


def test_p8_label_restricted_user(plugin: PluginClient) -> None:
    token = oidc.make_token("user-a", name="user-a", realm_roles=("user-a-role",))
    body = {"token-key": "user-token-key", "token-value": token, "server-id": None}
    profile = _json(plugin.post("/user/get-profile", body))
    assert (profile["name"], profile["permissions"], profile["authorized-labels"]) == (
        "user-a",
        ["view"],
        ["label_a"],
    )


def test_p9_admin_and_star_normalisation(plugin: PluginClient) -> None:
    token = oidc.make_token("admin", name="admin", realm_roles=("admin-role", "user-a-role"))
    profile = _json(plugin.post("/user/get-profile", {"token-key": "t", "token-value": token}))
    assert profile["permissions"] == ["admin-permissions", "all", "view"]
    assert profile["authorized-labels"] == ["*"]


def test_identity_provider_down_is_503_not_anonymous(
    db_app: Flask, requests_mock: rm.Mocker
) -> None:
    oidc.mock_idp(requests_mock, down=True)
    client = PluginClient(db_app.test_client())
    response = client.post(
        "/user/get-profile", {"token-key": "t", "token-value": oidc.make_token()}
    )
    assert response.status_code == 503
    # Anonymous callers do not need the provider: they still get their profile.
    assert (
        _json(client.post("/user/get-profile", {"token-key": "", "token-value": ""})) == ANONYMOUS
    )


class TestAnonymousProfile:
    @pytest.fixture
    def extra_config(self, extra_config: dict[str, Any]) -> dict[str, Any]:
        return {**extra_config, "anonymous_roles": "external-role"}

    def test_configured_anonymous_roles(self, plugin: PluginClient) -> None:
        assert _json(plugin.post("/user/get-profile", {"token-key": "", "token-value": ""})) == {
            **ANONYMOUS,
            "permissions": ["download", "view"],
            "authorized-labels": ["external"],
        }


# --- C3: user-id lookups (§12.3) ------------------------------------------------------------------


def test_u1_known_user_and_u2_unknown(plugin: PluginClient) -> None:
    subject = "3cd50e87-a0e6-40a4-bebf-3eab0cb7b6c0"
    unknown = plugin.post("/user/get-profile", {"user-id": subject, "server-id": None})
    assert unknown.status_code == 200 and unknown.get_data(as_text=True).strip() == "null"
    token = oidc.make_token("myuser", subject=subject)
    plugin.post("/user/get-profile", {"token-key": "token", "token-value": token})
    assert _json(plugin.post("/user/get-profile", {"user-id": subject, "server-id": None})) == {
        "name": "myuser",
        "user-id": subject,
        "permissions": [],
        "authorized-labels": [],
        "groups": [],
        "validity": 60,
    }


# --- C4: creation (§12.4) and sealed tokens ------------------------------------------------------


def _create(plugin: PluginClient, token_type: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resources": [{**A_STUDY, "level": "study"}],
        "server-id": None,
        "type": token_type,
        "validity-duration": 3600,
    }
    body.update(extra)
    response = plugin.put(f"/tokens/{token_type}", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    result: dict[str, Any] = response.get_json()
    return result


def test_t1_share_link(plugin: PluginClient, db_app: Flask) -> None:
    created = _create(plugin, "stone-viewer-publication", **{"validity-duration": 604800})
    token = created["token"]
    assert token.startswith("sh1.")
    # Opaque: the study uid cannot be read from the token.
    assert A_UID not in token and A_ID not in token
    assert created["url"] == (
        f"{ORTHANC_ROOT}stone-webviewer/index.html?study={A_UID}&selectedStudies={A_UID}"
        f"&token={token}"
    )
    with db_app.app_context():
        row = db.session.scalars(sa.select(ShareToken)).one()
        assert row.token_type == "stone-viewer-publication"
        assert row.created_by == "plugin"
        assert row.expires_at is not None
        assert dt.timedelta(days=6) < row.expires_at - utcnow() <= dt.timedelta(days=7)
        actions = db.session.scalars(sa.select(AuditEvent.action)).all()
        assert "token:share:create" in actions
        assert token not in json.dumps(
            [e.detail for e in db.session.scalars(sa.select(AuditEvent))]
        )


def test_t2_instant_link_has_no_url(plugin: PluginClient) -> None:
    created = _create(plugin, "download-instant-link")
    assert created["url"] is None and created["token"].startswith("sh1.")


def test_t3_explicit_expiration_and_id(plugin: PluginClient, db_app: Flask) -> None:
    body = {
        "id": "toto",
        "resources": [{"dicom-uid": "1.2", "level": "Study"}],
        "server-id": None,
        "type": "stone-viewer-publication",
        "expiration-date": "2099-12-31T11:00:00Z",
    }
    response = plugin.put("/tokens/stone-viewer-publication", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    with db_app.app_context():
        row = db.session.scalars(sa.select(ShareToken)).one()
        assert row.request_id == "toto"
        assert row.expires_at == dt.datetime(2099, 12, 31, 11, 0, tzinfo=dt.UTC)


def test_t4_no_expiry_when_allowed(plugin: PluginClient, db_app: Flask) -> None:
    body = {"resources": [{**A_STUDY, "level": "study"}], "server-id": None}
    assert plugin.put("/tokens/stone-viewer-publication", body).status_code == 200
    with db_app.app_context():
        assert db.session.scalars(sa.select(ShareToken)).one().expires_at is None


class TestLifetimeRules:
    @pytest.fixture
    def extra_config(self, extra_config: dict[str, Any]) -> dict[str, Any]:
        return {**extra_config, "share_token_never_expires": False, "share_token_max_lifetime": 0}

    def test_never_expiring_refused_by_default(self, plugin: PluginClient) -> None:
        body = {"resources": [{**A_STUDY, "level": "study"}], "server-id": None}
        response = plugin.put("/tokens/stone-viewer-publication", body)
        assert response.status_code == 422


class TestDefaultLifetimeRules:
    @pytest.fixture
    def extra_config(self, extra_config: dict[str, Any]) -> dict[str, Any]:
        config = dict(extra_config)
        del config["share_token_never_expires"], config["share_token_max_lifetime"]
        return config

    def test_links_without_expiry_get_the_max_lifetime(
        self, plugin: PluginClient, db_app: Flask
    ) -> None:
        body = {"resources": [{**A_STUDY, "level": "study"}], "server-id": None}
        assert plugin.put("/tokens/stone-viewer-publication", body).status_code == 200
        long = {**body, "validity-duration": 10 * 365 * 86400}
        assert plugin.put("/tokens/stone-viewer-publication", long).status_code == 200
        with db_app.app_context():
            for row in db.session.scalars(sa.select(ShareToken)):
                assert row.expires_at is not None
                lifetime = row.expires_at - row.created_at
                assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)


def test_t5_type_mismatch_400(plugin: PluginClient) -> None:
    body = {"resources": [{**A_STUDY, "level": "study"}], "type": "stone-viewer-publication"}
    assert plugin.put("/tokens/ohif-viewer-publication", body).status_code == 400


@pytest.mark.parametrize(
    ("token_type", "body"),
    [
        ("no-such-type", {"resources": [{**A_STUDY, "level": "study"}]}),
        ("meddream-instant-link", {"resources": [{**A_STUDY, "level": "study"}]}),
        ("ohif-viewer-publication", {"resources": [{**A_STUDY, "level": "study"}]}),  # no root
        ("stone-viewer-publication", {"resources": []}),
        ("stone-viewer-publication", {"resources": "A"}),
        ("stone-viewer-publication", {"resources": [{"level": "study"}]}),
        ("stone-viewer-publication", {"resources": [{**A_STUDY, "level": "galaxy"}]}),
        ("stone-viewer-publication", {"resources": [{**A_STUDY, "level": "system"}]}),
        ("stone-viewer-publication", {"resources": [{**A_STUDY}]}),
        ("stone-viewer-publication", {"resources": [{"orthanc-id": 5, "level": "study"}]}),
        ("stone-viewer-publication", {"resources": [{**A_STUDY, "level": "study"}], "id": 3}),
        (
            "stone-viewer-publication",
            {"resources": [{**A_STUDY, "level": "study"}], "validity-duration": 139798367548365},
        ),
        (
            "stone-viewer-publication",
            {"resources": [{**A_STUDY, "level": "study"}], "validity-duration": "60"},
        ),
        (
            "stone-viewer-publication",
            {"resources": [{**A_STUDY, "level": "study"}], "expiration-date": "2001-01-01"},
        ),
        (
            "stone-viewer-publication",
            {"resources": [{**A_STUDY, "level": "study"}], "expiration-date": "soon"},
        ),
        ("inbox-link", {"resources": [{**A_STUDY, "level": "study"}]}),
    ],
)
def test_t6_bad_creations_are_422(
    plugin: PluginClient, token_type: str, body: dict[str, Any]
) -> None:
    response = plugin.put(f"/tokens/{token_type}", {"server-id": None, **body})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"] == "validation-failed"


def test_sealed_token_round_trip_method_aware_and_revocable(
    plugin: PluginClient, db_app: Flask
) -> None:
    token = _create(plugin, "viewer-instant-link")["token"]
    assert _json(plugin.post("/tokens/validate", validate_body(token)))["granted"] is True
    post = validate_body(f"Bearer {token}", method="post")
    assert _json(plugin.post("/tokens/validate", post))["granted"] is True
    for method in ("delete", "put"):
        body = validate_body(token, method=method)
        assert _json(plugin.post("/tokens/validate", body))["granted"] is False
    assert _json(plugin.post("/tokens/validate", validate_body(token, B_STUDY)))["granted"] is False
    # Revoke it: refused from then on (the revoking process forgets its cache at once).
    with db_app.app_context():
        from authsvc.services import services

        service = services().share_tokens
        row = db.session.scalars(sa.select(ShareToken)).one()
        service.revoke(row, actor="user:admin", now=utcnow())
        db.session.commit()
    assert _json(plugin.post("/tokens/validate", validate_body(token)))["granted"] is False
    decoded = _json(plugin.post("/tokens/decode", {"token-key": "token", "token-value": token}))
    assert decoded["error-code"] == "invalid" and decoded["resources"] == []


def test_sealed_token_with_unknown_row_is_refused(plugin: PluginClient, db_app: Flask) -> None:
    token = _create(plugin, "viewer-instant-link")["token"]
    with db_app.app_context():
        db.session.execute(sa.delete(ShareToken))
        db.session.commit()
    # The per-process revocation cache may still hold "not revoked" for a few seconds; a fresh
    # app (another worker) sees the row is gone.
    db_app.extensions["authsvc"].share_tokens._revoked_cache.clear()
    assert _json(plugin.post("/tokens/validate", validate_body(token)))["granted"] is False


def test_expired_sealed_token(plugin: PluginClient, db_app: Flask) -> None:
    from authsvc.services import services

    token = _create(plugin, "stone-viewer-publication")["token"]
    with db_app.app_context():
        later = utcnow() + dt.timedelta(hours=2)
        svc = services().share_tokens
        reply = svc.decode(token, now=later)
        assert reply == {
            "token-type": "stone-viewer-publication",
            "error-code": "expired",
            "redirect-url": None,
            "resources": [],
        }
        assert not svc.validate(_parse_validate(validate_body(token)), now=later)


def _parse_validate(body: dict[str, Any]) -> Any:
    from authsvc.orthanc.plugin_protocol import parse_validate

    return parse_validate(body)


# --- C5: decoding (§12.5) ------------------------------------------------------------------------

D1_RESOURCES = [{"dicom-uid": A_UID, "orthanc-id": A_ID, "url": None, "level": "study"}]


def test_d1_valid_publication(plugin: PluginClient) -> None:
    body = {"token-key": "token", "token-value": VALID_SHARE}
    assert _json(plugin.post("/tokens/decode", body)) == {
        "token-type": "stone-viewer-publication",
        "error-code": None,
        "redirect-url": (
            f"{ORTHANC_ROOT}stone-webviewer/index.html?study={A_UID}&selectedStudies={A_UID}"
            f"&token={VALID_SHARE}"
        ),
        "resources": D1_RESOURCES,
    }


def test_d2_expired(plugin: PluginClient) -> None:
    body = {"token-key": "token", "token-value": EXPIRED_SHARE}
    assert _json(plugin.post("/tokens/decode", body)) == {
        "token-type": "stone-viewer-publication",
        "error-code": "expired",
        "redirect-url": None,
        "resources": [],
    }


@pytest.mark.parametrize(
    "value", ["abc", "", "Bearer ", VALID_SHARE + "x", "sh1.k.AAAA", 5, None, "eyJ.eyJ.x"]
)
def test_d3_garbage(plugin: PluginClient, value: Any) -> None:
    assert _json(plugin.post("/tokens/decode", {"token-key": "token", "token-value": value})) == {
        "token-type": None,
        "error-code": "invalid",
        "redirect-url": None,
        "resources": [],
    }


def test_d4_bearer_prefix(plugin: PluginClient) -> None:
    body = {"token-key": "Authorization", "token-value": f"Bearer {VALID_SHARE}"}
    decoded = _json(plugin.post("/tokens/decode", body))
    assert decoded["error-code"] is None and decoded["resources"] == D1_RESOURCES


def test_d5_instant_link_returns_resources(plugin: PluginClient) -> None:
    token = _create(plugin, "viewer-instant-link")["token"]
    assert _json(plugin.post("/tokens/decode", {"token-key": "t", "token-value": token})) == {
        "token-type": "viewer-instant-link",
        "error-code": None,
        "redirect-url": None,
        "resources": D1_RESOURCES,
    }


def test_decode_sealed_publication_redirects_to_viewer(plugin: PluginClient) -> None:
    token = _create(plugin, "stone-viewer-publication")["token"]
    decoded = _json(plugin.post("/tokens/decode", {"token-key": "t", "token-value": token}))
    assert decoded["redirect-url"].startswith(f"{ORTHANC_ROOT}stone-webviewer/index.html?")
    assert decoded["redirect-url"].endswith(f"&token={token}")


class TestWithoutLegacySecret:
    @pytest.fixture
    def extra_config(self, extra_config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in extra_config.items() if k != "legacy_share_secret"}

    def test_legacy_tokens_refused(self, plugin: PluginClient) -> None:
        assert (
            _json(plugin.post("/tokens/validate", validate_body(VALID_SHARE)))["granted"] is False
        )
        decoded = _json(plugin.post("/tokens/decode", {"token-value": VALID_SHARE}))
        assert decoded["error-code"] == "invalid"


# --- C6/C7: roles (§12.6) -------------------------------------------------------------------------


def test_r1_roles_imported_from_permissions_file(plugin: PluginClient, db_app: Flask) -> None:
    roles = _json(plugin.get("/settings/roles"))
    assert roles["available-labels"] == []
    assert roles["roles"]["doctor-role"] == {
        "authorized-labels": ["*"],
        "permissions": ["download", "send", "share", "view"],
    }
    assert set(roles["roles"]) == {
        "admin-role",
        "doctor-role",
        "external-role",
        "user-a-role",
        "forwarder-role",
    }
    with db_app.app_context():
        history = db.session.scalars(sa.select(RolesConfigHistory)).all()
        assert [(h.version, h.source, h.changed_by) for h in history] == [(1, "import", "system")]


def test_r2_put_roles(plugin: PluginClient, db_app: Flask) -> None:
    assert "doctor-role" in _json(plugin.get("/settings/roles"))["roles"]  # imported: version 1
    body = {
        "roles": {
            "admin-role": {"authorized-labels": ["*"], "permissions": ["all", "admin-permissions"]}
        },
        "available-labels": ["external"],
        "server-id": None,
    }
    response = plugin.put("/settings/roles", body)
    assert response.status_code == 200 and response.get_data(as_text=True).strip() == "null"
    assert _json(plugin.get("/settings/roles")) == {
        "roles": {
            "admin-role": {"authorized-labels": ["*"], "permissions": ["admin-permissions", "all"]}
        },
        "available-labels": ["external"],
    }
    with db_app.app_context():
        versions = db.session.scalars(
            sa.select(RolesConfigHistory.version).order_by(RolesConfigHistory.version)
        ).all()
        assert versions == [1, 2]
        audit = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "roles:update")
        ).all()
        assert [a.actor for a in audit] == ["system", "plugin"]
    # The new roles apply to new profiles: doctor-role is gone.
    token = oidc.make_token("x", realm_roles=("doctor-role",))
    profile = _json(plugin.post("/user/get-profile", {"token-key": "t", "token-value": token}))
    assert profile["permissions"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"roles": "x"},
        {"roles": {"r": {"permissions": ["a b"]}}},
        {"roles": {"r": {"permissions": ["view|all"]}}},
        {"roles": {}, "available-labels": ["*"]},
        [1],
    ],
)
def test_bad_roles_are_422_and_change_nothing(plugin: PluginClient, body: Any) -> None:
    before = _json(plugin.get("/settings/roles"))
    response = plugin.put("/settings/roles", body)
    assert response.status_code == 422
    assert _json(plugin.get("/settings/roles")) == before


def test_custom_permission_names_work(plugin: PluginClient) -> None:
    roles = {"roles": {"custom": {"permissions": ["my-extra-permission"], "authorized-labels": []}}}
    assert plugin.put("/settings/roles", roles).status_code == 200
    token = oidc.make_token("x", realm_roles=("custom",))
    profile = _json(plugin.post("/user/get-profile", {"token-key": "t", "token-value": token}))
    assert profile["permissions"] == ["my-extra-permission"]


# --- metrics ---------------------------------------------------------------------------------


def test_decisions_are_counted(plugin: PluginClient) -> None:
    plugin.post("/tokens/validate", validate_body(VALID_SHARE))
    plugin.post("/tokens/validate", validate_body(EXPIRED_SHARE))
    plugin.post("/tokens/validate", validate_body(EXPIRED_SHARE))
    plugin.post("/user/get-profile", {"token-key": "", "token-value": ""})
    text = plugin.client.get("/metrics").get_data(as_text=True)
    assert 'authsvc_decisions_total{callback="validate",outcome="granted"} 1' in text
    assert 'authsvc_decisions_total{callback="validate",outcome="denied"} 2' in text
    assert 'authsvc_decisions_total{callback="profile",outcome="anonymous"} 1' in text
