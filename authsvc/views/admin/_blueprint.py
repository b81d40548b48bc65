"""The admin blueprint and what every admin request passes through: CSRF, headers, who is signed in.

The page modules (and ``authsvc.views.album_upload``) add their routes to :data:`bp` and guard
them with :func:`signed_in` or :func:`admin_only`; the package (:mod:`authsvc.views.admin`)
imports the pages and registers the blueprint. Living apart from the package module, this is
what the pages import, so no page imports the package that imports it.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from typing import ParamSpec
from typing import TypeVar

from flask import Blueprint
from flask import g
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.errors import AuthsvcError
from authsvc.errors import Forbidden
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.identity import Identity
from authsvc.identity import admin_sessions
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.auth import actor_for

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")

P = ParamSpec("P")
R = TypeVar("R")

OAUTH_EXTENSION = "authsvc_admin_oauth"
IDP_CLIENT = "idp"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Keys of the (signed, HttpOnly) cookie session; nothing secret beyond the random ids.
_SID = "admin_sid"
_CSRF = "admin_csrf"
_NEXT = "admin_next"
_SEEN = "admin_seen"  # Unix time of the session's last request (the idle timeout)


# --- per-request: session, CSRF, the signed-in user --------------------------------------------


def csrf_token() -> str:
    """Return this browser session's CSRF token, creating it on first use."""
    token = session.get(_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[_CSRF] = token
    return token


@bp.before_request
def check_csrf() -> None:
    """Refuse any state-changing request that does not carry this session's CSRF token."""
    if request.method in _SAFE_METHODS:
        return
    expected = session.get(_CSRF)
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if (
        not isinstance(expected, str)
        or not expected
        or not hmac.compare_digest(expected.encode(), sent.encode())
    ):
        log.warning(
            "admin: refused a %s to %s without a valid CSRF token", request.method, request.path
        )
        raise Forbidden(
            "This form has expired or did not come from this site. "
            "Go back, reload the page and try again."
        )


#: Sent with every admin page: no framing (clickjacking of the forms), no MIME sniffing, no
#: page URL to other sites, and nothing kept in shared or browser caches (pages show patients).
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@bp.after_request
def security_headers(response: WerkzeugResponse) -> WerkzeugResponse:
    """Add :data:`SECURITY_HEADERS` to every admin response (error pages included)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.before_request
def load_user() -> None:
    """Find who is signed in (if anybody) for this request; end a sign-in left idle too long."""
    signed_in = admin_sessions.load_session(session.get(_SID))
    if signed_in is not None:
        now = int(time.time())
        idle_limit = services().settings.admin_session_idle_timeout
        seen = session.get(_SEEN)
        if idle_limit and isinstance(seen, int) and now - seen > idle_limit:
            # An unattended workstation: the row goes, as at sign-out (every worker, at once).
            admin_sessions.end_session(session.get(_SID))
            session.pop(_SID, None)
            signed_in = None
        else:
            session[_SEEN] = now
    g.admin_session = signed_in
    g.admin_identity = signed_in.identity if signed_in else None


def current_user() -> Identity | None:
    """Return the signed-in identity, or None."""
    identity: Identity | None = g.get("admin_identity")
    return identity


def signed_in_user() -> Identity:
    """Return the signed-in identity; refuse if nobody is (the views calling it are @signed_in)."""
    identity = current_user()
    if identity is None:
        raise Forbidden("Please sign in first.")
    return identity


def current_actor() -> Actor:
    """Return the policy actor of the signed-in user (global rights from the roles config)."""
    if "admin_actor" not in g:
        g.admin_actor = actor_for(signed_in_user())
    actor: Actor = g.admin_actor
    return actor


def signed_in(view: Callable[P, R]) -> Callable[P, R | WerkzeugResponse]:
    """Send visitors who are not signed in to the sign-in, then back to this page."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | WerkzeugResponse:
        if current_user() is None:
            if request.method == "GET":
                return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
            raise Forbidden("Your sign-in has ended. Sign in again, then repeat what you did.")
        return view(*args, **kwargs)

    return wrapped


def admin_only(view: Callable[P, R]) -> Callable[P, R | WerkzeugResponse]:
    """Pages for global administrators only; others get a plain "not allowed" page."""

    @functools.wraps(view)
    @signed_in
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        if not decide(current_actor(), Action.ADMIN_PAGES_ADMINISTER):
            raise Forbidden("This page is for administrators.")
        return view(*args, **kwargs)

    return wrapped


@bp.app_context_processor
def template_globals() -> dict[str, Any]:
    """What every page (and the error page) needs: the user, the CSRF token, the menu."""
    identity = g.get("admin_identity")
    is_admin = False
    if identity is not None:
        try:
            is_admin = bool(decide(current_actor(), Action.ADMIN_PAGES_ADMINISTER))
        except Exception:  # noqa: BLE001 - the menu must never break a page (error pages too)
            is_admin = False
    return {
        "user": identity,
        "is_admin": is_admin,
        "csrf_token": csrf_token if request.path.startswith("/admin") else None,
    }


@bp.errorhandler(OrthancUnavailable)
@bp.errorhandler(OrthancError)
def orthanc_trouble(exc: AuthsvcError) -> Any:
    """Say in plain words that the image archive is the problem (its message is technical)."""
    from authsvc.views.errors import render_error

    log.warning("admin: Orthanc trouble on %s: %s", request.path, exc.message)
    return render_error(
        503,
        exc.code,
        "The image archive (Orthanc) is not answering right now, so this could not be done. "
        "Try again in a minute; what was already saved is kept.",
    )
