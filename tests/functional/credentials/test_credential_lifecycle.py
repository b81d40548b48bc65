"""Credentials follow their maker's rights: what the admin pages and the API say about it.

The attacks themselves (a removed member's token still uploading, …) are in
tests/functional/test_attacks_credentials.py; here: the People page and the users API, what the
album, API-key and share-link pages say about a suspended credential, sign-in of a disabled
person, and what "the maker's rights now" is made of (groups as last seen, API-key roles, the
per-process cache and its bound).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask

from authsvc import albums
from authsvc.credentials.lifecycle import BackingCache
from authsvc.errors import Forbidden
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity import admin_sessions
from authsvc.models import AdminSession
from authsvc.models import AlbumMember
from authsvc.models import AuditEvent
from authsvc.models import KnownUser
from authsvc.models import ShareToken
from authsvc.models import UploadToken
from authsvc.models import utcnow
from authsvc.policy import Allowed
from authsvc.policy import Denied
from tests.conftest import api_key_row
from tests.fake_orthanc import FakeOrthanc
from tests.functional.admin.test_admin import ALICE
from tests.functional.admin.test_admin import BOB
from tests.functional.admin.test_admin import DISCOVERY
from tests.functional.admin.test_admin import ISSUER
from tests.functional.admin.test_admin import ROOT
from tests.functional.admin.test_admin import SIGN_IN_CONFIG
from tests.functional.admin.test_admin import make_album
from tests.functional.admin.test_admin import post
from tests.functional.admin.test_admin import sign_in
from tests.functional.test_attacks import ADMIN
from tests.functional.test_attacks import World
from tests.functional.test_attacks import _world
from tests.functional.test_attacks import bearer
from tests.functional.test_attacks import sub

pytestmark = pytest.mark.functional


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return dict(SIGN_IN_CONFIG)


@pytest.fixture
def fake(db_app: Flask) -> Iterator[FakeOrthanc]:
    with rm.Mocker() as mocker:
        mocker.get(f"{ISSUER}/.well-known/openid-configuration", json=DISCOVERY)
        yield FakeOrthanc(mocker)


def _member_id(app: Flask, album_id: str, subject: str) -> int:
    with app.app_context():
        return db.session.scalars(
            sa.select(AlbumMember.id).where(
                AlbumMember.album_id == album_id, AlbumMember.principal == subject
            )
        ).one()


# --- the People page and the users API ------------------------------------------------------------


def test_people_page_disables_and_enables_a_person(db_app: Flask, fake: FakeOrthanc) -> None:
    alice = sign_in(db_app, ALICE)
    root = sign_in(db_app, ROOT)
    assert alice.get("/admin/people").status_code == 403
    assert post(alice, f"/admin/people/{ALICE.subject}/disable").status_code == 403
    page = root.get("/admin/people")
    assert page.status_code == 200 and "alice" in page.text
    assert "People" in root.get("/admin/albums").text  # in the admin's menu
    assert "/admin/people" not in alice.get("/admin/albums").text

    done = post(root, f"/admin/people/{ALICE.subject}/disable")
    assert done.status_code == 302
    assert "disabled" in root.get("/admin/people").text
    # Her open session ended, and she cannot sign in again.
    assert alice.get("/admin/albums").status_code == 302
    with db_app.app_context():
        assert not db.session.scalars(
            sa.select(AdminSession).where(AdminSession.subject == ALICE.subject)
        ).all()
        with pytest.raises(Forbidden):
            admin_sessions.start_session(ALICE, None, 3600)
        actions = db.session.scalars(
            sa.select(AuditEvent.action).where(AuditEvent.subject == f"user:{ALICE.subject}")
        ).all()
        assert actions == ["user:disable"]
    assert post(root, f"/admin/people/{ROOT.subject}/disable").status_code == 403  # not oneself
    post(root, f"/admin/people/{ALICE.subject}/enable")
    with db_app.app_context():
        assert db.session.get(KnownUser, ALICE.subject).disabled_at is None
        admin_sessions.start_session(ALICE, None, 3600)  # may sign in again


def test_users_api_errors(db_app: Flask, fake: FakeOrthanc) -> None:
    root = {"Authorization": f"Bearer {_jwt_for(db_app, ROOT)}"}
    client = db_app.test_client()
    assert client.post("/api/users/nobody-ever/enable", headers=root).status_code == 404
    assert client.post(f"/api/users/{ROOT.subject}/disable", headers=root).status_code == 409
    # Someone authsvc never saw can be disabled ahead of time (by subject).
    answer = client.post("/api/users/future-sub/disable", headers=root)
    assert answer.status_code == 200
    assert answer.get_json()["disabled"] is True and answer.get_json()["subject"] == "future-sub"


def _jwt_for(app: Flask, identity: Identity) -> str:
    """An API key acting as ``identity`` (these tests' provider is not the JWT fake)."""
    row, plaintext = api_key_row(
        identity.subject, identity.username, roles=sorted(identity.realm_roles), name="test"
    )
    with app.app_context():
        db.session.add(row)
        db.session.commit()
    return plaintext


# --- what the pages say ---------------------------------------------------------------------------


def test_sharing_page_says_why_an_upload_token_stopped(db_app: Flask, fake: FakeOrthanc) -> None:
    alice = sign_in(db_app, ALICE)
    album_id = make_album(alice)
    with db_app.app_context():
        albums.invite_member(ADMIN, album_id, "user", BOB.subject, "contributor")
    bob = sign_in(db_app, BOB)
    made = post(bob, f"/admin/albums/{album_id}/upload-tokens", expires="3600", note="scanner 7")
    assert made.status_code == 200
    listing = alice.get(f"/admin/albums/{album_id}/sharing")
    assert "scanner 7" in listing.text and "suspended" not in listing.text
    member = _member_id(db_app, album_id, BOB.subject)
    post(alice, f"/admin/albums/{album_id}/members/{member}/role", role="viewer")

    listing = alice.get(f"/admin/albums/{album_id}/sharing")
    assert "suspended" in listing.text
    assert "its maker is no longer a contributor (or higher) of this album" in listing.text
    with db_app.app_context():
        token = db.session.scalars(sa.select(UploadToken)).one()
        assert token.revoked_at is None  # suspended, not revoked: a promotion brings it back
    # Still revocable from the page.
    assert f"/upload-tokens/{token.id}/revoke" in listing.text


def test_api_keys_page_says_the_owner_is_disabled(db_app: Flask, fake: FakeOrthanc) -> None:
    _jwt_for(db_app, ALICE)
    root = sign_in(db_app, ROOT)
    sign_in(db_app, ALICE)  # known to authsvc
    assert "suspended" not in root.get("/admin/api-keys").text
    post(root, f"/admin/people/{ALICE.subject}/disable")
    page = root.get("/admin/api-keys")
    assert "suspended" in page.text and "its owner is disabled" in page.text


def test_share_links_page_says_the_maker_lost_the_study(db_app: Flask, fake: FakeOrthanc) -> None:
    study = fake.add_study("1.2.3.77", {"cardio"})
    with db_app.app_context():
        db.session.add(
            ShareToken(
                id="link-1",
                token_type="viewer-instant-link",
                resources=[{"level": "study", "orthanc-id": study.id, "dicom-uid": study.uid}],
                server_id=None,
                created_by=f"user:{ALICE.subject}",
                created_at=utcnow(),
            )
        )
        db.session.commit()
    sign_in(db_app, ALICE)  # known, with no role that shows "cardio"
    page = sign_in(db_app, ROOT).get("/admin/share-links?all=1")
    assert page.status_code == 200
    assert "suspended" in page.text and "may no longer make it" in page.text
    key = _jwt_for(db_app, ROOT)
    listed = db_app.test_client().get("/api/share-tokens?all=true", headers={"api-key": key})
    (item,) = listed.get_json()["items"]
    assert item["status"] == "suspended" and "may no longer make it" in item["reason"]


# --- what "the maker's rights now" is made of -----------------------------------------------------


@pytest.fixture
def world(
    tmp_path: Any, log_stream: io.StringIO, request: pytest.FixtureRequest
) -> Iterator[World]:
    yield from _world(request, tmp_path, log_stream, "sqlite")


def test_group_membership_counts_as_last_seen(world: World) -> None:
    with world.app.app_context():
        albums.invite_member(ADMIN, world.album_a, "group", "radiology", "manager")
    gus = bearer("gus", groups=("/radiology",))
    made = world.client.post(f"/api/albums/{world.album_a}/read-tokens", json={}, headers=gus)
    assert made.status_code == 201, made.get_json()
    token = made.get_json()["token"]
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": token}).status_code == 200
    # gus is seen again without the group (moved in Keycloak): his token stands on that.
    assert world.client.get("/api/albums", headers=bearer("gus")).status_code == 200
    world.app.extensions["authsvc"].makers.forget()
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": token}).status_code == 401


def test_a_key_only_maker_holds_the_roles_of_their_keys(world: World) -> None:
    # bob's API key (no roles) is all authsvc knows of bob besides his album membership.
    with world.app.app_context():
        db.session.execute(sa.delete(KnownUser).where(KnownUser.subject == sub("bob")))
        db.session.commit()
    read = world.tokens["read"]
    world.app.extensions["authsvc"].makers.forget()
    assert world.gate("GET", f"/studies/{world.b.id}", {"token": read}).status_code == 200


def test_backing_answers_are_kept_for_the_ttl_only() -> None:
    now = [0.0]
    cache = BackingCache(ttl=5.0, clock=lambda: now[0])
    answers: list[Any] = [Allowed("yes"), Denied("no")]
    assert cache.get("k", lambda: answers.pop(0))
    now[0] = 4.9
    assert cache.get("k", lambda: answers.pop(0))  # still the cached answer
    now[0] = 5.0
    assert not cache.get("k", lambda: answers.pop(0))  # the change is seen after the TTL
    assert cache.should_audit("c") and not cache.should_audit("c")


def test_an_identity_seen_changed_is_written_at_once(world: World) -> None:
    first = Identity(kind=IdentityKind.USER, subject="s-1", username="ann", groups=frozenset())
    moved = Identity(
        kind=IdentityKind.USER, subject="s-1", username="ann", groups=frozenset({"/x"})
    )
    with world.app.app_context():
        users = world.app.extensions["authsvc"].users
        users.remember(first)
        users.remember(moved)  # within the hour, but changed
        db.session.expire_all()
        assert db.session.get(KnownUser, "s-1").identity["groups"] == ["/x"]


def test_a_service_keys_tokens_stop_when_the_key_is_revoked(world: World) -> None:
    root = bearer("root", realm_roles=("admin",))
    made = world.client.post(
        "/api/api-keys", json={"name": "pacs", "service_account": True, "roles": []}, headers=root
    )
    assert made.status_code == 201, made.get_json()
    key, key_id = made.get_json()["key"], made.get_json()["id"]
    with world.app.app_context():
        albums.invite_member(ADMIN, world.album_a, "user", f"api-key:{key_id}", "manager")
    read = world.client.post(
        f"/api/albums/{world.album_a}/read-tokens", json={}, headers={"api-key": key}
    )
    assert read.status_code == 201, read.get_json()
    token = read.get_json()["token"]
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": token}).status_code == 200
    assert world.client.delete(f"/api/api-keys/{key_id}", headers=root).status_code == 200
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": token}).status_code == 401
