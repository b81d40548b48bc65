"""authsvc behind the REAL Orthanc authorization plugin: every promise checked through Orthanc.

One stack for the module (tests/integration/plugin_stack.py): private PostgreSQL, a private
IdP, authsvc under gunicorn (2 workers, service key), Orthanc with the real plugin asking
authsvc, nginx from nginx/plugin.conf.template in front. Requests go to Orthanc's own port
(the plugin decides) or through nginx where the promise is nginx's (upload-token STOW, share
links made for the user). Caches are the plugin's: ``validity`` is 2 s here, "has permission"
10 s, so waits are polling loops bounded by those, never timed assertions.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import requests

from tests import processes
from tests.dicom_factory import make_study
from tests.integration import plugin_stack
from tests.integration.plugin_stack import PluginStack
from tests.integration.plugin_stack import Study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginStack]:
    """The module's one running stack."""
    with plugin_stack.running_stack(tmp_path_factory.mktemp("real-plugin")) as running:
        yield running


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _find_studies(stack: PluginStack, headers: dict[str, str]) -> Any:
    return stack.orthanc_call("POST", "/tools/find", headers, json={"Level": "Study", "Query": {}})


# ------------------------------------------------------------------ 1. users, labels, headers


@pytest.mark.parametrize("style", ["token-header", "bearer"])
def test_user_sees_only_studies_of_her_labels(stack: PluginStack, style: str) -> None:
    token = stack.jwt("alice")
    headers = {"token": token} if style == "token-header" else _bearer(token)
    s = stack.studies
    for name in ("cardio", "xray"):  # doctor -> cardio; group /radiology -> xray
        answer = stack.orthanc_call("GET", f"/studies/{s[name].orthanc_id}", headers)
        assert answer.status_code == 200, (name, answer.text)
    for name in ("neuro", "unlabelled"):
        answer = stack.orthanc_call("GET", f"/studies/{s[name].orthanc_id}", headers)
        assert answer.status_code == 403, name
    # Lists are for users who see every label; the others search, filtered by their labels.
    assert stack.orthanc_call("GET", "/studies", headers).status_code == 403
    found = _find_studies(stack, headers)
    assert found.status_code == 200, found.text
    ids = set(found.json())
    assert {s["cardio"].orthanc_id, s["xray"].orthanc_id} <= ids
    assert not {s["neuro"].orthanc_id, s["unlabelled"].orthanc_id} & ids


@pytest.mark.parametrize("style", ["token-header", "bearer"])
def test_admin_sees_every_study(stack: PluginStack, style: str) -> None:
    token = stack.jwt("bob")
    headers = {"token": token} if style == "token-header" else _bearer(token)
    listed = stack.orthanc_call("GET", "/studies", headers)
    assert listed.status_code == 200, listed.text
    seeded = {study.orthanc_id for study in stack.studies.values()}
    assert seeded <= set(listed.json())
    assert seeded <= set(_find_studies(stack, headers).json())
    for study in stack.studies.values():
        assert stack.orthanc_call("GET", f"/studies/{study.orthanc_id}", headers).ok


def test_user_without_roles_sees_nothing(stack: PluginStack) -> None:
    headers = {"token": stack.jwt("carol")}
    for study in stack.studies.values():
        answer = stack.orthanc_call("GET", f"/studies/{study.orthanc_id}", headers)
        assert answer.status_code == 403
    assert stack.orthanc_call("GET", "/studies", headers).status_code == 403
    assert _find_studies(stack, headers).status_code == 403


def test_user_reads_her_study_through_nginx(stack: PluginStack) -> None:
    headers = {"token": stack.jwt("alice")}
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    assert stack.nginx_call("GET", f"/orthanc/studies/{cardio.orthanc_id}", headers).ok
    answer = stack.nginx_call("GET", f"/orthanc/studies/{neuro.orthanc_id}", headers)
    assert answer.status_code == 403


# ------------------------------------------------------------------ 2. role permissions


def test_role_permissions_are_enforced(stack: PluginStack) -> None:
    """alice may view cardio studies (doctor) but holds no delete, edit-labels or upload."""
    trash = stack.store("cardio", description="to be deleted")
    alice = {"token": stack.jwt("alice")}
    path = f"/studies/{trash.orthanc_id}"
    assert stack.orthanc_call("GET", path, alice).status_code == 200
    assert stack.orthanc_call("GET", f"{path}/archive", alice).status_code == 200  # view is enough
    assert stack.orthanc_call("DELETE", path, alice).status_code == 403
    assert stack.orthanc_call("PUT", f"{path}/labels/neuro", alice, data=b"").status_code == 403
    blob = make_study(n_instances=1)[0]
    assert stack.orthanc_call("POST", "/instances", alice, data=blob).status_code == 403
    assert stack.orthanc_call("GET", "/auth/settings/roles", alice).status_code == 403
    # Still there, unchanged; the admin's "all" may delete it.
    assert stack.study_labels(trash.orthanc_id) == ["cardio"]
    assert stack.orthanc_call("DELETE", path, stack.admin()).status_code == 200
    assert stack.orthanc_call("GET", path, stack.admin()).status_code == 404


# ------------------------------------------------------------------ 3. share links

PUBLICATIONS = [
    "stone-viewer-publication",
    "ohif-viewer-publication",
    "osimis-viewer-publication",
    "volview-viewer-publication",
]
INSTANT_LINKS = ["viewer-instant-link", "download-instant-link"]
SHARE_TYPES = PUBLICATIONS + INSTANT_LINKS


def _share_body(study: Study, validity: int = 3600) -> dict[str, Any]:
    return {
        "Resources": [{"DicomUid": study.uid, "OrthancId": study.orthanc_id, "Level": "study"}],
        "ValidityDuration": validity,
    }


def _share_through_orthanc(
    stack: PluginStack, token_type: str, study: Study, validity: int = 3600
) -> dict[str, Any]:
    """Make a link with the plugin's own route on Orthanc's port, as alice (doctor)."""
    made = stack.orthanc_call(
        "PUT",
        f"/auth/tokens/{token_type}",
        {"token": stack.jwt("alice")},
        json=_share_body(study, validity),
    )
    assert made.status_code == 200, (token_type, made.status_code, made.text)
    answer: dict[str, Any] = made.json()
    assert answer["Token"].startswith("sh1."), answer
    return answer


def _decode(stack: PluginStack, token: str) -> dict[str, Any]:
    decoded = stack.orthanc_call(
        "POST", "/auth/tokens/decode", json={"TokenKey": "token", "TokenValue": token}
    )
    assert decoded.status_code == 200, decoded.text
    answer: dict[str, Any] = decoded.json()
    return answer


def _carriers(token: str) -> dict[str, tuple[str, dict[str, str]]]:
    """The three ways a viewer sends a share token: (query string, headers) per style."""
    return {
        "get-argument": (f"?token={token}", {}),
        "token-header": ("", {"token": token}),
        "bearer": ("", _bearer(token)),
    }


@pytest.mark.parametrize("token_type", SHARE_TYPES)
def test_share_link_opens_its_study_only_and_only_for_reading(
    stack: PluginStack, token_type: str
) -> None:
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    link = _share_through_orthanc(stack, token_type, cardio)
    token = link["Token"]
    if token_type in PUBLICATIONS:
        assert link["Url"].startswith(stack.nginx_url), link
        assert token in link["Url"] or token.replace(".", "%2E") in link["Url"]
    else:
        assert link["Url"] is None
    for style, (query, headers) in _carriers(token).items():
        own = stack.orthanc_call("GET", f"/studies/{cardio.orthanc_id}{query}", headers)
        assert own.status_code == 200, (style, own.text)
        other = stack.orthanc_call("GET", f"/studies/{neuro.orthanc_id}{query}", headers)
        assert other.status_code == 403, style
        # Read-only: no delete, no label write, on its own study.
        delete = stack.orthanc_call("DELETE", f"/studies/{cardio.orthanc_id}{query}", headers)
        assert delete.status_code == 403, style
        label = stack.orthanc_call(
            "PUT", f"/studies/{cardio.orthanc_id}/labels/neuro{query}", headers, data=b""
        )
        assert label.status_code == 403, style
    assert stack.study_labels(cardio.orthanc_id) == ["cardio"]

    decoded = _decode(stack, token)
    assert "ErrorCode" not in decoded, decoded
    assert decoded["TokenType"] == token_type
    assert decoded["ResourcesDicomIds"] == [cardio.uid]
    assert decoded["ResourcesOrthancIds"] == [cardio.orthanc_id]
    if token_type in PUBLICATIONS:
        assert decoded["RedirectUrl"].startswith(stack.nginx_url), decoded
    else:
        assert "RedirectUrl" not in decoded, decoded


@pytest.mark.parametrize("garbage", ["garbage", "sh1.AAAA.BBBB", "", "Bearer "])
def test_decode_of_garbage_is_an_error_code(stack: PluginStack, garbage: str) -> None:
    decoded = _decode(stack, garbage)
    assert decoded.get("ErrorCode") == "invalid", decoded
    assert decoded["ResourcesDicomIds"] == [] and decoded["ResourcesOrthancIds"] == []
    assert "RedirectUrl" not in decoded


def test_expired_share_link_decodes_as_expired_and_opens_nothing(stack: PluginStack) -> None:
    cardio = stack.studies["cardio"]
    token = _share_through_orthanc(stack, "stone-viewer-publication", cardio, validity=1)["Token"]
    plugin_stack.until(
        lambda: _decode(stack, token).get("ErrorCode") == "expired",
        1 + plugin_stack.SLACK,
        "share link expired",
    )
    decoded = _decode(stack, token)
    assert decoded["ResourcesDicomIds"] == [] and "RedirectUrl" not in decoded
    plugin_stack.until(
        lambda: (
            stack.orthanc_call("GET", f"/studies/{cardio.orthanc_id}", {"token": token}).status_code
            == 403
        ),
        plugin_stack.VALIDITY + plugin_stack.SLACK,
        "expired link refused",
    )


def test_share_link_needs_the_share_permission(stack: PluginStack) -> None:
    """carol (no roles) may not make a publication; alice (no modify) may, bob may."""
    cardio = stack.studies["cardio"]
    refused = stack.orthanc_call(
        "PUT",
        "/auth/tokens/stone-viewer-publication",
        {"token": stack.jwt("carol")},
        json=_share_body(cardio),
    )
    assert refused.status_code == 403
    for user in ("alice", "bob"):
        made = stack.orthanc_call(
            "PUT",
            "/auth/tokens/stone-viewer-publication",
            {"token": stack.jwt(user)},
            json=_share_body(cardio),
        )
        assert made.status_code == 200, (user, made.text)


# ------------------------------------------------------------------ 4. OHIF prior studies


def test_ohif_prior_study_search_returns_only_the_shared_study(stack: PluginStack) -> None:
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    assert cardio.patient_id == neuro.patient_id
    token = _share_through_orthanc(stack, "ohif-viewer-publication", cardio)["Token"]
    query = f"/dicom-web/studies?PatientID={cardio.patient_id}"
    accept = {"Accept": "application/dicom+json"}
    shared = stack.orthanc_call("GET", query, {**_bearer(token), **accept})
    assert shared.status_code == 200, shared.text
    assert [s["0020000D"]["Value"][0] for s in shared.json()] == [cardio.uid]
    # The same search as the admin finds both studies of the patient.
    everything = stack.orthanc_call("GET", query, {**stack.admin(), **accept})
    assert {s["0020000D"]["Value"][0] for s in everything.json()} == {cardio.uid, neuro.uid}


# ------------------------------------------------------------------ 5. API keys


def test_api_key_acts_as_its_owner_until_revoked(stack: PluginStack) -> None:
    alice = stack.jwt("alice")
    made = stack.api("POST", "/api/api-keys", alice, json={"name": "real plugin"})
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    headers = {"api-key": key}
    assert stack.orthanc_call("GET", f"/studies/{cardio.orthanc_id}", headers).status_code == 200
    assert stack.orthanc_call("GET", f"/studies/{neuro.orthanc_id}", headers).status_code == 403
    found = _find_studies(stack, headers)
    assert found.status_code == 200 and neuro.orthanc_id not in found.json()

    revoked = stack.api("DELETE", f"/api/api-keys/{key_id}", alice)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    plugin_stack.until(
        lambda: (
            stack.orthanc_call("GET", f"/studies/{cardio.orthanc_id}", headers).status_code == 403
        ),
        plugin_stack.VALIDITY
        + plugin_stack.API_KEY_CACHE
        + plugin_stack.PERMISSION_CACHE
        + plugin_stack.SLACK,
        "revoked API key refused",
    )
    assert _find_studies(stack, headers).status_code == 403


# ------------------------------------------------------------------ 6. album members

#: A membership change reaches the plugin within its validity, after authsvc's own caches
#: (roles/profile: min(5 s, validity/2) twice over) and the plugin's 10 s permission cache.
MEMBERSHIP_BOUND = plugin_stack.VALIDITY + 5 + plugin_stack.PERMISSION_CACHE + plugin_stack.SLACK


def _new_album(stack: PluginStack, bob: str, name: str) -> dict[str, Any]:
    made = stack.api("POST", "/api/albums", bob, json={"name": name})
    assert made.status_code == 201, made.text
    album: dict[str, Any] = made.json()
    return album


def test_album_viewer_reads_its_study_through_orthanc_until_removed(stack: PluginStack) -> None:
    bob = stack.jwt("bob")
    study = stack.store(None, description="album study")
    album = _new_album(stack, bob, "Real plugin album")
    added = stack.api(
        "POST", f"/api/albums/{album['id']}/studies", bob, json={"studies": [study.orthanc_id]}
    )
    assert added.status_code in (200, 201), added.text
    # authsvc wrote the label itself, through the plugin, with its service key.
    assert album["orthanc_label"] in stack.study_labels(study.orthanc_id)

    carol_token = stack.jwt("carol")
    invited = stack.api(
        "POST",
        f"/api/albums/{album['id']}/members",
        bob,
        json={"kind": "user", "principal": stack.subject(carol_token), "role": "viewer"},
    )
    assert invited.status_code == 201, invited.text
    carol = {"token": carol_token}
    path = f"/studies/{study.orthanc_id}"
    plugin_stack.until(
        lambda: stack.orthanc_call("GET", path, carol).status_code == 200,
        MEMBERSHIP_BOUND,
        "album viewer reads",
    )
    # Only the album's study: nothing else appears.
    for other in stack.studies.values():
        answer = stack.orthanc_call("GET", f"/studies/{other.orthanc_id}", carol)
        assert answer.status_code == 403
    assert _find_studies(stack, carol).json() == [study.orthanc_id]
    # Reading only: the album's viewer cannot delete or relabel.
    assert stack.orthanc_call("DELETE", path, carol).status_code == 403

    removed = stack.api("DELETE", f"/api/albums/{album['id']}/members/{invited.json()['id']}", bob)
    assert removed.status_code == 204, removed.text
    plugin_stack.until(
        lambda: stack.orthanc_call("GET", path, carol).status_code == 403,
        MEMBERSHIP_BOUND,
        "removed member refused",
    )


# ------------------------------------------------------------------ 7. upload tokens


def _upload_token(stack: PluginStack, bob: str, album: dict[str, Any]) -> str:
    made = stack.api("POST", f"/api/albums/{album['id']}/upload-tokens", bob, json={})
    assert made.status_code == 201, made.text
    token = str(made.json()["token"])
    assert token.startswith("up1.")
    return token


@pytest.mark.parametrize("carrier", ["bearer", "token-header"])
def test_upload_token_stow_through_nginx_lands_in_the_album(
    stack: PluginStack, carrier: str
) -> None:
    bob = stack.jwt("bob")
    album = _new_album(stack, bob, f"Uploads {carrier}")
    token = _upload_token(stack, bob, album)
    instances = make_study(n_series=1, n_instances=2, study_description="uploaded")
    uid = pydicom.dcmread(io.BytesIO(instances[0])).StudyInstanceUID
    credential = _bearer(token) if carrier == "bearer" else {"token": token}
    stored = stack.nginx_call(
        "POST",
        "/orthanc/dicom-web/studies",
        {**credential, "Content-Type": plugin_stack.STOW_TYPE, "Accept": "application/dicom+json"},
        data=plugin_stack.stow_body(instances),
    )
    assert stored.status_code == 200, stored.text
    assert stored.headers["Content-Type"].startswith("application/dicom+json")
    referenced = stored.json()["00081199"]["Value"]
    assert len(referenced) == 2
    assert "00081198" not in stored.json()  # no FailedSOPSequence

    ids = stack.find_uid(uid)
    assert len(ids) == 1, ids
    assert album["orthanc_label"] in stack.study_labels(ids[0])
    # The token uploads, it never reads: not through nginx, not on Orthanc's port.
    assert stack.nginx_call("GET", "/orthanc/studies", credential).status_code == 403
    assert stack.nginx_call("GET", f"/orthanc/studies/{ids[0]}", credential).status_code == 403
    assert stack.orthanc_call("GET", f"/studies/{ids[0]}", credential).status_code == 403


def test_upload_token_straight_to_orthanc_is_refused_and_stores_nothing(
    stack: PluginStack,
) -> None:
    bob = stack.jwt("bob")
    album = _new_album(stack, bob, "Uploads bypassing nginx")
    token = _upload_token(stack, bob, album)
    instances = make_study(n_series=1, n_instances=1, study_description="must not be stored")
    uid = pydicom.dcmread(io.BytesIO(instances[0])).StudyInstanceUID
    for credential in (_bearer(token), {"token": token}, {"api-key": token}):
        refused = stack.orthanc_call(
            "POST",
            "/dicom-web/studies",
            {**credential, "Content-Type": plugin_stack.STOW_TYPE},
            data=plugin_stack.stow_body(instances),
        )
        assert refused.status_code == 403, refused.text
        refused = stack.orthanc_call("POST", "/instances", credential, data=instances[0])
        assert refused.status_code == 403, refused.text
    assert stack.find_uid(uid) == []


def test_demoted_managers_read_token_stops_through_orthanc(stack: PluginStack) -> None:
    """Credentials follow their maker's rights: the plugin's /tokens/validate refuses it."""
    bob = stack.jwt("bob")
    study = stack.store(None, description="read token study")
    album = _new_album(stack, bob, "Read token maker")
    added = stack.api(
        "POST", f"/api/albums/{album['id']}/studies", bob, json={"studies": [study.orthanc_id]}
    )
    assert added.status_code in (200, 201), added.text
    carol = stack.jwt("carol")
    invited = stack.api(
        "POST",
        f"/api/albums/{album['id']}/members",
        bob,
        json={"kind": "user", "principal": stack.subject(carol), "role": "manager"},
    )
    assert invited.status_code == 201, invited.text
    made = stack.api("POST", f"/api/albums/{album['id']}/read-tokens", carol, json={})
    assert made.status_code == 201, made.text
    holder = {"token": made.json()["token"]}
    path = f"/studies/{study.orthanc_id}"
    plugin_stack.until(
        lambda: stack.orthanc_call("GET", path, holder).status_code == 200,
        MEMBERSHIP_BOUND,
        "read token reads",
    )
    demoted = stack.api(
        "PATCH",
        f"/api/albums/{album['id']}/members/{invited.json()['id']}",
        bob,
        json={"role": "viewer"},
    )
    assert demoted.status_code == 200, demoted.text
    plugin_stack.until(
        lambda: stack.orthanc_call("GET", path, holder).status_code == 403,
        MEMBERSHIP_BOUND,
        "the demoted manager's read token refused",
    )
    listed = stack.api("GET", f"/api/albums/{album['id']}/read-tokens", bob)
    (item,) = listed.json()["items"]
    assert item["state"] == "suspended" and "manager" in item["reason"]


# ------------------------------------------------------------------ 8. revoked share links


#: A revoked share link is refused by every authsvc worker within 1 s
#: (authsvc/credentials/share_link_records.py re-reads
#: a link in force after a second), and by Orthanc once the plugin's cache (validity) is over.
SHARE_REVOCATION_BOUND = plugin_stack.VALIDITY + 1 + plugin_stack.SLACK


def _share_ids(stack: PluginStack, token: str, everyone: bool = False) -> dict[str, Any]:
    listed = stack.api("GET", "/api/share-tokens" + ("?all=true" if everyone else ""), token)
    assert listed.status_code == 200, listed.text
    return {item["id"]: item for item in listed.json()["items"]}


def test_share_link_revoked_by_the_admin_is_refused(stack: PluginStack) -> None:
    bob = stack.jwt("bob")
    xray = stack.studies["xray"]
    before = _share_ids(stack, bob, everyone=True)
    link = _share_through_orthanc(stack, "stone-viewer-publication", xray)["Token"]
    new = {k: v for k, v in _share_ids(stack, bob, everyone=True).items() if k not in before}
    assert len(new) == 1, new
    ((token_id, row),) = new.items()
    assert row["created_by"] == "plugin" and row["status"] == "active"
    path = f"/studies/{xray.orthanc_id}"
    assert stack.orthanc_call("GET", path, {"token": link}).status_code == 200

    revoked = stack.api("DELETE", f"/api/share-tokens/{token_id}", bob)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    plugin_stack.until(
        lambda: stack.orthanc_call("GET", path, {"token": link}).status_code == 403,
        SHARE_REVOCATION_BOUND,
        "revoked share link refused",
    )
    assert stack.orthanc_call("GET", f"{path}?token={link}").status_code == 403
    assert _decode(stack, link).get("ErrorCode") == "invalid"


# ------------------------------------------------------------------ 9. share links via nginx


def test_share_link_made_through_nginx_belongs_to_its_maker(stack: PluginStack) -> None:
    alice = stack.jwt("alice")
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    before = _share_ids(stack, alice)
    made = stack.nginx_call(
        "PUT",
        "/orthanc/auth/tokens/stone-viewer-publication",
        {"token": alice},
        json=_share_body(cardio),
    )
    assert made.status_code == 200, made.text
    link = made.json()["Token"]
    assert made.json()["Url"].startswith(f"{stack.nginx_url}/orthanc/stone-webviewer/")
    mine = {k: v for k, v in _share_ids(stack, alice).items() if k not in before}
    assert len(mine) == 1, mine
    ((token_id, row),) = mine.items()
    assert row["created_by"] == f"user:{stack.subject(alice)}"
    assert row["type"] == "stone-viewer-publication"
    # Links made through the plugin's own route are not hers (they belong to "plugin").
    assert all(item["created_by"] != "plugin" for item in _share_ids(stack, alice).values())

    path = f"/studies/{cardio.orthanc_id}"
    for door in (stack.orthanc_call, lambda m, p, h: stack.nginx_call(m, f"/orthanc{p}", h)):
        assert door("GET", path, {"token": link}).status_code == 200
    # Only studies she can see: no link for a study outside her labels.
    refused = stack.nginx_call(
        "PUT",
        "/orthanc/auth/tokens/stone-viewer-publication",
        {"token": alice},
        json=_share_body(neuro),
    )
    assert refused.status_code == 403, refused.text

    revoked = stack.api("DELETE", f"/api/share-tokens/{token_id}", alice)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    plugin_stack.until(
        lambda: stack.orthanc_call("GET", path, {"token": link}).status_code == 403,
        SHARE_REVOCATION_BOUND,
        "link revoked by its maker refused",
    )


# ------------------------------------------------------------------ 10. roles read-after-write

ROUNDS = 12


def _roles_rounds(stack: PluginStack, orthanc_call: Any) -> None:
    """PUT then GET the roles through Orthanc's /auth/settings/roles, ROUNDS times."""
    bob = {"token": stack.jwt("bob")}
    first = orthanc_call("GET", "/auth/settings/roles", bob)
    assert first.status_code == 200, first.text
    original = first.json()
    assert "doctor" in original["roles"], original
    try:
        for i in range(ROUNDS):
            wanted = json.loads(json.dumps(original))
            wanted["roles"]["rw-probe"] = {
                "permissions": ["view"],
                "authorized-labels": [f"round-{i}"],
            }
            put = orthanc_call("PUT", "/auth/settings/roles", bob, json=wanted)
            assert put.status_code == 200, (i, put.status_code, put.text)
            # Two reads per write: with a round-robin upstream, writes and reads then land on
            # every instance in turn instead of always the same pairing.
            for _ in range(2):
                got = orthanc_call("GET", "/auth/settings/roles", bob)
                assert got.status_code == 200, (i, got.text)
                assert got.json() == wanted, i
    finally:
        restored = orthanc_call("PUT", "/auth/settings/roles", bob, json=original)
        assert restored.status_code == 200, restored.text
    assert orthanc_call("GET", "/auth/settings/roles", bob).json() == original


def test_roles_read_after_write_through_orthanc_with_two_workers(stack: PluginStack) -> None:
    assert stack.authsvc_env["AUTHSVC_WORKERS"] == "2"
    _roles_rounds(stack, stack.orthanc_call)
    # Not for users without admin-permissions.
    assert (
        stack.orthanc_call("GET", "/auth/settings/roles", {"token": stack.jwt("alice")}).status_code
        == 403
    )


def _roles_calls(service: Any) -> tuple[int, int]:
    """Return how many (PUT, GET) /settings/roles an authsvc instance logged."""
    log = service.log_path.read_text(errors="replace")
    return log.count('"PUT /settings/roles"'), log.count('"GET /settings/roles"')


def test_roles_read_after_write_through_two_instances_round_robin(stack: PluginStack) -> None:
    """A second authsvc on the same PostgreSQL; an Orthanc whose plugin asks both in turn."""
    state = stack.state / "round-robin"
    second = plugin_stack.start_authsvc(state, processes.free_port(), stack.authsvc_env)
    balancer = orthanc = None
    try:
        balancer = plugin_stack.start_round_robin(
            state / "nginx", processes.free_port(), [stack.authsvc.port, second.port]
        )
        orthanc = plugin_stack.start_plugin_orthanc(
            state / "orthanc", processes.free_port(), f"{balancer.url}/"
        )
        before = (_roles_calls(stack.authsvc), _roles_calls(second))

        def call(method: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
            return requests.request(
                method, f"{orthanc.url}{path}", headers=headers, timeout=30, **kwargs
            )

        _roles_rounds(stack, call)
        after = (_roles_calls(stack.authsvc), _roles_calls(second))
        # Both instances took writes and reads: reads really followed writes made elsewhere.
        for instance in range(2):
            for method in range(2):
                assert after[instance][method] > before[instance][method], (before, after)
    finally:
        for service in (orthanc, balancer, second):
            if service is not None:
                service.stop()


# ------------------------------------------------------------------ 11. bad tokens, authsvc down


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forgeries(token: str) -> dict[str, str]:
    """Ways to forge an admin's token: each must be worth nothing."""
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    bad_signature = signature[:middle] + flipped + signature[middle + 1 :]
    claims = plugin_stack.jwt_claims(token)
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    tampered = _b64(json.dumps({**claims, "sub": "someone-else"}).encode())
    return {
        "flipped-signature": f"{header}.{payload}.{bad_signature}",
        "alg-none": f"{none_header}.{payload}.",
        "alg-none-no-dot": f"{none_header}.{payload}",
        "tampered-payload": f"{header}.{tampered}.{signature}",
        "no-signature": f"{header}.{payload}.",
        "garbage": "garbage",
        "empty": "",
    }


def _refused_everywhere(stack: PluginStack, token: str, what: str) -> None:
    cardio = stack.studies["cardio"]
    for style, headers in {
        "token-header": {"token": token},
        "bearer": {"Authorization": f"Bearer {token}"},
        "api-key": {"api-key": token},
    }.items():
        for method, path in (("GET", f"/studies/{cardio.orthanc_id}"), ("GET", "/studies")):
            answer = stack.orthanc_call(method, path, headers)
            assert answer.status_code == 403, (what, style, path, answer.status_code)
        assert _find_studies(stack, headers).status_code == 403, (what, style)
    answer = stack.orthanc_call("GET", f"/studies/{cardio.orthanc_id}?token={token}")
    assert answer.status_code == 403, (what, "get-argument")


def test_forged_garbage_and_empty_tokens_are_refused(stack: PluginStack) -> None:
    bob = stack.jwt("bob")
    assert stack.orthanc_call("GET", "/studies", {"token": bob}).status_code == 200
    for what, forged in _forgeries(bob).items():
        _refused_everywhere(stack, forged, what)


def test_token_of_another_client_of_the_realm_is_refused(stack: PluginStack) -> None:
    """Keycloak puts `account` into every client's tokens: carol's token for the hospital's
    portal (another client of the realm) must open nothing, while her viewer's token is hers.
    (carol holds no client role of authsvc; a user who does gets `authsvc` into `aud` from
    Keycloak itself unless the other client's "Full scope allowed" is off: docs/deploy.md.)"""
    portal = str(stack.idp.password_token("carol", client_id="hospital-portal")["access_token"])
    claims = plugin_stack.jwt_claims(portal)
    assert claims["aud"] in ("account", ["account"]), claims
    assert claims["azp"] == "hospital-portal", claims
    answer = stack.api("GET", "/api/albums", portal)
    assert answer.status_code == 401 and "audience" in answer.text
    _refused_everywhere(stack, portal, "another client's token")
    viewer = str(stack.idp.password_token("carol", client_id="orthanc-ui")["access_token"])
    assert stack.api("GET", "/api/albums", viewer).status_code == 200


def test_expired_token_is_refused(stack: PluginStack) -> None:
    with plugin_stack.idp_token_lifetime(stack.idp, 1):
        token = stack.jwt("bob")
    expires = float(plugin_stack.jwt_claims(token)["exp"])
    plugin_stack.until(lambda: time.time() > expires + 1, 5 + plugin_stack.SLACK, "token expiry")
    # authsvc's own API says why: expired (leeway 0 in this stack).
    assert stack.api("GET", "/api/albums", token).status_code == 401
    _refused_everywhere(stack, token, "expired")


def _restart_behind_orthanc(stack: PluginStack) -> None:
    """Start authsvc while the plugin's Orthanc is down, then Orthanc (see plugin_stack)."""
    stack.orthanc.stop()
    stack.authsvc.start()
    stack.orthanc.start()


def _readable(stack: PluginStack, path: str, headers: dict[str, str]) -> bool:
    return bool(stack.orthanc_call("GET", path, headers).status_code == 200)


def test_authsvc_down_is_refused_and_access_comes_back(stack: PluginStack) -> None:
    path = f"/studies/{stack.studies['cardio'].orthanc_id}"
    warm = {"token": stack.jwt("alice")}
    assert _readable(stack, path, warm)
    stack.authsvc.stop()
    try:
        cold = {"token": stack.jwt("alice")}  # never seen by the plugin
        assert stack.orthanc_call("GET", path, cold).status_code == 403
        assert stack.orthanc_call("GET", "/studies", stack.admin()).status_code == 403
        # A profile the plugin cached before expires with its validity.
        plugin_stack.until(
            lambda: stack.orthanc_call("GET", path, warm).status_code == 403,
            plugin_stack.VALIDITY + plugin_stack.PERMISSION_CACHE + plugin_stack.SLACK,
            "cached profile refused once authsvc is down",
        )
    finally:
        _restart_behind_orthanc(stack)
    plugin_stack.until(
        lambda: _readable(stack, path, {"token": stack.jwt("alice")}),
        plugin_stack.VALIDITY + plugin_stack.SLACK,
        "access back after the restart",
    )
    assert _readable(stack, path, warm)


def test_authsvc_restarts_while_the_plugin_orthanc_runs(stack: PluginStack) -> None:
    """A crash or a deploy restarts authsvc with its Orthanc up: it must come back.

    authsvc's start-up label-write probe goes through this Orthanc, whose plugin asks this
    very authsvc for the service key's profile: the probe must wait until authsvc answers.
    """
    path = f"/studies/{stack.studies['cardio'].orthanc_id}"
    stack.authsvc.stop()
    problem = ""
    try:
        stack.authsvc.start()
    except processes.ServiceError as exc:
        problem = str(exc)
        _restart_behind_orthanc(stack)  # the other tests need the stack back
    assert not problem, f"authsvc did not restart next to the running plugin Orthanc: {problem}"
    plugin_stack.until(
        lambda: _readable(stack, path, {"token": stack.jwt("alice")}),
        plugin_stack.VALIDITY + plugin_stack.SLACK,
        "access back after the restart",
    )


# ------------------------------------------------------------------ 12. start-up check


def test_startup_without_the_service_key_exits_3_naming_it(stack: PluginStack) -> None:
    env = {
        **stack.authsvc_env,
        "AUTHSVC_DATA_DIR": str(stack.state / "no-key-data"),
        "AUTHSVC_BIND": f"127.0.0.1:{processes.free_port()}",
    }
    del env["AUTHSVC_ORTHANC_SERVICE_KEY"]
    result = subprocess.run(
        plugin_stack.gunicorn_argv(),
        env=plugin_stack.child_environment(env),
        cwd=processes.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert "AUTHSVC_ORTHANC_SERVICE_KEY" in result.stderr, result.stderr[-2000:]
    assert "HTTP 403" in result.stderr or "HTTP 401" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
