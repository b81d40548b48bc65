"""The admin pages: server-rendered HTML behind an OIDC sign-in, for people, not programs.

Sign-in is the OIDC authorization code flow with PKCE (S256) through Authlib's Flask client,
against the configured provider, with the confidential client ``admin_client_id``. At the
callback Authlib checks ``state``, the PKCE verifier and the ID token (signature, issuer,
audience, nonce); the access token is then verified by the same
:class:`~authsvc.identity.KeycloakVerifier` as every API call, which builds the
:class:`~authsvc.identity.Identity` through ``claims_to_identity``. The session is server-side
(:mod:`authsvc.identity.admin_sessions`): the cookie carries only a random id, so signing out —
which deletes the row and then ends the provider's session with ``id_token_hint`` — ends access.

Cookies: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` unless ``admin_cookie_secure`` is false.
CSRF: every session holds a random token; every non-GET request under ``/admin`` must send it
back (hidden form field ``csrf_token`` or header ``X-CSRF-Token``), checked in one
``before_request`` before anything else runs. A request from another origin fails that check.

Decisions come from :mod:`authsvc.policy` (through the album use-cases, which call it); the
pages only hide what the policy would refuse, and the server refuses it anyway.

This package holds the one blueprint ``admin`` and its hooks; each page is a module of its own:
``sign_in`` (sign-in, callback, sign-out), ``album_list`` (start page, my albums, create),
``album`` (one album: members, settings, viewer links), ``studies`` (add, pick, remove),
``sharing`` (upload and read tokens), ``api_keys``, ``share_links``, ``roles``, ``people``,
``audit`` (with the CSV export) and ``status``; ``_common`` has what several pages share.
Their templates are ``templates/admin/*.html``, built from the macros in ``_macros.html``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from typing import ParamSpec
from typing import TypeVar

from authlib.integrations.flask_client import OAuth
from flask import Blueprint
from flask import Flask
from flask import g
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.config import Settings
from authsvc.errors import AuthsvcError
from authsvc.errors import Forbidden
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.identity import Identity
from authsvc.identity import admin_sessions
from authsvc.identity.authn import actor_for
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import decide
from authsvc.services import services

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


def init_app(app: Flask, settings: Settings) -> None:
    """Set the cookie flags, register the OIDC client (when configured) and the blueprint."""
    app.config.update(
        SESSION_COOKIE_NAME="authsvc_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.admin_cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(seconds=settings.admin_session_lifetime),
    )
    oauth = OAuth(app)
    client_id = settings.admin_client_id or settings.oidc_client_id
    if settings.oidc_issuer and client_id and settings.admin_client_secret:
        oauth.register(
            IDP_CLIENT,
            client_id=client_id,
            client_secret=settings.admin_client_secret,
            server_metadata_url=settings.oidc_discovery_url
            or settings.oidc_issuer + "/.well-known/openid-configuration",
            client_kwargs={
                "scope": "openid profile email",
                "code_challenge_method": "S256",
                "default_timeout": settings.oidc_timeout,
            },
        )
    app.extensions[OAUTH_EXTENSION] = oauth
    app.register_blueprint(bp)


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


# The pages: each module adds its routes to ``bp`` when imported (after ``bp`` and the hooks
# above exist, which they import).
from authsvc.views.admin import album  # noqa: E402
from authsvc.views.admin import album_list  # noqa: E402
from authsvc.views.admin import api_keys  # noqa: E402
from authsvc.views.admin import audit  # noqa: E402
from authsvc.views.admin import people  # noqa: E402
from authsvc.views.admin import roles  # noqa: E402
from authsvc.views.admin import share_links  # noqa: E402
from authsvc.views.admin import sharing  # noqa: E402
from authsvc.views.admin import sign_in  # noqa: E402
from authsvc.views.admin import status  # noqa: E402
from authsvc.views.admin import studies  # noqa: E402

__all__ = [
    "album",
    "album_list",
    "api_keys",
    "audit",
    "people",
    "roles",
    "share_links",
    "sharing",
    "sign_in",
    "status",
    "studies",
]
