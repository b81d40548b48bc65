"""Log lines carry the request id; JSON lines are available; secrets never reach the log."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from flask import Flask

from authsvc import logs
from authsvc.views.requests import json_body

pytestmark = pytest.mark.functional

# Throw-away secrets of every shape a caller can send.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
API_KEY = "ask_live_0123456789abcdefghijklmnopqrstuvwxyz"
SEALED = "v1.QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk"
PASSWORD = "plugin-password-insecure-42"


@pytest.fixture
def chatty_app(app: Flask) -> Flask:
    """A route that logs carelessly, as a buggy view might: the filter must still mask."""

    @app.post("/_test/careless")
    def careless() -> dict[str, str]:
        body = json_body()
        logging.getLogger("authsvc.test").info(
            "headers=%s body=%s", dict(_headers()), json.dumps(body)
        )
        logging.getLogger("authsvc.test").info("calling http://orthanc:%s@orthanc/", PASSWORD)
        return {"ok": "yes"}

    return app


def _headers() -> Any:
    from flask import request

    return request.headers


def test_secrets_never_reach_the_log(chatty_app: Flask, log_stream: io.StringIO) -> None:
    client = chatty_app.test_client()
    response = client.post(
        "/_test/careless",
        json={"token-value": JWT, "api-key": API_KEY, "upload": SEALED, "password": PASSWORD},
        headers={"Authorization": f"Bearer {JWT}", "api-key": API_KEY, "token": SEALED},
    )
    assert response.status_code == 200
    logged = log_stream.getvalue()
    assert "headers=" in logged  # the line was written...
    for secret in (JWT, API_KEY, SEALED, PASSWORD, JWT.split(".")[1]):
        assert secret not in logged  # ...but without a single secret


def test_log_lines_carry_the_request_id(chatty_app: Flask, log_stream: io.StringIO) -> None:
    chatty_app.test_client().post(
        "/_test/careless", json={}, headers={"X-Request-ID": "req-abc-42"}
    )
    lines = [line for line in log_stream.getvalue().splitlines() if "authsvc.test" in line]
    assert lines and all("[req-abc-42]" in line for line in lines)


def test_json_lines_format(chatty_app: Flask) -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    chatty_app.test_client().post("/_test/careless", json={}, headers={"X-Request-ID": "rid-7"})
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [e for e in entries if e["logger"] == "authsvc.test"]
    assert mine and all(e["request_id"] == "rid-7" for e in mine)
    assert {"time", "level", "message"} <= set(mine[0])


@pytest.mark.parametrize(
    ("text", "must_vanish"),
    [
        (f"Authorization: Bearer {JWT}", JWT),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        (f"key {API_KEY} used", API_KEY),
        (f"token={SEALED}&x=1", SEALED),
        ('{"password": "s3cr3t-value"}', "s3cr3t-value"),
        ("postgresql://authsvc:db-pass-9@db/authsvc", "db-pass-9"),
    ],
)
def test_redact(text: str, must_vanish: str) -> None:
    assert must_vanish not in logs.redact(text)
