"""Bad input gets a clear 4xx JSON error; unexpected errors give a bare 500; pages get HTML."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from authsvc.errors import Forbidden
from authsvc.views.requests import json_body

pytestmark = pytest.mark.functional


@pytest.fixture
def echo_app(app: Flask) -> Flask:
    """The app plus routes that read a JSON body and raise errors, as real views do."""

    @app.post("/_test/echo")
    def echo() -> dict[str, object]:
        return {"received": json_body()}

    @app.get("/_test/forbidden")
    def forbidden() -> None:
        raise Forbidden("Only album managers may do this.")

    @app.get("/_test/crash")
    def crash() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/admin/_test/crash")
    def admin_crash() -> None:
        raise RuntimeError("boom")

    return app


@pytest.fixture
def echo(echo_app: Flask) -> FlaskClient:
    return echo_app.test_client()


def test_valid_json_is_received(echo: FlaskClient) -> None:
    response = echo.post("/_test/echo", json={"a": [1, 2]})
    assert response.status_code == 200
    assert response.get_json() == {"received": {"a": [1, 2]}}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "says"),
    [
        (b'{"a": ', "application/json", 400, "invalid-json", "not valid JSON"),
        (b"\xff\xfe", "application/json", 400, "invalid-json", "not UTF-8"),
        (b"", "application/json", 400, "bad-request", "empty"),
        (b'{"a": 1}', "text/plain", 415, "unsupported-media-type", "text/plain"),
        (b'{"a": 1}', None, 415, "unsupported-media-type", "missing"),
    ],
)
def test_bad_bodies(
    echo: FlaskClient, body: bytes, content_type: str | None, status: int, code: str, says: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = echo.post("/_test/echo", data=body, headers=headers)
    assert response.status_code == status
    payload = response.get_json()
    assert payload["error"] == code
    assert says in payload["message"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_oversized_body(echo_app: Flask) -> None:
    echo_app.config["MAX_CONTENT_LENGTH"] = 1024
    response = echo_app.test_client().post("/_test/echo", json={"x": "y" * 2000})
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload-too-large"


def test_unknown_route(echo: FlaskClient) -> None:
    response = echo.get("/no/such/thing")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not-found"
    assert response.headers["X-Request-ID"] == response.get_json()["request_id"]


def test_wrong_method(echo: FlaskClient) -> None:
    response = echo.delete("/healthz")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method-not-allowed"
    assert "GET" in response.headers["Allow"]


def test_domain_error_keeps_its_code_and_message(echo: FlaskClient) -> None:
    response = echo.get("/_test/forbidden")
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert response.get_json()["message"] == "Only album managers may do this."


def test_unexpected_error_reveals_nothing(echo: FlaskClient, log_stream) -> None:
    response = echo.get("/_test/crash")
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "internal-error" in text
    assert "hunter2" not in text and "Traceback" not in text
    # The traceback is logged for the operators, with the secret masked.
    logged = log_stream.getvalue()
    assert "RuntimeError" in logged
    assert "hunter2" not in logged


def test_pages_get_html_errors(echo: FlaskClient) -> None:
    for path, status in (("/admin/_test/crash", 500), ("/admin/no-such-page", 404)):
        response = echo.get(path)
        assert response.status_code == status
        assert response.mimetype == "text/html"
        assert "<html" in response.get_data(as_text=True)
        assert "Traceback" not in response.get_data(as_text=True)


def test_request_id_is_echoed_when_safe(echo: FlaskClient) -> None:
    assert echo.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == (
        "abc-123"
    )
    unsafe = echo.get("/healthz", headers={"X-Request-ID": "a b;<script>"})
    assert unsafe.headers["X-Request-ID"] != "a b;<script>"
    assert len(unsafe.headers["X-Request-ID"]) == 32
