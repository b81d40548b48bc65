"""The one place errors become responses: JSON for API callers, HTML for browser pages.

Every :class:`~authsvc.errors.AuthsvcError` and every Werkzeug ``HTTPException`` goes through
:func:`render_error`. Anything else is a bug: it is logged with a traceback (redacted) and the
caller gets a generic 500 that reveals nothing.
"""

from __future__ import annotations

import contextlib
import logging

from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import jsonify
from flask import render_template
from flask import request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from authsvc.errors import AuthsvcError
from authsvc.errors import DependencyUnavailable
from authsvc.extensions import db

log = logging.getLogger(__name__)

# Werkzeug's exceptions mapped to our stable codes and plain-words messages.
_HTTP_CODES = {
    400: ("bad-request", "The request is malformed."),
    401: ("unauthenticated", "Authentication is required."),
    403: ("forbidden", "You are not allowed to do this."),
    404: ("not-found", "There is nothing at this address."),
    405: ("method-not-allowed", "This method is not allowed here."),
    406: ("not-acceptable", "No acceptable representation."),
    408: ("request-timeout", "The request took too long to arrive."),
    411: ("length-required", "A Content-Length or chunked body is required."),
    413: ("payload-too-large", "The request body is too large."),
    414: ("uri-too-long", "The URL is too long."),
    415: ("unsupported-media-type", "Unsupported content type."),
    417: ("expectation-failed", "The Expect header cannot be met."),
    429: ("too-many-requests", "Too many requests; slow down."),
}

# Paths whose callers are browsers; everything else answers JSON.
HTML_PREFIXES = ("/admin", "/login", "/logout", "/auth/callback")


def wants_html() -> bool:
    """True when the caller is a person in a browser (an admin page), not a program.

    A page's own script (the album page's upload) asks for JSON and gets its errors in JSON.
    """
    if not request.path.startswith(HTML_PREFIXES):
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best != "application/json"


def render_error(status: int, code: str, message: str, details: object = None) -> Response:
    """Build the error response in the caller's format."""
    request_id = g.get("request_id")
    if wants_html():
        html = render_template("error.html", status=status, message=message, request_id=request_id)
        response = current_app.response_class(html, status=status, mimetype="text/html")
    else:
        body: dict[str, object] = {"error": code, "message": message}
        if details is not None:
            body["details"] = details
        if request_id:
            body["request_id"] = request_id
        response = jsonify(body)
        response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Route every error through :func:`render_error`."""

    @app.errorhandler(AuthsvcError)
    def handle_authsvc_error(exc: AuthsvcError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        response = render_error(exc.status, exc.code, exc.message, exc.details)
        if exc.status == 401:
            response.headers.setdefault("WWW-Authenticate", 'Bearer realm="authsvc"')
        return response

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        code, message = _HTTP_CODES.get(status, ("http-error", exc.name))
        response = render_error(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    def handle_database_unavailable(exc: sa_exc.DBAPIError) -> Response:
        # The database went away (stopped, restarted, network): a dependency outage, so a
        # 503 that invites a retry, never a 500. The pool's pre-ping reconnects afterwards.
        with contextlib.suppress(Exception):
            db.session.rollback()
        return handle_authsvc_error(
            DependencyUnavailable("The database is unavailable; try again later.")
        )

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return render_error(500, "internal-error", "An internal error occurred.")
