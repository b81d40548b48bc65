"""Schema-driven fuzzing (schemathesis) of every JSON operation: the /api document and the plugin's.

Each operation described in authsvc/openapi.json (the album, credential and roles API) and in
authsvc/openapi-plugin.json (the plugin callbacks) gets generated requests, valid and invalid,
through the real app on SQLite (Keycloak and Orthanc faked): no answer may be a 5xx, and every
answer must be one the document describes (status code, content type, body schema).

``FUZZ_EXAMPLES`` sets the examples per operation and mode (default 12, bounded for
``make test``); ``make fuzz`` runs the same tests with many more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
import requests_mock as rm
import schemathesis
from flask import Flask
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.checks import status_code_conformance

from authsvc import albums
from authsvc.albums import Caller
from authsvc.credentials.sealing import generate_key
from authsvc.extensions import db
from authsvc.policy import Actor
from authsvc.services import services
from tests import oidc
from tests.fake_orthanc import URL
from tests.functional.uploads.test_uploads import UploadingOrthanc
from tests.plugin_client import basic

pytestmark = pytest.mark.functional

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
HTTP_METHODS = ("get", "put", "post", "patch", "delete")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Throw-away credentials, named as such.
INSECURE_PLUGIN_PASSWORD = "insecure-fuzz-plugin-password"


def _document(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("authsvc").joinpath(name).read_text())
    return doc


DOCUMENTS = {"api": "openapi.json", "plugin": "openapi-plugin.json"}
OPERATIONS = [
    (doc, method.upper(), path)
    for doc, name in DOCUMENTS.items()
    for path, item in _document(name)["paths"].items()
    for method in item
    if method in HTTP_METHODS
]


@pytest.fixture
def extra_config() -> dict[str, Any]:
    return oidc.oidc_config(
        orthanc_url=URL,
        orthanc_retries=0,
        upload_token_keys=generate_key("t1"),
        share_token_keys=generate_key("s1"),
        plugin_username="orthanc-plugin",
        plugin_password=INSECURE_PLUGIN_PASSWORD,
        admin_roles="admin",
    )


@pytest.fixture
def fuzz_app(app: Flask) -> Iterator[tuple[Flask, str]]:
    """The app with an album holding a study, so generated ids sometimes hit real rows."""
    with rm.Mocker() as mock:
        oidc.mock_idp(mock)
        orthanc = UploadingOrthanc(mock)
        study = orthanc.add_study("1.2.840.77.1")
        with app.app_context():
            admin = Caller(Actor("root", is_global_admin=True))
            album = albums.create_album(services().archive, admin, "Fuzz").album.id
            albums.add_studies(services().archive, admin, album, [study.id])
            db.session.commit()
        yield app, album


@pytest.mark.parametrize(("doc", "method", "path"), OPERATIONS)
def test_fuzz_operation_never_5xx_and_matches_its_schema(
    fuzz_app: tuple[Flask, str], doc: str, method: str, path: str
) -> None:
    app, album = fuzz_app
    schema = schemathesis.openapi.from_dict(_document(DOCUMENTS[doc]))
    schema.app = app
    operation = schema[path][method]
    if doc == "plugin":
        headers = {"Authorization": basic("orthanc-plugin", INSECURE_PLUGIN_PASSWORD)}
    else:
        token = oidc.make_token("root", subject="root-sub", realm_roles=("admin",))
        headers = {"Authorization": f"Bearer {token}"}
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    calls = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=EXAMPLES <= 50,
        suppress_health_check=list(HealthCheck),
    )
    # Mostly authenticated (as a global admin, to get past every check); some anonymous.
    @given(case=strategy, real_album=st.booleans(), authenticated=st.sampled_from([1, 1, 1, 0]))
    def run(case: Any, real_album: bool, authenticated: int) -> None:
        nonlocal calls
        if real_album and "album_id" in (case.path_parameters or {}):
            case.path_parameters["album_id"] = album
        if authenticated or calls == 0:
            # The generated credentials (from the security schemes) would win over ours.
            for name in ("Authorization", "api-key"):
                (case.headers or {}).pop(name, None)
            response = case.call(headers=headers)
        else:  # the generated credentials, junk or missing: the auth parsing gets fuzzed
            response = case.call()
        calls += 1
        case.validate_response(response, checks=CHECKS)

    run()
    assert calls >= 1


def test_every_plugin_callback_is_described(app: Flask) -> None:
    described = _document(DOCUMENTS["plugin"])["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("plugin."):
            continue
        path = rule.rule.replace("<token_type>", "{token_type}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if method.lower() not in described.get(path, {}):
                missing.append(f"{method} {rule.rule}")
    assert not missing, "describe these in authsvc/openapi-plugin.json: " + ", ".join(missing)
