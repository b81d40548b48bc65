"""``GET /api/openapi.json``: the JSON API's OpenAPI 3.1 description.

The document is a static file shipped in the package (``authsvc/openapi.json``); each feature
adds its ``/api`` paths to it. ``tests/functional/test_openapi.py`` fails when a registered
``/api`` route is missing from it, so the contract cannot silently fall behind the code.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify

bp = Blueprint("openapi", __name__)


@cache
def document() -> dict[str, Any]:
    """Return the OpenAPI document (read once per process)."""
    text = (resources.files("authsvc") / "openapi.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


@bp.get("/api/openapi.json")
def openapi() -> Response:
    """Serve the OpenAPI document."""
    return jsonify(document())
