"""authsvc's own credential at an Orthanc that runs the authorization plugin.

With the plugin, Orthanc refuses authsvc's Basic credentials unless the plugin knows them, so
authsvc sends ``orthanc_service_key`` in a token header and answers the plugin's profile request
for that key with its service profile: every label, ``view``, ``upload`` and ``edit-labels``,
nothing else. Orthanc is faked with requests-mock here; tests/integration runs the real plugin.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import requests_mock as rm
from flask import Flask

from authsvc.services import services
from tests.plugin_client import PluginClient

pytestmark = pytest.mark.functional

ORTHANC = "http://orthanc.test:8042"
KEY = "svc-" + "k" * 40
OTHER_KEY = "svc-" + "x" * 40


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return {
        "plugin_username": "share-user",
        "plugin_password": "change-me",
        "orthanc_url": ORTHANC,
        "orthanc_service_key": KEY,
        "orthanc_servers": [
            {"id": "second", "url": "http://second.test", "service_key": OTHER_KEY}
        ],
    }


def _profile(app: Flask, token: str, server_id: str | None = None) -> dict[str, Any]:
    response = PluginClient(app.test_client()).post(
        "/user/get-profile", {"server-id": server_id, "token-key": "api-key", "token-value": token}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def test_the_service_key_gets_the_service_profile(app: Flask) -> None:
    for token in (KEY, f"Bearer {KEY}"):
        profile = _profile(app, token)
        assert profile["permissions"] == ["edit-labels", "upload", "view"]
        assert profile["authorized-labels"] == ["*"]
        assert profile["user-id"] == "authsvc-service" and profile["name"] == "authsvc"
        assert isinstance(profile["validity"], int) and profile["validity"] > 0


@pytest.mark.parametrize(
    ("token", "server_id"),
    [
        (KEY[:-1] + "K", None),  # one character off
        (KEY[:-1], None),  # a prefix
        (KEY + "k", None),
        (OTHER_KEY, None),  # the key of another server
        (KEY, "second"),  # the right key, for the wrong server
        (KEY, "unknown"),
    ],
)
def test_anything_else_is_anonymous(app: Flask, token: str, server_id: str | None) -> None:
    profile = _profile(app, token, server_id)
    assert profile["permissions"] == [] and profile["authorized-labels"] == []
    assert profile["user-id"] is None


def test_each_server_knows_only_its_own_key(app: Flask) -> None:
    assert _profile(app, OTHER_KEY, "second")["permissions"] == ["edit-labels", "upload", "view"]


def test_the_key_is_not_a_credential_for_authsvc_itself(app: Flask) -> None:
    client = app.test_client()
    for headers in ({"api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        assert client.get("/api/albums", headers=headers).status_code == 401


def test_calls_to_orthanc_carry_the_key_and_logs_never_show_it(
    app: Flask, requests_mock: rm.Mocker, log_stream: io.StringIO
) -> None:
    requests_mock.get(f"{ORTHANC}/studies/s1/labels", json=["a"])
    requests_mock.get("http://second.test/studies/s1/labels", json=["b"])
    with app.app_context():
        registry = services().orthanc
        default, second = registry.get(None), registry.get("second")
        assert default is not None and second is not None
        assert default.study_labels("s1") == ["a"]
        assert second.study_labels("s1") == ["b"]
        assert repr(default.server).count(KEY) == 0
    sent = [(r.url, r.headers.get("api-key")) for r in requests_mock.request_history]
    assert sent == [
        (f"{ORTHANC}/studies/s1/labels", KEY),
        ("http://second.test/studies/s1/labels", OTHER_KEY),
    ]
    _profile(app, KEY)
    assert KEY not in log_stream.getvalue() and OTHER_KEY not in log_stream.getvalue()


def test_a_short_key_stops_start_up(tmp_path: Any) -> None:
    from authsvc.app import create_app
    from authsvc.errors import ConfigError
    from tests.conftest import base_config

    with pytest.raises(ConfigError, match="AUTHSVC_ORTHANC_SERVICE_KEY: must be at least 32"):
        create_app(base_config(tmp_path, orthanc_service_key="short"))
