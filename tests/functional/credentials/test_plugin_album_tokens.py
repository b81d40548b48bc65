"""Album read tokens through the plugin's ``/tokens/validate``: the study's labels decide.

The plugin sends the labels of the study it checks; an album read token is granted on a study
carrying its album's label, for reading only, until it is revoked. Keycloak and Orthanc are
faked (requests-mock); both databases are used.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import requests_mock as rm

from authsvc import albums
from authsvc.albums import Caller
from authsvc.credentials.sealing import generate_key
from authsvc.policy import Actor
from authsvc.services import services
from tests import oidc
from tests.conftest import base_config
from tests.conftest import running_app
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc
from tests.plugin_client import PLUGIN_PASSWORD
from tests.plugin_client import PLUGIN_USER
from tests.plugin_client import PluginClient

pytestmark = pytest.mark.functional

ADMIN = Caller(Actor("root", is_global_admin=True))
ROOT = {"Authorization": "Bearer " + oidc.make_token("root", realm_roles=("admin",))}


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO
) -> Iterator[dict[str, Any]]:
    config = base_config(
        tmp_path,
        orthanc_url=URL,
        orthanc_retries=0,
        upload_token_keys=generate_key("t1"),
        admin_roles="admin",
        plugin_username=PLUGIN_USER,
        plugin_password=PLUGIN_PASSWORD,
        **oidc.oidc_config(),
    )
    if request.param == "postgresql":
        config["database_url"] = request.getfixturevalue("pg_schema")
    with rm.Mocker() as mock:
        oidc.mock_idp(mock)
        fake = FakeOrthanc(mock)
        with running_app(config, log_stream) as app:
            with app.app_context():
                study = fake.add_study("1.2.840.7")
                album = albums.create_album(services().archive, ADMIN, "Lab").album
                albums.add_studies(services().archive, ADMIN, album.id, [study.id])
                world = {"app": app, "album": album.id, "label": album.label, "study": study}
            yield world


def _validate(plugin: PluginClient, token: str, labels: list[str], method: str = "get") -> bool:
    body = {
        "method": method,
        "level": "study",
        "orthanc-id": "0a1b2c3d-00000000-00000000-00000000-00000000",
        "dicom-uid": "1.2.840.7",
        "token-key": "Authorization",
        "token-value": f"Bearer {token}",
        "server-id": None,
    }
    if labels:
        body["labels"] = labels
    response = plugin.post("/tokens/validate", body)
    assert response.status_code == 200
    granted: bool = response.get_json()["granted"]
    return granted


def test_album_read_token_reads_its_album_only(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    created = client.post(f"/api/albums/{world['album']}/read-tokens", headers=ROOT)
    assert created.status_code == 201, created.get_data(as_text=True)
    token = created.get_json()["token"]
    plugin = PluginClient(client)
    label = world["label"]
    assert _validate(plugin, token, [label, "other"]) is True
    assert _validate(plugin, token, [label], method="post") is True
    assert _validate(plugin, token, [label], method="delete") is False
    assert _validate(plugin, token, [label], method="put") is False
    assert _validate(plugin, token, ["other"]) is False
    assert _validate(plugin, token, []) is False
    # Revoked: refused at once.
    revoked = client.delete(
        f"/api/albums/{world['album']}/read-tokens/{created.get_json()['id']}", headers=ROOT
    )
    assert revoked.status_code in (200, 204)
    assert _validate(plugin, token, [label]) is False


def test_forged_album_token_is_refused(world: dict[str, Any]) -> None:
    plugin = PluginClient(world["app"].test_client())
    assert (
        _validate(plugin, "ar1.t1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", [world["label"]])
        is False
    )
