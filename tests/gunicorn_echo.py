"""A WSGI entry point for gunicorn tests: the real authsvc app plus one route that echoes JSON.

Used by tests/integration/test_gunicorn.py to prove a chunked request body (how Orthanc's
authorization plugin sends every callback) reaches a view intact through a real gunicorn.
"""

from __future__ import annotations

from flask import Flask

from authsvc.app import create_app
from authsvc.views.requests import json_body


def app() -> Flask:
    """Return authsvc with ``POST /_test/echo`` added."""
    application = create_app()

    @application.post("/_test/echo")
    def echo() -> dict[str, object]:
        return {"received": json_body()}

    return application
