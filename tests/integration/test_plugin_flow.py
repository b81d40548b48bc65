"""authsvc answering the Orthanc plugin's callbacks, for real: gunicorn, PostgreSQL, and tokens
issued by the real OIDC provider (``idp`` fixture, realm scripts/testenv/idp/realm.json).

Callbacks are sent the way the plugin sends them: HTTP Basic, JSON with sorted keys, chunked
transfer encoding and no Content-Length, one connection per call.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import processes

pytestmark = pytest.mark.integration

PLUGIN_USER = "orthanc-plugin"
PLUGIN_PASSWORD = "insecure-integration-plugin-password"
A_STUDY = {
    "orthanc-id": "b9c08539-26f93bde-c81ab0d7-bffaf2cb-a4d0bdd0",
    "dicom-uid": "1.2.840.113619.2.176.2025.1499492.7391.1171285944.390",
}
B_STUDY = {
    "orthanc-id": "27f7126f-4f66fb14-03f4081b-f9341db2-53925988",
    "dicom-uid": "2.16.840.1.113669.632.20.1211.10000357775",
}
# Roles for the test realm: realm roles, client roles of the "authsvc" client, one group.
ROLES = {
    "roles": {
        "doctor": {"permissions": ["view", "download"], "authorized-labels": ["cardio"]},
        "viewer": {"permissions": ["view"], "authorized-labels": ["radio"]},
        "radiology-reader": {"permissions": ["view"], "authorized-labels": ["xray"]},
        "admin": {"permissions": ["all", "admin-permissions"], "authorized-labels": ["*"]},
        "service": {"permissions": ["upload"], "authorized-labels": []},
        "uploader": {"permissions": ["upload", "send"], "authorized-labels": []},
    },
    "available-labels": [],
    "group-roles": {"/radiology": ["radiology-reader"]},
}


class Authsvc:
    """The running service: plugin-style callbacks and JSON API calls."""

    def __init__(self, service: processes.Service) -> None:
        self.service = service
        self.port = service.port
        self.url = f"http://127.0.0.1:{service.port}"

    def plugin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One callback on a fresh connection, chunked as Orthanc's HTTP client sends it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        credentials = base64.b64encode(f"{PLUGIN_USER}:{PLUGIN_PASSWORD}".encode()).decode()
        headers = {"Authorization": f"Basic {credentials}"}
        try:
            if body is None:
                conn.request(method, path, headers=headers)
            else:
                data = json.dumps(body, sort_keys=True).encode()
                headers["Content-Type"] = "application/json"
                headers["Transfer-Encoding"] = "chunked"
                # Two chunks, so the body is really streamed in pieces.
                conn.request(
                    method,
                    path,
                    body=iter([data[: len(data) // 2], data[len(data) // 2 :]]),
                    headers=headers,
                    encode_chunked=True,
                )
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def profile(self, token: str, key: str = "token") -> dict[str, Any]:
        status, body = self.plugin(
            "POST", "/user/get-profile", {"token-key": key, "token-value": token, "server-id": None}
        )
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    def validate(self, token: str, method: str, study: dict[str, str] = A_STUDY) -> bool:
        body = {
            "method": method,
            "level": "study",
            "token-key": "token",
            "token-value": token,
            "server-id": None,
            **study,
        }
        status, answer = self.plugin("POST", "/tokens/validate", body)
        assert status == 200 and answer["validity"] == 60 and isinstance(answer["validity"], int)
        granted: bool = answer["granted"]
        return granted

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def authsvc(idp: processes.IdpService, pg_schema: str, tmp_path: Path) -> Iterator[Authsvc]:
    """authsvc under gunicorn on PostgreSQL, trusting the real OIDC provider."""
    roles_file = tmp_path / "permissions.json"
    roles_file.write_text("// imported on first start\n" + json.dumps(ROLES, indent=2))
    env = {
        "AUTHSVC_ENV": "testing",
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
        "AUTHSVC_SECRET_KEY": "insecure-integration-secret-key-0123456789",
        "AUTHSVC_DATABASE_URL": pg_schema,
        "AUTHSVC_OIDC_ISSUER": idp.issuer,
        "AUTHSVC_OIDC_CLIENT_ID": "authsvc",
        "AUTHSVC_PLUGIN_USERNAME": PLUGIN_USER,
        "AUTHSVC_PLUGIN_PASSWORD": PLUGIN_PASSWORD,
        "AUTHSVC_ROLES_FILE": str(roles_file),
        "AUTHSVC_ADMIN_ROLES": "admin",
        "AUTHSVC_PUBLIC_ORTHANC_ROOT": "http://pacs.test/orthanc/",
    }
    child_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTHSVC_") or k.startswith("AUTHSVC_TEST")
    }
    child_env.update(env)
    subprocess.run(
        [str(Path(sys.prefix) / "bin" / "authsvc"), "init-db"],
        env=child_env,
        check=True,
        capture_output=True,
    )
    service = processes.start_gunicorn_app(tmp_path / "gunicorn", processes.free_port(), env)
    yield Authsvc(service)
    service.stop()


def _sub(idp: processes.IdpService, token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    subject: str = claims["sub"]
    return subject


def test_password_grant_tokens_give_the_expected_profiles(
    authsvc: Authsvc, idp: processes.IdpService
) -> None:
    alice = idp.password_token("alice")["access_token"]
    profile = authsvc.profile(alice)
    # Realm role doctor + client role viewer (authsvc client) + group /radiology -> reader.
    assert profile == {
        "name": "Alice Doctor",
        "user-id": _sub(idp, alice),
        "permissions": ["download", "view"],
        "authorized-labels": ["cardio", "radio", "xray"],
        "groups": ["/radiology"],
        "validity": 60,
    }
    # OHIF sends the token with its Bearer prefix: same profile.
    assert authsvc.profile(f"Bearer {alice}", key="Authorization") == profile

    bob = authsvc.profile(idp.password_token("bob")["access_token"])
    assert (bob["permissions"], bob["authorized-labels"]) == (["admin-permissions", "all"], ["*"])

    carol_token = idp.password_token("carol")["access_token"]
    carol = authsvc.profile(carol_token)
    assert carol["user-id"] == _sub(idp, carol_token)
    assert (carol["permissions"], carol["authorized-labels"]) == ([], [])


def test_client_credentials_token_gives_the_service_account_profile(
    authsvc: Authsvc, idp: processes.IdpService
) -> None:
    token = idp.client_credentials_token("authsvc")["access_token"]
    profile = authsvc.profile(token)
    # Realm role service + client role uploader of the service account.
    assert profile["permissions"] == ["send", "upload"]
    assert profile["authorized-labels"] == []
    assert profile["user-id"] == _sub(idp, token)


def test_bad_tokens_get_the_anonymous_profile(authsvc: Authsvc, idp: processes.IdpService) -> None:
    header, payload, signature = idp.password_token("bob")["access_token"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    for token in (forged, "garbage", ""):
        assert authsvc.profile(token)["name"] == "Anonymous"
        assert authsvc.profile(token)["permissions"] == []


def test_api_key_round_trip(authsvc: Authsvc, idp: processes.IdpService) -> None:
    alice = idp.password_token("alice")["access_token"]
    created = authsvc.api("POST", "/api/api-keys", alice, json={"name": "scanner forwarder"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    # The key acts as Alice, with her roles: through the plugin and on the JSON API.
    profile = authsvc.profile(key, key="api-key")
    assert profile["user-id"] == _sub(idp, alice)
    assert profile["permissions"] == ["download", "view"]
    listed = requests.get(f"{authsvc.url}/api/api-keys", headers={"api-key": key}, timeout=10)
    assert [k["id"] for k in listed.json()["items"]] == [created.json()["id"]]
    # Revoked: refused from then on.
    revoked = authsvc.api("DELETE", f"/api/api-keys/{created.json()['id']}", alice)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert authsvc.profile(key, key="api-key")["name"] == "Anonymous"
    again = requests.get(f"{authsvc.url}/api/api-keys", headers={"api-key": key}, timeout=10)
    assert again.status_code == 401


def test_share_token_lifecycle(authsvc: Authsvc, idp: processes.IdpService) -> None:
    status, created = authsvc.plugin(
        "PUT",
        "/tokens/stone-viewer-publication",
        {
            "resources": [{**A_STUDY, "level": "study"}],
            "server-id": None,
            "type": "stone-viewer-publication",
            "validity-duration": 3600,
        },
    )
    assert status == 200, created
    token = created["token"]
    assert created["url"].startswith("http://pacs.test/orthanc/stone-webviewer/index.html?")
    # The share link is not a user: anonymous profile, then validation decides.
    assert authsvc.profile(token)["name"] == "Anonymous"
    assert authsvc.validate(token, "get") is True
    assert authsvc.validate(token, "post") is True  # the plugin's own /tools/find lookup
    assert authsvc.validate(token, "delete") is False
    assert authsvc.validate(token, "put") is False
    assert authsvc.validate(token, "get", B_STUDY) is False
    status, decoded = authsvc.plugin("POST", "/tokens/decode", {"token-value": token})
    assert (
        decoded["error-code"] is None
        and decoded["resources"][0]["dicom-uid"] == A_STUDY["dicom-uid"]
    )

    # An admin (bob) finds it and revokes it; Alice may not.
    bob = idp.password_token("bob")["access_token"]
    alice = idp.password_token("alice")["access_token"]
    items = authsvc.api("GET", "/api/share-tokens?all=true", bob).json()["items"]
    assert len(items) == 1 and token not in json.dumps(items)
    token_id = items[0]["id"]
    assert authsvc.api("DELETE", f"/api/share-tokens/{token_id}", alice).status_code == 404
    assert authsvc.api("DELETE", f"/api/share-tokens/{token_id}", bob).status_code == 200

    assert authsvc.validate(token, "get") is False
    status, decoded = authsvc.plugin("POST", "/tokens/decode", {"token-value": token})
    assert decoded["error-code"] == "invalid" and decoded["resources"] == []


def test_roles_settings_and_metrics(authsvc: Authsvc) -> None:
    status, roles = authsvc.plugin("GET", "/settings/roles")
    assert status == 200 and roles["group-roles"] == {"radiology": ["radiology-reader"]}
    roles.pop("group-roles")
    roles["roles"]["viewer"]["authorized-labels"] = ["radio", "mri"]
    status, answer = authsvc.plugin("PUT", "/settings/roles", {**roles, "server-id": None})
    assert (status, answer) == (200, None)
    assert authsvc.plugin("GET", "/settings/roles")[1]["roles"]["viewer"]["authorized-labels"] == [
        "mri",
        "radio",
    ]
    metrics = requests.get(f"{authsvc.url}/metrics", timeout=10).text
    assert "authsvc_decisions_total" in metrics


def test_wrong_plugin_credentials_are_refused(authsvc: Authsvc) -> None:
    response = requests.post(
        f"{authsvc.url}/tokens/validate", json={}, auth=(PLUGIN_USER, "wrong"), timeout=10
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
