"""The OpenAPI document served at /api/openapi.json describes every /api route there is."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

pytestmark = pytest.mark.functional

_HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _openapi_path(rule: str) -> str:
    """Return the OpenAPI spelling of a Flask rule: ``<album_id>`` becomes ``{album_id}``."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_document_is_openapi_3_1(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    doc = response.json
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["paths"]


def test_every_api_route_is_documented(app: Flask, client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").json["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        documented = paths.get(_openapi_path(rule.rule), {})
        for method in sorted((rule.methods or set()) & _HTTP_METHODS):
            if method.lower() not in documented:
                missing.append(f"{method} {rule.rule}")
    assert not missing, "document these in authsvc/openapi.json: " + ", ".join(missing)


def test_every_operation_has_an_id_and_responses(client: FlaskClient) -> None:
    doc = client.get("/api/openapi.json").json
    ids = []
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (method, operation)
            ids.append(operation["operationId"])
    assert len(ids) == len(set(ids))
