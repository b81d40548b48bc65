"""Talk to authsvc the way Orthanc's authorization plugin does, through the Flask test client.

The plugin sends HTTP Basic credentials, ``Content-Type: application/json`` and a **chunked**
body with sorted keys and no ``Content-Length`` (protocol spec §2.2, §14). :class:`PluginClient`
reproduces that: the body is an input stream, ``Transfer-Encoding: chunked`` is set and
``wsgi.input_terminated`` is on, exactly what gunicorn gives the app for such a request.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

PLUGIN_USER = "share-user"
PLUGIN_PASSWORD = "change-me"


def basic(user: str = PLUGIN_USER, password: str = PLUGIN_PASSWORD) -> str:
    """Return an ``Authorization: Basic`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def chunked(data: bytes, size: int = 7) -> bytes:
    """Return ``data`` in HTTP/1.1 chunked framing (small chunks, as a stream would)."""
    out = b""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


class PluginClient:
    """Send plugin-shaped requests: Basic auth, JSON, chunked body."""

    def __init__(self, client: FlaskClient, *, auth: str | None = None) -> None:
        self.client = client
        self.auth = auth if auth is not None else basic()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        """Send one callback; ``raw`` overrides the JSON encoding of ``body``."""
        all_headers = {"Authorization": self.auth}
        if body is not None or raw is not None:
            data = raw if raw is not None else json.dumps(body, sort_keys=True).encode()
            all_headers["Content-Type"] = "application/json"
            all_headers["Transfer-Encoding"] = "chunked"
            all_headers.update(headers or {})
            # The WSGI server de-chunks the body; the app sees a terminated input stream
            # without Content-Length (what gunicorn provides, see tests/integration).
            return self.client.open(
                path,
                method=method,
                headers=all_headers,
                input_stream=io.BytesIO(data),
                environ_overrides={"wsgi.input_terminated": True},
            )
        all_headers.update(headers or {})
        return self.client.open(path, method=method, headers=all_headers)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
        return self.call("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
        return self.call("PUT", path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("GET", path, **kwargs)
