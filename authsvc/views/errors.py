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
from authsvc.errors import BadRequest
from authsvc.errors import DependencyUnavailable
from authsvc.errors import Forbidden
from authsvc.errors import PayloadTooLarge
from authsvc.errors import Unauthenticated
from authsvc.errors import UnsupportedMediaType
from authsvc.extensions import db

log = logging.getLogger(__name__)

# Werkzeug's exceptions answer with the code and message of the authsvc error of their status
# (ERROR_TABLE), so a 415 reads the same whichever of the two raised it...
_HTTP_ERRORS: dict[int, type[AuthsvcError]] = {
    error.status: error
    for error in (BadRequest, Unauthenticated, Forbidden, PayloadTooLarge, UnsupportedMediaType)
}
# ...and these for the statuses no authsvc error has. A 404 from routing says that nothing is
# at the address, which NotFound's "Not found." (a resource) does not.
_HTTP_CODES = {
    404: ("not-found", "There is nothing at this address."),
    405: ("method-not-allowed", "This method is not allowed here."),
    406: ("not-acceptable", "No acceptable representation."),
    408: ("request-timeout", "The request took too long to arrive."),
    411: ("length-required", "A Content-Length or chunked body is required."),
    414: ("uri-too-long", "The URL is too long."),
    417: ("expectation-failed", "The Expect header cannot be met."),
    429: ("too-many-requests", "Too many requests; slow down."),
}


def _http_code(status: int, name: str) -> tuple[str, str]:
    """Return the code and message a Werkzeug exception of ``status`` answers with."""
    error = _HTTP_ERRORS.get(status)
    if error is not None:
        return error.code, error.message
    return _HTTP_CODES.get(status, ("http-error", name))


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
        code, message = _http_code(status, exc.name)
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
