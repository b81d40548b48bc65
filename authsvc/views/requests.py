"""Per-request plumbing: request ids, and reading JSON bodies strictly."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Flask
from flask import Response
from flask import g
from flask import request

from authsvc import logs
from authsvc.errors import BadRequest
from authsvc.errors import InvalidJSON
from authsvc.errors import NotFound
from authsvc.errors import PayloadTooLarge
from authsvc.errors import UnsupportedMediaType

# A caller-supplied id is kept only if it is short and harmless in a log line.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID_HEADER = "X-Request-ID"


def init_app(app: Flask) -> None:
    """Install the request-id hooks."""

    @app.before_request
    def bind_request_id() -> None:
        supplied = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = supplied if _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        g.request_id_token = logs.set_request_id(g.request_id)

    @app.before_request
    def refuse_nul_in_path() -> None:
        # No id, name or route of ours holds NUL, and PostgreSQL text cannot: such a path
        # would fail as a database error (500) in whatever view it reached.
        if "\x00" in request.path:
            raise NotFound("No such resource.")

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response

    @app.teardown_request
    def unbind_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            logs.reset_request_id(token)


def json_body(*, allow_empty: bool = False) -> Any:
    """Return the request's JSON body; raise a clear 4xx when it is not acceptable.

    :raise 415: the Content-Type is not JSON.
    :raise 400: the body is empty (unless allowed) or not valid JSON.
    :raise 413: the body is larger than ``max_body_bytes``.
    """
    mimetype = request.mimetype
    raw = _read_body()
    if not raw:
        if allow_empty:
            return None
        raise BadRequest("The request body is empty; a JSON document is expected.")
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {mimetype or 'missing'}."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON("The request body is not UTF-8.") from exc
    return _loads(text)


def _read_body() -> bytes:
    from werkzeug.exceptions import RequestEntityTooLarge

    try:
        # Works for Content-Length and chunked bodies alike (gunicorn sets wsgi.input_terminated).
        return request.get_data(cache=True)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge() from exc


def _loads(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno}."
        ) from exc
    except RecursionError as exc:
        raise InvalidJSON("The request body is nested too deeply.") from exc
