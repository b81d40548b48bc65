"""Attack tests: credentials that outlive their maker's rights (issue 15, point 2).

One family, ``lifecycle`` (the ``test_lifecycle_…`` prefix is what bench/results.py counts by):
someone makes a credential while allowed to, then loses that right — removed from the album,
demoted, the album deleted, disabled by an admin, no longer allowed to see the study — and
the credential must stop working on every path that takes it (upload endpoint, nginx gate,
album DICOMweb, the plugin's ``/tokens/validate``), with a 401 that says why, an audit row,
and the album's token lists saying ``suspended`` with the reason.

The world is tests/functional/test_attacks.py's (album A: olga owner, mona manager, cody
contributor, vera viewer; album B: bob), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from authsvc import albums
from authsvc.extensions import db
from authsvc.models import AuditEvent
from tests.functional.test_attacks import ADMIN
from tests.functional.test_attacks import BOB
from tests.functional.test_attacks import World
from tests.functional.test_attacks import _world
from tests.functional.test_attacks import bearer
from tests.functional.test_attacks import sub

pytestmark = pytest.mark.functional

ADMIN_HEADERS = bearer("root", realm_roles=("admin",))


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO
) -> Iterator[World]:
    yield from _world(request, tmp_path, log_stream, request.param)


def _make(w: World, who: str, kind: str) -> tuple[str, str]:
    """Have ``who`` make an upload or read token for album A; return (token, id)."""
    made = w.client.post(f"/api/albums/{w.album_a}/{kind}-tokens", json={}, headers=bearer(who))
    assert made.status_code == 201, made.get_json()
    return made.get_json()["token"], made.get_json()["id"]


def _member(w: World, who: str) -> int:
    return w.members_a[who]


def _refusals(w: World, kind: str) -> list[AuditEvent]:
    with w.app.app_context():
        return list(
            db.session.scalars(
                sa.select(AuditEvent).where(
                    AuditEvent.action == "credential:refused", AuditEvent.actor.like(f"{kind}:%")
                )
            )
        )


def _reads(w: World, token: str) -> dict[str, Any]:
    """What a read token gets on each read path (gate, album DICOMweb, plugin)."""
    return {
        "gate": w.gate("GET", f"/studies/{w.a.id}", {"token": token}).status_code,
        "qido": w.client.get(
            f"/dicom-web/albums/{w.album_a}/studies", headers={"Authorization": f"Bearer {token}"}
        ).status_code,
        "plugin": w.validate(token, w.a, labels=sorted(w.a.labels)),
    }


def test_lifecycle_removed_members_upload_token_stops_uploading(world: World) -> None:
    token, token_id = _make(world, "cody", "upload")
    assert world.upload(world.album_a, {"Authorization": f"Bearer {token}"}).status_code == 200
    removed = world.client.delete(
        f"/api/albums/{world.album_a}/members/{_member(world, 'cody')}", headers=bearer("olga")
    )
    assert removed.status_code in (200, 204)
    posted = world.orthanc.posted_instances()

    answer = world.upload(world.album_a, {"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    body = answer.get_json()
    assert body["error"] == "credential-suspended"
    assert "no longer a contributor" in body["message"] and token not in body["message"]
    stow = world.upload(world.album_a, {"Authorization": f"Bearer {token}"}, stow=True)
    assert stow.status_code == 401
    assert world.orthanc.posted_instances() == posted  # not a byte reached Orthanc
    assert _refusals(world, "upload-token")
    # The album's managers see why the token stopped.
    listed = world.client.get(
        f"/api/albums/{world.album_a}/upload-tokens", headers=bearer("olga")
    ).get_json()["items"]
    (item,) = [i for i in listed if i["id"] == token_id]
    assert item["state"] == "suspended" and "contributor" in item["reason"]


def test_lifecycle_demoted_contributor_upload_token_stops_and_comes_back(world: World) -> None:
    token, _ = _make(world, "cody", "upload")
    demote = world.client.patch(
        f"/api/albums/{world.album_a}/members/{_member(world, 'cody')}",
        json={"role": "viewer"},
        headers=bearer("olga"),
    )
    assert demote.status_code == 200, demote.get_json()
    assert world.upload(world.album_a, {"Authorization": f"Bearer {token}"}).status_code == 401
    # Promoted again: the token (never revoked) stands on the maker's rights again.
    world.client.patch(
        f"/api/albums/{world.album_a}/members/{_member(world, 'cody')}",
        json={"role": "contributor"},
        headers=bearer("olga"),
    )
    assert world.upload(world.album_a, {"Authorization": f"Bearer {token}"}).status_code == 200


def test_lifecycle_demoted_managers_read_token_stops_reading(world: World) -> None:
    token, token_id = _make(world, "mona", "read")
    before = _reads(world, token)
    # The fake Orthanc has no DICOMweb plugin: an accepted token gets its 404 from upstream.
    assert before["gate"] == 200 and before["qido"] != 401 and before["plugin"] is True
    demote = world.client.patch(
        f"/api/albums/{world.album_a}/members/{_member(world, 'mona')}",
        json={"role": "contributor"},
        headers=bearer("olga"),
    )
    assert demote.status_code == 200, demote.get_json()

    assert _reads(world, token) == {"gate": 401, "qido": 401, "plugin": False}
    qido = world.client.get(
        f"/dicom-web/albums/{world.album_a}/studies", headers={"Authorization": f"Bearer {token}"}
    )
    assert qido.get_json()["error"] == "credential-suspended"
    assert "no longer a manager" in qido.get_json()["message"]
    assert _refusals(world, "album-read-token")
    listed = world.client.get(
        f"/api/albums/{world.album_a}/read-tokens", headers=bearer("olga")
    ).get_json()["items"]
    (item,) = [i for i in listed if i["id"] == token_id]
    assert item["state"] == "suspended" and "manager" in item["reason"]


def test_lifecycle_removed_managers_read_token_stops_reading(world: World) -> None:
    token, _ = _make(world, "mona", "read")
    with world.app.app_context():
        member = albums.list_members(ADMIN, world.album_a).items
        mona = next(m for m in member if m.principal == sub("mona"))
        albums.remove_member(ADMIN, world.album_a, mona.id)
    assert _reads(world, token) == {"gate": 401, "qido": 401, "plugin": False}


def test_lifecycle_deleted_album_ends_its_tokens(world: World) -> None:
    upload, read = world.tokens["upload-a"], world.tokens["read-a"]
    assert world.upload(world.album_a, {"Authorization": f"Bearer {upload}"}).status_code == 200
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": read}).status_code == 200
    deleted = world.client.delete(f"/api/albums/{world.album_a}", headers=bearer("olga"))
    assert deleted.status_code in (200, 204)
    assert world.upload(world.album_a, {"Authorization": f"Bearer {upload}"}).status_code in (
        401,
        404,
    )
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": read}).status_code == 401
    assert world.validate(read, world.a, labels=sorted(world.a.labels)) is False


def test_lifecycle_disabled_owners_api_key_stops(world: World) -> None:
    key = world.tokens["api-key"]
    assert world.gate("GET", f"/studies/{world.b.id}", {"api-key": key}).status_code == 200
    disabled = world.client.post(f"/api/users/{sub(BOB)}/disable", headers=ADMIN_HEADERS)
    assert disabled.status_code == 200, disabled.get_json()
    assert disabled.get_json()["disabled"] is True

    assert world.gate("GET", f"/studies/{world.b.id}", {"api-key": key}).status_code == 401
    answer = world.client.get("/api/albums", headers={"api-key": key})
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "credential-suspended"
    assert key not in answer.get_data(as_text=True)
    listed = world.client.get("/api/api-keys?all=true", headers=ADMIN_HEADERS).get_json()
    (item,) = [i for i in listed["items"] if i["id"] == world.token_ids["api-key"]]
    assert item["status"] == "suspended" and item["reason"] == "its owner is disabled"
    # Everything bob made stops too: his upload and read tokens for album B.
    upload = world.tokens["upload"]
    assert world.upload(world.album_b, {"Authorization": f"Bearer {upload}"}).status_code == 401
    read = world.tokens["read"]
    assert world.gate("GET", f"/studies/{world.b.id}", {"token": read}).status_code == 401
    with world.app.app_context():
        events = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "user:disable")
        ).all()
        assert [e.subject for e in events] == [f"user:{sub(BOB)}"]
    # Enabled again: the key works again.
    enabled = world.client.post(f"/api/users/{sub(BOB)}/enable", headers=ADMIN_HEADERS)
    assert enabled.status_code == 200 and enabled.get_json()["disabled"] is False
    assert world.gate("GET", f"/studies/{world.b.id}", {"api-key": key}).status_code == 200


def test_lifecycle_disabled_persons_own_keycloak_token_stops(world: World) -> None:
    """Disabling a person here stops them too, not only what they made: Keycloak keeps signing
    their tokens until someone disables them there as well."""
    jwt = {"Authorization": f"Bearer {world.tokens['jwt']}"}
    assert world.client.get("/api/albums", headers=jwt).status_code == 200
    assert world.gate("GET", f"/studies/{world.b.id}", jwt).status_code == 200
    assert (
        world.client.post(f"/api/users/{sub(BOB)}/disable", headers=ADMIN_HEADERS).status_code
        == 200
    )

    answer = world.client.get("/api/albums", headers=jwt)
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "credential-suspended"
    assert world.gate("GET", f"/studies/{world.b.id}", jwt).status_code == 401
    assert (
        world.gate("GET", f"/studies/{world.b.id}", {"token": world.tokens["jwt"]}).status_code
        == 401
    )
    profile = world.plugin().post(
        "/user/get-profile", {"token-key": "Authorization", "token-value": jwt["Authorization"]}
    )
    assert profile.status_code in (200, 401)
    if profile.status_code == 200:
        assert profile.get_json().get("permissions", []) == []
        assert profile.get_json().get("authorized-labels", []) == []
    # Other people are untouched, and enabling gives bob his access back.
    assert world.client.get("/api/albums", headers=bearer("olga")).status_code == 200
    assert (
        world.client.post(f"/api/users/{sub(BOB)}/enable", headers=ADMIN_HEADERS).status_code == 200
    )
    assert world.client.get("/api/albums", headers=jwt).status_code == 200


def test_lifecycle_only_admins_disable_people(world: World) -> None:
    for headers in (bearer("olga"), {"api-key": world.tokens["api-key"]}):
        answer = world.client.post(f"/api/users/{sub('cody')}/disable", headers=headers)
        assert answer.status_code == 403
    assert world.client.post(f"/api/users/{sub('cody')}/disable").status_code == 401
    assert world.client.post("/api/users/root-sub/disable", headers=ADMIN_HEADERS).status_code in (
        200,
        409,
    )


def test_lifecycle_share_link_stops_when_its_maker_loses_the_study(world: World) -> None:
    # vera (viewer of album A) makes an instant link to study a, which she sees through A.
    body = {
        "ID": "",
        "Resources": [{"OrthancId": world.a.id, "DicomUid": world.a.uid, "Level": "study"}],
        "Type": "viewer-instant-link",
        "ExpirationDate": "",
        "ValidityDuration": 3600,
    }
    made = world.client.put(
        "/api/orthanc/auth/tokens/viewer-instant-link", json=body, headers=bearer("vera")
    )
    assert made.status_code == 200, made.get_json()
    link = made.get_json()["Token"]
    labels = sorted(world.a.labels)
    assert world.validate(link, world.a, labels=labels) is True
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": link}).status_code == 200

    with world.app.app_context():
        albums.remove_member(ADMIN, world.album_a, _member(world, "vera"))
    assert world.validate(link, world.a, labels=labels) is False
    assert world.gate("GET", f"/studies/{world.a.id}", {"token": link}).status_code in (401, 403)
    assert _refusals(world, "share-link")
