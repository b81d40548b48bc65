"""Prove that the integration environment is real: each service answers as the tests assume.

If one of these fails, every other integration test would fail for a reason that has nothing to
do with authsvc; these tests say which component is at fault.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlencode
from urllib.parse import urlparse

import psycopg
import pydicom
import pytest
import requests
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from tests import processes
from tests.dicom_factory import make_study


def _version(text: str) -> tuple[int, ...]:
    """Turn '1.12.7' (or 'mainline') into a comparable tuple."""
    parts = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def _verify(idp: processes.IdpService, token: str, audience: str) -> dict[str, Any]:
    """Verify an access token against the IdP's JWKS with joserfc and return its claims."""
    keys = KeySet.import_key_set(requests.get(idp.jwks_url, timeout=10).json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    assert decoded.header["typ"] == "JWT"
    assert decoded.header["kid"] in {key.kid for key in keys}
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": idp.issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
    )
    registry.validate(decoded.claims)
    return decoded.claims


# ------------------------------------------------------------------------------ Orthanc


def test_orthanc_is_at_least_1_12_with_labels(orthanc: processes.OrthancService) -> None:
    """The labels API that authsvc relies on exists only from Orthanc 1.12 on."""
    system = requests.get(f"{orthanc.url}/system", timeout=10).json()
    assert _version(system["Version"]) >= (1, 12), system["Version"]
    assert system["HasLabels"] is True
    plugins = requests.get(f"{orthanc.url}/plugins", timeout=10).json()
    assert "dicom-web" in plugins


def test_generated_study_is_stored_and_found(orthanc: processes.OrthancService) -> None:
    """An instance from dicom_factory goes in through POST /instances and comes back out."""
    instances = make_study(n_series=1, n_instances=2, study_description="environment probe")
    stored = requests.post(f"{orthanc.url}/instances", data=instances[0], timeout=30)
    assert stored.status_code == 200, stored.text
    assert stored.json()["Status"] == "Success"

    expected = pydicom.dcmread(io.BytesIO(instances[0]))
    found = requests.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Study", "Query": {"StudyInstanceUID": expected.StudyInstanceUID}},
        timeout=10,
    ).json()
    assert found == [stored.json()["ParentStudy"]]
    tags = requests.get(
        f"{orthanc.url}/instances/{stored.json()['ID']}/simplified-tags", timeout=10
    )
    assert tags.json()["PatientID"] == expected.PatientID


PYTHON_PLUGIN_PROBE = """
import json
import sys

import orthanc


def probe(output, uri, **request):
    output.AnswerBuffer(json.dumps({"python": sys.version.split()[0]}), "application/json")


orthanc.RegisterRestCallback("/authsvc-probe", probe)
"""


def test_orthanc_python_plugin_and_restart_keep_working(tmp_path: Path) -> None:
    """A PythonScript loads the Python plugin, and a restart keeps the stored studies."""
    script = tmp_path / "probe.py"
    script.write_text(PYTHON_PLUGIN_PROBE)
    with processes.start_orthanc(
        tmp_path / "orthanc", processes.free_port(), {"PythonScript": str(script)}
    ) as orthanc:
        probe = requests.get(f"{orthanc.url}/authsvc-probe", timeout=10)
        assert probe.status_code == 200, orthanc.log_tail()
        # The plugin must run trixie's own interpreter, not the venv's Python.
        assert _version(probe.json()["python"]) >= (3, 12)

        stored = requests.post(f"{orthanc.url}/instances", data=make_study()[0], timeout=30)
        assert stored.status_code == 200
        orthanc.restart()
        kept = requests.get(f"{orthanc.url}/instances/{stored.json()['ID']}", timeout=10)
        assert kept.status_code == 200


def test_missing_orthanc_is_an_error_not_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the private install the helper raises, pointing at setup.sh."""
    monkeypatch.setenv("AUTHSVC_TESTENV", str(tmp_path / "empty"))
    with pytest.raises(processes.ServiceError, match="setup.sh"):
        processes.start_orthanc(tmp_path, processes.free_port())


def test_orthanc_answers_through_nginx(
    nginx: processes.NginxService, orthanc: processes.OrthancService
) -> None:
    """The private nginx proxies /orthanc/ to the session's Orthanc."""
    direct = requests.get(f"{orthanc.url}/system", timeout=10).json()
    proxied = requests.get(f"{nginx.url}/orthanc/system", timeout=10)
    assert proxied.status_code == 200
    assert proxied.json()["Version"] == direct["Version"]


# ------------------------------------------------------------------------- Authorization plugin
# The real Advanced Authorization plugin inside the private Orthanc, talking to a tiny recording
# web service on 127.0.0.1 (not authsvc: these tests prove the plugin works, nothing more).

AUTHZ_USER, AUTHZ_PASSWORD = "plugin-user", "plugin-password"
# A well-formed Orthanc study ID that no study has.
NO_SUCH_STUDY = "00000000-00000000-00000000-00000000-00000000"


def _profile(permissions: list[str], labels: list[str] | None = None) -> dict[str, Any]:
    """Return a user profile as the plugin expects it (validity: a JSON integer, never 0)."""
    return {
        "name": "x",
        "user-id": "x",
        "permissions": permissions,
        "authorized-labels": ["*"] if labels is None else labels,
        "groups": [],
        "validity": 1,
    }


@dataclass
class RecordedCall:
    """One request the plugin sent to the fake web service."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.body)


class FakeAuthWebService:
    """A threading http.server on 127.0.0.1 that records calls and answers /user/get-profile.

    ``profile`` is the JSON answered (with ``status``); ``raw`` replaces it with other bytes.
    """

    def __init__(self) -> None:
        """Start serving on a free loopback port."""
        self.calls: list[RecordedCall] = []
        self.profile: Any = _profile(["view"])
        self.status = 200
        self.raw: bytes | None = None
        self._server = ThreadingHTTPServer((processes.LOOPBACK, 0), self._handler_class())
        self.port = int(self._server.server_address[1])
        self.url = f"http://{processes.LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        """Build the request handler class bound to this service."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _read_body(self) -> bytes:
                """Read the body, chunked (as the plugin sends it) or with a Content-Length."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()  # CRLF after each chunk
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return body

            def _answer(self) -> None:
                owner.calls.append(
                    RecordedCall(self.command, self.path, dict(self.headers), self._read_body())
                )
                if self.path != "/user/get-profile":
                    status, payload = 404, b'{"detail": "not here"}'
                elif owner.raw is not None:
                    status, payload = owner.status, owner.raw
                else:
                    status, payload = owner.status, json.dumps(owner.profile).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        return Handler

    def calls_to(self, path: str) -> list[RecordedCall]:
        """Return the recorded calls to one path."""
        return [call for call in self.calls if call.path == path]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def auth_web_service() -> Iterator[FakeAuthWebService]:
    """A recording stand-in for the auth web service, for the duration of one test."""
    service = FakeAuthWebService()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def authz_orthanc(
    tmp_path: Path, auth_web_service: FakeAuthWebService
) -> Iterator[processes.OrthancService]:
    """A private Orthanc with the real authorization plugin, configured as deployments do."""
    authorization = processes.authorization_section(
        auth_web_service.url, AUTHZ_USER, AUTHZ_PASSWORD
    )
    orthanc = processes.start_orthanc(
        tmp_path / "orthanc", processes.free_port(), authorization=authorization
    )
    try:
        yield orthanc
    finally:
        orthanc.stop()


def test_orthanc_lists_the_authorization_plugin(
    authz_orthanc: processes.OrthancService, auth_web_service: FakeAuthWebService
) -> None:
    """The real plugin loads (all its trixie libraries resolve) and registers as "authorization"."""
    assert str(processes.authorization_plugin_path()) in authz_orthanc.config["Plugins"]
    viewer = {"api-key": "plugins-viewer"}
    # /plugins itself sits behind the plugin's filter (it needs "view").
    plugins = requests.get(f"{authz_orthanc.url}/plugins", headers=viewer, timeout=10)
    assert plugins.status_code == 200, authz_orthanc.log_tail()
    assert "authorization" in plugins.json()
    assert "dicom-web" in plugins.json()
    about = requests.get(f"{authz_orthanc.url}/plugins/authorization", headers=viewer, timeout=10)
    assert about.json()["ID"] == "authorization"


def test_authorization_plugin_asks_the_web_service_for_the_profile(
    authz_orthanc: processes.OrthancService, auth_web_service: FakeAuthWebService
) -> None:
    """GET /studies with an api-key is decided by the profile the web service returns."""
    allowed = requests.get(f"{authz_orthanc.url}/studies", headers={"api-key": "abc"}, timeout=15)
    assert allowed.status_code == 200, authz_orthanc.log_tail()
    assert allowed.json() == []

    calls = [c for c in auth_web_service.calls_to("/user/get-profile") if c.json()["token-value"]]
    assert len(calls) == 1, auth_web_service.calls
    call = calls[0]
    assert call.method == "POST"
    credentials = base64.b64encode(f"{AUTHZ_USER}:{AUTHZ_PASSWORD}".encode()).decode()
    assert call.headers["Authorization"] == f"Basic {credentials}"
    assert call.json() == {"server-id": None, "token-key": "api-key", "token-value": "abc"}
    assert call.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in call.headers

    # Another token (the plugin caches profiles by token) whose profile lacks "view".
    auth_web_service.profile = _profile(["download"])
    denied = requests.get(f"{authz_orthanc.url}/studies", headers={"api-key": "def"}, timeout=15)
    assert denied.status_code == 403
    assert auth_web_service.calls_to("/user/get-profile")[-1].json()["token-value"] == "def"


@pytest.mark.parametrize(
    ("status", "raw"),
    [(500, b'{"detail": "boom"}'), (200, b"not json"), (200, b'{"name": "x"}')],
    ids=["http-500", "not-json", "missing-fields"],
)
def test_failed_profile_call_denies_and_is_asked_again(
    authz_orthanc: processes.OrthancService,
    auth_web_service: FakeAuthWebService,
    status: int,
    raw: bytes,
) -> None:
    """A profile call that fails gives an empty profile (403), and nothing is cached."""
    auth_web_service.status, auth_web_service.raw = status, raw
    for _ in range(2):
        response = requests.get(
            f"{authz_orthanc.url}/studies", headers={"api-key": "broken"}, timeout=15
        )
        assert response.status_code == 403
    assert len(auth_web_service.calls_to("/user/get-profile")) == 2


def test_label_write_probe_tells_granted_from_refused(
    authz_orthanc: processes.OrthancService, auth_web_service: FakeAuthWebService
) -> None:
    """PUT a label on a study that does not exist: 404 past the plugin, 403 stopped by it.

    This is the start-up probe "may this token write labels": it changes nothing either way.
    """
    probe = f"{authz_orthanc.url}/studies/{NO_SUCH_STUDY}/labels/probe"
    auth_web_service.profile = _profile(["edit-labels"])
    granted = requests.put(probe, headers={"api-key": "label-writer"}, timeout=15)
    assert granted.status_code == 404, authz_orthanc.log_tail()
    auth_web_service.profile = _profile([])
    refused = requests.put(probe, headers={"api-key": "label-nobody"}, timeout=15)
    assert refused.status_code == 403
    # With edit-labels but not "*", the plugin's label check cannot clear an unknown study.
    auth_web_service.profile = _profile(["edit-labels"], labels=["some-label"])
    limited = requests.put(probe, headers={"api-key": "label-limited"}, timeout=15)
    assert limited.status_code == 403


def test_missing_authorization_plugin_is_an_error_not_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the plugin (variable, shared build, cached copy) the helper raises, naming setup."""
    monkeypatch.setenv(processes.AUTHZ_PLUGIN_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(processes.ServiceError, match="AUTHSVC_TEST_AUTHZ_PLUGIN.*setup.sh"):
        processes.start_orthanc(tmp_path, processes.free_port(), authorization={})
    monkeypatch.delenv(processes.AUTHZ_PLUGIN_ENV)
    monkeypatch.setattr(processes, "REPO_ROOT", tmp_path / "checkout" / "main")
    monkeypatch.setenv("AUTHSVC_TESTENV", str(tmp_path / "empty"))
    with pytest.raises(processes.ServiceError, match="authorization plugin not found.*setup.sh"):
        processes.authorization_plugin_path()


# ------------------------------------------------------------------------------ OIDC provider


def test_discovery_uses_keycloak_paths(idp: processes.IdpService) -> None:
    """A client written for Keycloak finds every endpoint where Keycloak keeps it."""
    metadata = requests.get(idp.discovery_url, timeout=10).json()
    assert metadata["issuer"] == idp.issuer
    assert metadata["token_endpoint"] == idp.token_url
    assert metadata["jwks_uri"] == idp.jwks_url
    assert metadata["authorization_endpoint"] == idp.auth_url
    assert metadata["end_session_endpoint"] == idp.logout_url
    assert "password" in metadata["grant_types_supported"]


def test_password_grant_token_verifies_against_jwks(idp: processes.IdpService) -> None:
    """alice's access token is an RS256 JWT with Keycloak's claims, signed by the JWKS key."""
    tokens = idp.password_token("alice")
    claims = _verify(idp, tokens["access_token"], audience="authsvc")
    assert claims["azp"] == "authsvc"
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice Doctor"
    assert isinstance(claims["aud"], list)
    assert claims["realm_access"]["roles"] == ["doctor"]
    assert claims["groups"] == ["/radiology"]
    assert claims["resource_access"]["authsvc"]["roles"] == ["viewer"]
    assert "id_token" in tokens and "refresh_token" in tokens


def test_tampered_token_fails_verification(idp: processes.IdpService) -> None:
    """The JWKS check is real: changing the payload breaks the signature."""
    header, payload, signature = idp.password_token("carol")["access_token"].split(".")
    forged = base64.urlsafe_b64encode(b'{"sub":"someone-else"}').rstrip(b"=").decode()
    keys = KeySet.import_key_set(requests.get(idp.jwks_url, timeout=10).json())
    with pytest.raises(BadSignatureError):
        jwt.decode(f"{header}.{forged}.{signature}", keys, algorithms=["RS256"])


def test_wrong_password_is_invalid_grant(idp: processes.IdpService) -> None:
    """A bad password gets Keycloak's 400 invalid_grant answer."""
    response = requests.post(
        idp.token_url,
        data={"grant_type": "password", "username": "alice", "password": "not-her-password"},
        auth=("authsvc", idp.clients["authsvc"]["secret"]),
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_client_credentials_gives_service_account_token(idp: processes.IdpService) -> None:
    """client_credentials acts as service-account-<client> with the client's roles."""
    claims = _verify(idp, idp.client_credentials_token("authsvc")["access_token"], "authsvc")
    service_account = idp.clients["authsvc"]["serviceAccount"]
    assert claims["preferred_username"] == "service-account-authsvc"
    assert claims["azp"] == "authsvc"
    expected_roles = service_account["clientRoles"]["authsvc"]
    assert claims["resource_access"]["authsvc"]["roles"] == expected_roles
    assert claims["realm_access"]["roles"] == service_account["realmRoles"]


def test_refresh_userinfo_introspection_and_logout(idp: processes.IdpService) -> None:
    """The rest of the Keycloak surface authsvc may call answers like Keycloak does."""
    client_auth = ("authsvc", idp.clients["authsvc"]["secret"])
    tokens = idp.password_token("bob")
    refreshed = requests.post(
        idp.token_url,
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=client_auth,
        timeout=10,
    )
    assert refreshed.status_code == 200, refreshed.text
    access_token = refreshed.json()["access_token"]
    assert _verify(idp, access_token, "authsvc")["realm_access"]["roles"] == ["admin"]

    bearer = {"Authorization": f"Bearer {access_token}"}
    userinfo = requests.get(idp.userinfo_url, headers=bearer, timeout=10)
    assert userinfo.json()["preferred_username"] == "bob"
    rejected = requests.get(idp.userinfo_url, headers={"Authorization": "Bearer x"}, timeout=10)
    assert rejected.status_code == 401

    def introspect(token: str) -> dict[str, Any]:
        """Ask the IdP about a token as the authsvc client."""
        response = requests.post(
            idp.introspection_url, data={"token": token}, auth=client_auth, timeout=10
        )
        return dict(response.json())

    assert introspect(access_token)["active"] is True
    assert introspect(access_token[:-4] + "AAAA")["active"] is False

    logout = requests.get(
        idp.logout_url, params={"id_token_hint": refreshed.json()["id_token"]}, timeout=10
    )
    assert logout.status_code == 200


# ------------------------------------------------------------------------------ Chromium


def _pkce_pair() -> tuple[str, str]:
    """Return a PKCE (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
def page(chromium_browser: Any) -> Iterator[Any]:
    """A fresh browser context and page, so cookies never leak between tests."""
    context = chromium_browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def test_chromium_logs_in_through_the_idp_form(page: Any, idp: processes.IdpService) -> None:
    """Chromium renders the Keycloak-shaped form, shows the error, then completes the flow."""
    verifier, challenge = _pkce_pair()
    # Nothing listens on this callback; the browser request is answered by Playwright instead.
    callback = f"http://127.0.0.1:{processes.free_port()}/callback"
    query = urlencode(
        {
            "client_id": "orthanc-ui",
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": callback,
            "state": "probe-state",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    page.route(f"{callback}*", lambda route: route.fulfill(status=200, body="callback reached"))
    page.goto(f"{idp.auth_url}?{query}")
    for selector in ("#kc-form-login", "#username", "#password", "#kc-login"):
        assert page.locator(selector).is_visible(), selector

    page.fill("#username", "alice")
    page.fill("#password", "wrong")
    page.click("#kc-login")
    assert "Invalid username or password" in page.locator("#input-error").inner_text()

    page.fill("#password", idp.users["alice"]["password"])
    with page.expect_request(f"{callback}*") as request_info:
        page.click("#kc-login")
    params = parse_qs(urlparse(request_info.value.url).query)
    assert params["state"] == ["probe-state"]
    tokens = requests.post(
        idp.token_url,
        data={
            "grant_type": "authorization_code",
            "client_id": "orthanc-ui",
            "code": params["code"][0],
            "redirect_uri": callback,
            "code_verifier": verifier,
        },
        timeout=10,
    ).json()
    assert _verify(idp, tokens["access_token"], "authsvc")["preferred_username"] == "alice"


def test_chromium_loads_healthz_through_gunicorn(page: Any, tmp_path: Path) -> None:
    """The real app under gunicorn answers /healthz to a real browser."""
    app = processes.start_gunicorn_app(
        tmp_path,
        processes.free_port(),
        {"AUTHSVC_ENV": "development", "AUTHSVC_DATA_DIR": str(tmp_path / "data")},
    )
    with app:
        response = page.goto(f"{app.url}/healthz")
        assert response is not None and response.status == 200, app.log_tail()


# ------------------------------------------------------------------------------ PostgreSQL


def test_private_postgres_cluster_starts_and_stops() -> None:
    """The fallback used when no PostgreSQL server is running works on this machine."""
    cluster = processes.start_private_postgres()
    with cluster:
        with psycopg.connect(cluster.database_url, connect_timeout=5) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == ("test",)
    assert not cluster.running()
    assert not cluster.base_dir.exists()


def test_postgres_accepts_connections(postgres_url: str) -> None:
    """The database URL the suite will use accepts a login and a query."""
    with psycopg.connect(postgres_url, connect_timeout=5) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
