"""Share links made for the signed-in user: Orthanc's ``PUT /auth/tokens/<type>``, answered by
authsvc (nginx routes OE2's request there, see nginx/plugin.conf.template).

Through the plugin, authsvc never learns who asked for a link (the plugin sends no identity),
so the link's maker could not list or revoke it. Here the caller's own credentials come with
the request: the link is theirs, with the plugin's permission per type, and only for studies
they can see. Orthanc is faked (tests/fake_orthanc.py); tests/integration runs the real nginx.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
from flask import Flask
from flask.testing import FlaskClient

from authsvc.credentials.sealing import generate_key
from authsvc.extensions import db
from tests.conftest import api_key_row
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc
from tests.plugin_client import PluginClient

pytestmark = pytest.mark.functional

ROLES = """{"roles": {
  "sharer": {"permissions": ["view", "share", "download"], "authorized-labels": ["cardio"]},
  "reader": {"permissions": ["view"], "authorized-labels": ["cardio"]},
  "chief": {"permissions": ["all"], "authorized-labels": ["*"]}
}}"""
A_UID, B_UID = "1.2.3.100", "1.2.3.200"
ROUTE = "/api/orthanc/auth/tokens/"


@pytest.fixture
def extra_config(tmp_path: Path) -> dict[str, Any]:
    roles = tmp_path / "roles.json"
    roles.write_text(ROLES)
    return {
        "roles_file": str(roles),
        "orthanc_url": URL,
        "orthanc_retries": 0,
        "share_token_keys": generate_key("s1"),
        "public_orthanc_root": "https://pacs.test/orthanc/",
        "plugin_username": "share-user",
        "plugin_password": "change-me",
    }


@dataclasses.dataclass
class World:
    app: Flask
    client: FlaskClient
    orthanc: FakeOrthanc
    keys: dict[str, str]
    a_id: str
    b_id: str

    @property
    def uids(self) -> dict[str, str]:
        return {self.a_id: A_UID, self.b_id: B_UID}

    def create(self, who: str, token_type: str, study: str, **headers: str) -> Any:
        body = {
            "ID": "",
            "Resources": [
                {"OrthancId": study, "DicomUid": self.uids.get(study, ""), "Level": "study"}
            ],
            "Type": token_type,
            "ExpirationDate": "",
            "ValidityDuration": 3600,
        }
        auth = headers or {"token": self.keys[who]}
        return self.client.put(ROUTE + token_type, json=body, headers=auth)


@pytest.fixture
def world(db_app: Flask) -> Iterator[World]:
    keys = {}
    with db_app.app_context():
        for who in ("sam", "rita", "chen"):
            role = {"sam": "sharer", "rita": "reader", "chen": "chief"}[who]
            row, keys[who] = api_key_row(f"sub-{who}", who, roles=[role], name=f"{who}'s key")
            db.session.add(row)
        db.session.commit()
    with rm.Mocker() as mock:
        orthanc = FakeOrthanc(mock)
        a = orthanc.add_study(A_UID, {"cardio"})
        b = orthanc.add_study(B_UID, {"neuro"})
        yield World(db_app, db_app.test_client(), orthanc, keys, a.id, b.id)


def _validate_body(world: World, token: str) -> dict[str, Any]:
    """The plugin's /tokens/validate call for a GET of study A with ``token``."""
    return {
        "method": "get",
        "level": "study",
        "orthanc-id": world.a_id,
        "dicom-uid": A_UID,
        "labels": ["cardio"],
        "server-id": None,
        "token-key": "token",
        "token-value": token,
    }


def test_the_link_is_the_users_own_and_works(world: World) -> None:
    response = world.create("sam", "stone-viewer-publication", world.a_id)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"Token", "Url"} and body["Token"].startswith("sh1.")
    assert body["Url"].startswith("https://pacs.test/orthanc/stone-webviewer/")
    assert response.headers["Cache-Control"] == "no-store"
    # The maker lists it and can revoke it; nobody else sees it.
    mine = world.client.get("/api/share-tokens", headers={"api-key": world.keys["sam"]})
    (item,) = mine.get_json()["items"]
    assert item["type"] == "stone-viewer-publication" and item["status"] == "active"
    theirs = world.client.get("/api/share-tokens", headers={"api-key": world.keys["rita"]})
    assert theirs.get_json()["items"] == []
    # The plugin grants the link on its study.
    plugin = PluginClient(world.app.test_client())
    validate = _validate_body(world, body["Token"])
    assert plugin.post("/tokens/validate", validate).get_json()["granted"] is True
    revoked = world.client.delete(
        f"/api/share-tokens/{item['id']}", headers={"api-key": world.keys["sam"]}
    )
    assert revoked.status_code == 200
    assert plugin.post("/tokens/validate", validate).get_json()["granted"] is False


@pytest.mark.parametrize(
    ("who", "token_type", "study", "status"),
    [
        ("sam", "stone-viewer-publication", "b", 403),  # a study sam cannot see
        ("sam", "download-instant-link", "a", 200),
        ("rita", "viewer-instant-link", "a", 200),  # view is enough for instant links
        ("rita", "ohif-viewer-publication", "a", 403),  # no share permission
        ("rita", "download-instant-link", "a", 403),  # no download permission
        ("sam", "no-such-type", "a", 403),
        ("sam", "stone-viewer-publication", "unknown", 403),  # no such study
        ("chen", "stone-viewer-publication", "b", 200),  # all + every label
    ],
)
def test_permission_per_type_and_only_visible_studies(
    world: World, who: str, token_type: str, study: str, status: int
) -> None:
    study_id = {"a": world.a_id, "b": world.b_id}.get(study, "0" * 8 + "-00000000" * 4)
    response = world.create(who, token_type, study_id)
    assert response.status_code == status, response.get_json()
    listed = world.client.get("/api/share-tokens", headers={"api-key": world.keys[who]})
    assert len(listed.get_json()["items"]) == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    "headers",
    [
        {"api-key": "KEY"},
        {"Authorization": "Bearer KEY"},
        {"token": "Bearer KEY"},
    ],
)
def test_every_credential_spelling_works(world: World, headers: dict[str, str]) -> None:
    filled = {k: v.replace("KEY", world.keys["sam"]) for k, v in headers.items()}
    response = world.create("sam", "viewer-instant-link", world.a_id, **filled)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"Resources": []}, 401),
        ({"token": "garbage"}, {"Resources": []}, 401),
        ({"token": "SAM"}, [1, 2], 400),
        ({"token": "SAM"}, {"Resources": "x"}, 422),
        ({"token": "SAM"}, {"Resources": [{"Level": "study"}]}, 403),  # no Orthanc id
        ({"token": "SAM"}, {"Resources": []}, 403),  # nothing to share
        ({"token": "SAM"}, {"Resources": [7]}, 422),
        ({"token": "SAM"}, {"ValidityDuration": "soon"}, 422),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    world: World, headers: dict[str, str], body: Any, status: int
) -> None:
    filled = {k: v.replace("SAM", world.keys["sam"]) for k, v in headers.items()}
    response = world.client.put(ROUTE + "viewer-instant-link", json=body, headers=filled)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"] and response.get_json()["message"]


def test_orthanc_down_fails_closed(world: World) -> None:
    world.orthanc.down = True
    response = world.create("sam", "stone-viewer-publication", world.a_id)
    assert response.status_code == 503
    world.orthanc.down = False
    assert world.create("sam", "stone-viewer-publication", world.a_id).status_code == 200


def test_a_revocation_made_elsewhere_holds_within_a_second(world: World) -> None:
    """Another worker or replica revokes (straight in the database): "granted" stops soon."""
    import time

    from authsvc.models import ShareToken
    from authsvc.models import utcnow

    token = world.create("sam", "stone-viewer-publication", world.a_id).get_json()["Token"]
    plugin = PluginClient(world.app.test_client())
    validate = _validate_body(world, token)
    for _ in range(3):  # warm whatever this worker caches
        assert plugin.post("/tokens/validate", validate).get_json()["granted"] is True
    with world.app.app_context():
        row = db.session.scalars(db.select(ShareToken)).one()
        row.revoked_at = utcnow()
        db.session.commit()
    revoked_at = time.monotonic()
    while plugin.post("/tokens/validate", validate).get_json()["granted"]:
        assert time.monotonic() - revoked_at < 1.5, "a revocation made elsewhere took over 1 s"
        time.sleep(0.05)
    decoded = plugin.post("/tokens/decode", {"token-key": "token", "token-value": token})
    assert decoded.get_json()["error-code"] is not None


@pytest.mark.parametrize(("allowed", "status"), [(True, 200), (False, 403)])
def test_the_plugins_own_route_can_be_turned_off(
    tmp_path: Path, extra_config: dict[str, Any], allowed: bool, status: int
) -> None:
    from authsvc.app import create_app
    from tests.conftest import base_config

    app = create_app(base_config(tmp_path, **extra_config, plugin_share_links=allowed))
    with app.app_context():
        db.create_all()
    body = {
        "resources": [
            {"level": "study", "orthanc-id": "0" * 8 + "-00000000" * 4, "dicom-uid": A_UID}
        ],
        "server-id": None,
        "type": "stone-viewer-publication",
        "validity-duration": 3600,
    }
    response = PluginClient(app.test_client()).put("/tokens/stone-viewer-publication", body)
    assert response.status_code == status, response.get_data(as_text=True)
    if not allowed:
        assert "/api/orthanc/auth/tokens/" in response.get_json()["message"]
    with app.app_context():
        db.engine.dispose()
