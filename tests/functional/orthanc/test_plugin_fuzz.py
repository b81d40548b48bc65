"""Garbage in every field of every plugin callback: a well-formed answer or a clear 4xx, never 5xx.

Hypothesis generates JSON bodies (the real field names with values of every type, plus random
keys and non-object documents) and sends them, chunked, to each callback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests_mock as rm
from flask import Flask
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests import oidc
from tests.plugin_client import PLUGIN_PASSWORD
from tests.plugin_client import PLUGIN_USER
from tests.plugin_client import PluginClient

pytestmark = pytest.mark.functional

FIELDS = [
    "method",
    "level",
    "orthanc-id",
    "dicom-uid",
    "uri",
    "labels",
    "token-key",
    "token-value",
    "server-id",
    "user-id",
    "id",
    "type",
    "resources",
    "expiration-date",
    "validity-duration",
    "roles",
    "available-labels",
    "group-roles",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["get", "delete", "study", "system", "Bearer ", "sh1.a.b", "*", ""])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = (
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), values, max_size=8) | values
)

CALLBACKS = [
    ("POST", "/user/get-profile"),
    ("POST", "/tokens/validate"),
    ("POST", "/tokens/decode"),
    ("PUT", "/tokens/stone-viewer-publication"),
    ("PUT", "/tokens/viewer-instant-link"),
    ("PUT", "/settings/roles"),
]


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return oidc.oidc_config(
        plugin_username=PLUGIN_USER,
        plugin_password=PLUGIN_PASSWORD,
        legacy_share_secret="insecure-legacy-secret-for-fuzzing",
        public_orthanc_root="http://localhost/orthanc/",
    )


@pytest.mark.parametrize(("method", "path"), CALLBACKS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_garbage_never_breaks_a_callback(
    app: Flask, requests_mock: rm.Mocker, method: str, path: str, body: Any
) -> None:
    oidc.mock_idp(requests_mock)
    plugin = PluginClient(app.test_client())
    response = plugin.call(method, path, raw=json.dumps(body).encode())
    assert response.status_code in {200, 400, 422}, response.get_data(as_text=True)
    answer = json.loads(response.get_data(as_text=True))
    if response.status_code != 200:
        assert isinstance(answer["error"], str) and answer["message"]
        return
    if path == "/tokens/validate":
        assert isinstance(answer["granted"], bool) and answer["validity"] == 60
        assert answer["granted"] is False  # nothing random is a valid token
    elif path == "/tokens/decode":
        assert answer["error-code"] == "invalid" and answer["resources"] == []
    elif path == "/user/get-profile":
        assert answer is None or answer["name"] == "Anonymous"
