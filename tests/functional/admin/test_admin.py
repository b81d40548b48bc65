"""The admin pages through the Flask test client, on SQLite and PostgreSQL, Orthanc and the OIDC
provider faked (the real ones drive these pages in tests/integration/test_admin_browser.py).

Sessions are opened the way the sign-in callback opens them (admin_sessions.start_session);
the sign-in redirect itself (PKCE, state, nonce) and a forged callback are tested here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from authsvc import audit
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity import admin_sessions
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AuditEvent
from authsvc.models import UploadToken
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc

pytestmark = pytest.mark.functional

ISSUER = "https://idp.test/realms/test"
DISCOVERY = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/protocol/openid-connect/auth",
    "token_endpoint": f"{ISSUER}/protocol/openid-connect/token",
    "jwks_uri": f"{ISSUER}/protocol/openid-connect/certs",
    "end_session_endpoint": f"{ISSUER}/protocol/openid-connect/logout",
    "id_token_signing_alg_values_supported": ["RS256"],
}
CSRF = "csrf-token-of-the-test-session"


# What the admin pages need to sign people in through the faked provider and list studies;
# the other modules that drive the pages build their settings on it.
SIGN_IN_CONFIG: dict[str, Any] = {
    "orthanc_url": URL,
    "orthanc_retries": 0,
    "oidc_issuer": ISSUER,
    "oidc_client_id": "authsvc",
    "admin_client_secret": "insecure-test-admin-client-secret",
    "admin_roles": "admin",
}


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return {
        **SIGN_IN_CONFIG,
        "study_viewers": '[{"name": "OHIF", "url": "https://viewer.test/?uid={StudyInstanceUID}"}]',
    }


@pytest.fixture
def mock() -> Iterator[rm.Mocker]:
    with rm.Mocker() as mocker:
        mocker.get(f"{ISSUER}/.well-known/openid-configuration", json=DISCOVERY)
        yield mocker


@pytest.fixture
def orthanc(mock: rm.Mocker) -> FakeOrthanc:
    return FakeOrthanc(mock)


def person(name: str, *, roles: frozenset[str] = frozenset()) -> Identity:
    return Identity(
        kind=IdentityKind.USER,
        subject=f"sub-{name}",
        username=name,
        name=name.title(),
        email=f"{name}@example.test",
        email_verified=True,
        realm_roles=roles,
    )


ALICE = person("alice")
BOB = person("bob")
ROOT = person("root", roles=frozenset({"admin"}))


def sign_in(app: Flask, identity: Identity) -> FlaskClient:
    """Return a client signed in as ``identity`` (as the callback would leave it)."""
    client = app.test_client()
    with app.app_context():
        sid = admin_sessions.start_session(identity, "the-id-token", 3600)
    with client.session_transaction() as session:
        session["admin_sid"] = sid
        session["admin_csrf"] = CSRF
    return client


def post(client: FlaskClient, path: str, **form: Any) -> Any:
    return client.post(path, data={"csrf_token": CSRF, **form})


def make_album(client: FlaskClient, name: str = "Lung study") -> str:
    response = post(client, "/admin/albums", name=name)
    assert response.status_code == 302, response.text
    match = re.fullmatch(r"/admin/albums/([\w-]+)", response.headers["Location"])
    assert match, response.headers["Location"]
    return match.group(1)


def add_member(app: Flask, album_id: str, identity: Identity, role: str) -> None:
    with app.app_context():
        db.session.add(
            AlbumMember(
                album_id=album_id,
                principal_kind="user",
                principal=identity.subject,
                role=role,
                added_by="test",
            )
        )
        db.session.commit()


def no_traceback(response: Any) -> None:
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


# --- sign-in, sign-out, cookies -----------------------------------------------------------------


def test_pages_send_visitors_to_the_sign_in(db_app: Flask) -> None:
    response = db_app.test_client().get("/admin/albums")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=/admin/albums")


def test_an_unreachable_provider_is_explained(app: Flask) -> None:
    with rm.Mocker() as mocker:
        mocker.get(f"{ISSUER}/.well-known/openid-configuration", status_code=502)
        response = app.test_client().get("/admin/login")
    assert response.status_code == 503
    assert "cannot be reached right now" in response.text
    no_traceback(response)


def test_sign_in_starts_code_flow_with_pkce_s256(db_app: Flask, mock: rm.Mocker) -> None:
    response = db_app.test_client().get("/admin/login?next=/admin/albums")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert (
        f"{location.scheme}://{location.netloc}{location.path}"
        == DISCOVERY["authorization_endpoint"]
    )
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == "authsvc"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) >= 43
    assert query["state"] and query["nonce"]
    assert "openid" in query["scope"].split()
    assert query["redirect_uri"] == "http://localhost/admin/callback"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "Secure" in cookie
    assert "SameSite=Lax" in cookie


def test_a_forged_callback_is_refused_in_plain_words(db_app: Flask, mock: rm.Mocker) -> None:
    client = db_app.test_client()
    client.get("/admin/login")
    response = client.get("/admin/callback?code=stolen&state=not-the-state")
    assert response.status_code == 400
    assert "Sign-in did not complete" in response.text
    no_traceback(response)
    assert client.get("/admin/albums").status_code == 302  # still not signed in


def test_next_cannot_leave_the_site(db_app: Flask) -> None:
    client = sign_in(db_app, ALICE)
    response = client.get("/admin/login?next=https://evil.test/")
    assert response.headers["Location"] == "/admin/"


def test_sign_out_ends_the_session_here_and_at_the_provider(db_app: Flask, mock: rm.Mocker) -> None:
    client = sign_in(db_app, ALICE)
    with client.session_transaction() as session:
        stolen = dict(session)
    assert client.get("/admin/albums").status_code == 200
    response = post(client, "/admin/logout")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path.endswith("/protocol/openid-connect/logout")
    query = parse_qs(location.query)
    assert query["id_token_hint"] == ["the-id-token"]
    assert query["post_logout_redirect_uri"] == ["http://localhost/admin/signed-out"]
    assert client.get("/admin/albums").status_code == 302
    # A copy of the old cookie opens nothing: the server-side session is gone.
    replay = db_app.test_client()
    with replay.session_transaction() as session:
        session.update(stolen)
    assert replay.get("/admin/albums").status_code == 302


def test_insecure_cookie_only_when_configured(tmp_path: Any, log_stream: Any) -> None:
    from tests.conftest import _make_app
    from tests.conftest import base_config

    app = _make_app(base_config(tmp_path, admin_cookie_secure="false"), log_stream)
    client = sign_in(app, ALICE)
    response = client.get("/admin/login")
    # Signed in already: redirected home, and the cookie carries no Secure flag.
    assert response.status_code == 302
    assert app.config["SESSION_COOKIE_SECURE"] is False


def test_sign_in_without_a_configured_provider_says_so(tmp_path: Any, log_stream: Any) -> None:
    from tests.conftest import _make_app
    from tests.conftest import base_config

    app = _make_app(base_config(tmp_path), log_stream)
    response = app.test_client().get("/admin/login")
    assert response.status_code == 503
    assert "Sign-in is not set up" in response.text
    no_traceback(response)


# --- CSRF ---------------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ALICE)
    for form in ({"name": "No token"}, {"name": "Wrong token", "csrf_token": "guess"}):
        response = client.post("/admin/albums", data=form)
        assert response.status_code == 403
        assert "did not come from this site" in response.text
        no_traceback(response)
    with db_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Album)) == 0


def test_logout_needs_the_csrf_token_too(db_app: Flask, mock: rm.Mocker) -> None:
    client = sign_in(db_app, ALICE)
    assert client.post("/admin/logout").status_code == 403
    assert client.get("/admin/albums").status_code == 200


# --- albums -------------------------------------------------------------------------------------


def test_create_album_and_find_it_listed(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ALICE)
    album_id = make_album(client, "Lung CT 2026")
    page = client.get(f"/admin/albums/{album_id}")
    assert page.status_code == 200
    assert "Album “Lung CT 2026” created" in page.text
    listing = client.get("/admin/albums")
    assert "Lung CT 2026" in listing.text
    assert "owner" in listing.text


def test_empty_album_name_is_explained(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ALICE)
    response = post(client, "/admin/albums", name="   ")
    assert response.status_code == 302
    page = client.get("/admin/albums")
    assert '<div class="notice error" role="alert">The name must not be empty.</div>' in page.text


def test_add_studies_by_uid_shows_them_with_viewer_links(
    db_app: Flask, orthanc: FakeOrthanc
) -> None:
    client = sign_in(db_app, ROOT)
    album_id = make_album(client)
    orthanc.add_study("1.2.3.4", patient_name="Doe^Jane", description="Chest CT")
    response = post(client, f"/admin/albums/{album_id}/studies/add", uids="1.2.3.4\n9.9.9")
    assert response.status_code == 302
    page = client.get(f"/admin/albums/{album_id}")
    assert "1 study added" in page.text
    assert "1 not found" in page.text
    assert "Doe, Jane" in page.text
    assert "Chest CT" in page.text
    assert "https://viewer.test/?uid=1.2.3.4" in page.text


def test_hundreds_of_studies_are_added_in_batches_with_progress(
    db_app: Flask, orthanc: FakeOrthanc
) -> None:
    client = sign_in(db_app, ROOT)
    album_id = make_album(client)
    uids = [f"1.2.840.{n}" for n in range(120)]
    for uid in uids:
        orthanc.add_study(uid)
    response = post(client, f"/admin/albums/{album_id}/studies/add", uids="\n".join(uids))
    assert response.status_code == 200
    assert "50 of 120 done" in response.text
    steps = 1
    while response.status_code == 200:
        form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', response.text))
        response = client.post(f"/admin/albums/{album_id}/studies/add", data=form)
        steps += 1
    assert steps == 3
    page = client.get(f"/admin/albums/{album_id}")
    assert "Done: 120 studies added." in page.text
    assert "Studies (120)" in page.text


@pytest.mark.parametrize("role", ["owner", "manager", "contributor", "viewer"])
def test_album_page_shows_only_what_the_role_may_do(
    db_app: Flask, orthanc: FakeOrthanc, role: str
) -> None:
    owner = sign_in(db_app, ALICE)
    album_id = make_album(owner)
    if role != "owner":
        add_member(db_app, album_id, BOB, role)
    client = owner if role == "owner" else sign_in(db_app, BOB)
    page = client.get(f"/admin/albums/{album_id}")
    assert page.status_code == 200
    no_traceback(page)
    shown = {
        control: f'id="{control}"' in page.text
        for control in ("add-studies", "invite", "delete-album", "sharing-link", "leave")
    }
    assert shown["add-studies"] == (role in ("owner", "manager", "contributor"))
    assert shown["sharing-link"] == (role in ("owner", "manager", "contributor"))
    assert shown["invite"] == (role in ("owner", "manager"))
    assert shown["delete-album"] == (role == "owner")
    # The only owner cannot leave; everybody else can.
    assert shown["leave"] == (role != "owner")
    sharing = client.get(f"/admin/albums/{album_id}/sharing")
    assert sharing.status_code == (403 if role == "viewer" else 200)
    no_traceback(sharing)


def test_a_viewer_forging_management_posts_is_refused(db_app: Flask, orthanc: FakeOrthanc) -> None:
    owner = sign_in(db_app, ALICE)
    album_id = make_album(owner)
    add_member(db_app, album_id, BOB, "viewer")
    viewer = sign_in(db_app, BOB)
    forged = {
        f"/admin/albums/{album_id}/members/invite": {
            "how": "email",
            "who": "x@y.test",
            "role": "owner",
        },
        f"/admin/albums/{album_id}/delete": {"confirm": "yes"},
        f"/admin/albums/{album_id}/edit": {"name": "Mine now"},
        f"/admin/albums/{album_id}/studies/remove": {"study": "1.2.3"},
        f"/admin/albums/{album_id}/upload-tokens": {"expires": "3600"},
        f"/admin/albums/{album_id}/read-tokens": {"expires": "3600"},
    }
    for path, form in forged.items():
        response = post(viewer, path, **form)
        assert response.status_code == 403, path
        no_traceback(response)
    with db_app.app_context():
        album = db.session.get(Album, album_id)
        assert album is not None and album.name == "Lung study"
        members = db.session.scalars(sa.select(AlbumMember.principal)).all()
        assert sorted(members) == ["sub-alice", "sub-bob"]
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UploadToken)) == 0


def test_strangers_get_not_found_for_albums_they_are_not_in(
    db_app: Flask, orthanc: FakeOrthanc
) -> None:
    album_id = make_album(sign_in(db_app, ALICE))
    response = sign_in(db_app, BOB).get(f"/admin/albums/{album_id}")
    assert response.status_code == 404
    no_traceback(response)


def test_invite_by_username_email_and_group(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ALICE)
    sign_in(db_app, BOB)  # bob has signed in once: his username is known
    album_id = make_album(client)
    post(
        client,
        f"/admin/albums/{album_id}/members/invite",
        how="username",
        who="BOB",
        role="contributor",
    )
    post(
        client,
        f"/admin/albums/{album_id}/members/invite",
        how="email",
        who="Carol@Example.test",
        role="viewer",
    )
    post(
        client,
        f"/admin/albums/{album_id}/members/invite",
        how="group",
        who="/radiology",
        role="viewer",
    )
    post(
        client,
        f"/admin/albums/{album_id}/members/invite",
        how="username",
        who="nobody",
        role="viewer",
    )
    page = client.get(f"/admin/albums/{album_id}")
    assert "Bob (bob)" in page.text
    assert "carol@example.test" in page.text
    assert "radiology" in page.text
    assert "Nobody with the username “nobody” has signed in here yet" in page.text
    with db_app.app_context():
        rows = db.session.execute(
            sa.select(AlbumMember.principal_kind, AlbumMember.principal, AlbumMember.role)
        ).all()
    assert sorted(tuple(r) for r in rows) == [
        ("email", "carol@example.test", "viewer"),
        ("group", "radiology", "viewer"),
        ("user", "sub-alice", "owner"),
        ("user", "sub-bob", "contributor"),
    ]


def test_change_role_remove_and_leave(db_app: Flask, orthanc: FakeOrthanc) -> None:
    owner = sign_in(db_app, ALICE)
    album_id = make_album(owner)
    add_member(db_app, album_id, BOB, "viewer")
    with db_app.app_context():
        bob_row = db.session.scalars(
            sa.select(AlbumMember.id).where(AlbumMember.principal == "sub-bob")
        ).one()
    post(owner, f"/admin/albums/{album_id}/members/{bob_row}/role", role="manager")
    assert "Role changed to manager." in owner.get(f"/admin/albums/{album_id}").text
    bob = sign_in(db_app, BOB)
    assert post(bob, f"/admin/albums/{album_id}/leave").status_code == 302
    assert "You left the album “Lung study”." in bob.get("/admin/albums").text
    assert bob.get(f"/admin/albums/{album_id}").status_code == 404
    # The last owner is told in plain words why she cannot leave.
    response = post(owner, f"/admin/albums/{album_id}/leave")
    assert response.status_code == 403
    no_traceback(response)


def test_upload_token_is_shown_once_then_listed_and_revocable(
    db_app: Flask, orthanc: FakeOrthanc
) -> None:
    client = sign_in(db_app, ALICE)
    album_id = make_album(client)
    response = post(
        client, f"/admin/albums/{album_id}/upload-tokens", expires="3600", note="scanner 2"
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="upload-token-value" value="([^"]+)"', response.text)
    assert token is not None
    assert f"Bearer {token.group(1)}" in response.text  # in the ready-to-paste examples
    assert f"/api/albums/{album_id}/uploads" in response.text
    assert "dicomweb_client" in response.text and "slicer.dicomDatabase" in response.text
    assert f"http://token:{token.group(1)}@localhost/dicom-web/albums/{album_id}" in response.text
    listing = client.get(f"/admin/albums/{album_id}/sharing")
    assert token.group(1) not in listing.text  # never shown again
    assert "scanner 2" in listing.text and "active" in listing.text
    with db_app.app_context():
        token_id = db.session.scalars(sa.select(UploadToken.id)).one()
    post(client, f"/admin/albums/{album_id}/upload-tokens/{token_id}/revoke")
    listing = client.get(f"/admin/albums/{album_id}/sharing")
    assert "Upload token revoked" in listing.text
    assert "revoked" in listing.text


def test_read_token_is_shown_once(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ALICE)
    album_id = make_album(client)
    response = post(client, f"/admin/albums/{album_id}/read-tokens", expires="604800")
    assert response.status_code == 200
    assert 'id="read-token-value"' in response.text
    assert f"/dicom-web/albums/{album_id}" in response.text


def test_pick_lists_only_studies_the_user_can_see(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ALICE)
    album_id = make_album(client)
    other = make_album(client, "Other")
    orthanc.add_study("1.2.3.1", patient_name="Visible^Vera")
    orthanc.add_study("1.2.3.2", patient_name="Hidden^Hans")
    with db_app.app_context():
        label = db.session.get(Album, other).label
    orthanc.studies[next(iter(orthanc.studies))].labels.add(label)
    page = client.get(f"/admin/albums/{album_id}/pick?q=a")
    assert page.status_code == 200
    assert "Visible, Vera" in page.text
    assert "Hidden" not in page.text


# --- administrator pages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/admin/status", "/admin/audit", "/admin/audit.csv", "/admin/roles"]
)
def test_admin_pages_are_for_administrators(db_app: Flask, mock: rm.Mocker, path: str) -> None:
    mock.get(f"{URL}/system", json={"Version": "1.12.9"})
    refused = sign_in(db_app, ALICE).get(path)
    assert refused.status_code == 403
    no_traceback(refused)
    assert "/admin/roles" not in sign_in(db_app, ALICE).get("/admin/albums").text
    shown = sign_in(db_app, ROOT).get(path)
    assert shown.status_code == 200
    no_traceback(shown)


def test_status_page_reports_each_dependency(db_app: Flask, mock: rm.Mocker) -> None:
    mock.get(f"{URL}/system", status_code=500)
    page = sign_in(db_app, ROOT).get("/admin/status")
    assert "Database" in page.text
    assert "Orthanc server" in page.text
    assert "not answering" in page.text
    assert "Sign-in service" in page.text


def test_audit_trail_filters_and_exports_csv(db_app: Flask, mock: rm.Mocker) -> None:
    with db_app.app_context():
        audit.record("album:create", "user:sub-alice", "album:A1", "success", {"name": "=cmd"})
        audit.record("album:delete", "user:sub-bob", "album:B2", "denied", {})
        db.session.commit()
    client = sign_in(db_app, ROOT)
    page = client.get("/admin/audit?actor=alice")
    assert "album:A1" in page.text and "album:B2" not in page.text
    page = client.get("/admin/audit?action=album:delete")
    assert "album:B2" in page.text and "album:A1" not in page.text
    page = client.get("/admin/audit?from=not-a-date")
    assert "is not a date" in page.text
    csv_text = client.get("/admin/audit.csv?album=A1").text
    lines = csv_text.strip().splitlines()
    assert len(lines) == 2
    assert "'name: =cmd" not in lines[1] and "name: =cmd" in lines[1]
    with db_app.app_context():
        audit.record("album:edit", "=HYPERLINK(1)", None, "success", {})
        db.session.commit()
    csv_text = client.get("/admin/audit.csv?action=album:edit").text
    assert "'=HYPERLINK(1)" in csv_text


def test_roles_grid_shows_and_saves_the_plugin_roles(db_app: Flask, mock: rm.Mocker) -> None:
    client = sign_in(db_app, ROOT)
    response = post(
        client,
        "/admin/roles",
        version="0",
        **{
            "new-role": "doctor",
            "perm-new": ["view", "download"],
            "labels-new": "cardio, *",
            "group-roles": "radiology: doctor",
        },
    )
    assert response.status_code == 302
    page = client.get("/admin/roles")
    assert "Roles and permissions saved" in page.text
    assert 'title="doctor may view"' in page.text
    assert "every study" in page.text
    plugin_view = client.get("/settings/roles")
    if plugin_view.status_code == 200:
        assert plugin_view.json["roles"]["doctor"]["permissions"] == ["download", "view"]
    stale = post(client, "/admin/roles", version="0", **{"new-role": "late"})
    assert stale.status_code == 302
    assert 'class="notice error"' in client.get("/admin/roles?edit=1").text
    with db_app.app_context():
        actions = db.session.scalars(sa.select(AuditEvent.action)).all()
    assert "roles:update" in actions


def test_audit_trail_names_people_and_albums(db_app: Flask, orthanc: FakeOrthanc) -> None:
    client = sign_in(db_app, ROOT)
    album_id = make_album(client, "Named album")
    page = client.get("/admin/audit?actor=ROOT")
    assert 'Root <span class="hint">(root)</span>' in page.text
    assert f'href="/admin/albums/{album_id}">Named album</a>' in page.text
    assert "album:create" in page.text


def test_personal_api_key_shown_once_then_revoked(db_app: Flask, mock: rm.Mocker) -> None:
    from authsvc.models import ApiKey

    client = sign_in(db_app, ALICE)
    page = client.get("/admin/api-keys")
    assert page.status_code == 200
    assert 'name="kind"' not in page.text  # no service accounts for non-admins
    response = post(client, "/admin/api-keys", name="export script", expires_in_days="30")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    key = re.search(r'id="api-key-value" value="([^"]+)"', response.text)
    assert key is not None
    listing = client.get("/admin/api-keys")
    assert key.group(1) not in listing.text and "<td>export script" in listing.text
    with db_app.app_context():
        row = db.session.scalars(sa.select(ApiKey)).one()
        assert row.kind == "user" and row.owner_subject == ALICE.subject
        key_id = row.id
    # Someone else's key: 404, and it keeps working.
    bob = sign_in(db_app, BOB)
    assert post(bob, f"/admin/api-keys/{key_id}/revoke").status_code == 404
    assert "<td>export script" not in bob.get("/admin/api-keys").text
    assert post(client, f"/admin/api-keys/{key_id}/revoke").status_code == 302
    with db_app.app_context():
        assert db.session.get(ApiKey, key_id).revoked_at is not None


def test_service_accounts_are_for_administrators(db_app: Flask, mock: rm.Mocker) -> None:
    from authsvc.models import ApiKey

    refused = post(
        sign_in(db_app, ALICE), "/admin/api-keys", name="svc", kind="service", roles="admin"
    )
    assert refused.status_code == 403
    root = sign_in(db_app, ROOT)
    assert 'name="kind"' in root.get("/admin/api-keys").text
    made = post(root, "/admin/api-keys", name="forwarder", kind="service", roles="admin")
    assert made.status_code == 200
    with db_app.app_context():
        row = db.session.scalars(sa.select(ApiKey)).one()
        assert row.kind == "service" and row.roles == ["admin"]


def test_share_links_page_lists_only_ones_own(db_app: Flask, mock: rm.Mocker) -> None:
    page = sign_in(db_app, ALICE).get("/admin/share-links")
    assert page.status_code == 200
    assert "No share links made by you" in page.text
    assert "Show everybody" not in page.text
    assert "Show everybody" in sign_in(db_app, ROOT).get("/admin/share-links").text


def test_an_orthanc_outage_is_explained_on_the_album_page(
    db_app: Flask, orthanc: FakeOrthanc
) -> None:
    client = sign_in(db_app, ALICE)
    album_id = make_album(client)
    orthanc.down = True
    page = client.get(f"/admin/albums/{album_id}")
    assert page.status_code == 200
    assert "The image archive (Orthanc) is not answering" in page.text
    assert 'id="members"' in page.text  # the rest of the page still works
    no_traceback(page)
    response = post(client, f"/admin/albums/{album_id}/studies/add", uids="1.2.3")
    assert response.status_code == 503
    assert "try again" in response.text.lower()
    no_traceback(response)


def test_removing_a_member_names_them(db_app: Flask, orthanc: FakeOrthanc) -> None:
    owner = sign_in(db_app, ALICE)
    sign_in(db_app, BOB)
    album_id = make_album(owner)
    add_member(db_app, album_id, BOB, "contributor")
    with db_app.app_context():
        bob_row = db.session.scalars(
            sa.select(AlbumMember.id).where(AlbumMember.principal == "sub-bob")
        ).one()
    assert post(owner, f"/admin/albums/{album_id}/members/{bob_row}/remove").status_code == 302
    page = owner.get(f"/admin/albums/{album_id}")
    assert "Bob (bob) removed from the album" in page.text
    assert sign_in(db_app, BOB).get(f"/admin/albums/{album_id}").status_code == 404
