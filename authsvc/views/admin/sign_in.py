"""The admin pages' sign-in and sign-out: OIDC authorization code + PKCE, server-side sessions."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Response
from flask import current_app
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from joserfc.errors import JoseError
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.errors import AuthsvcError
from authsvc.errors import DependencyUnavailable
from authsvc.errors import IdentityProviderUnavailable
from authsvc.identity import Identity
from authsvc.identity import admin_sessions
from authsvc.services import services
from authsvc.views.admin._blueprint import _CSRF
from authsvc.views.admin._blueprint import _NEXT
from authsvc.views.admin._blueprint import _SEEN
from authsvc.views.admin._blueprint import _SID
from authsvc.views.admin._blueprint import IDP_CLIENT
from authsvc.views.admin._blueprint import OAUTH_EXTENSION
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import current_user

log = logging.getLogger(__name__)


def _idp() -> Any:
    """Return the registered OIDC client, or explain in plain words that there is none."""
    oauth: OAuth = current_app.extensions[OAUTH_EXTENSION]
    client = oauth.create_client(IDP_CLIENT)
    if client is None:
        raise DependencyUnavailable(
            "Sign-in is not set up on this server: the administrator must configure the "
            "identity provider (oidc_issuer) and the admin pages' client secret."
        )
    return client


def _safe_next(value: str | None) -> str:
    """Return a local /admin path to go back to after sign-in; anything else: the start page."""
    if not value:
        return url_for("admin.index")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin") or "\\" in value:
        return url_for("admin.index")
    # A CR/LF (or any control character) cannot go into a Location header: Werkzeug refuses it
    # with a 500. Dot segments would leave /admin once the browser resolves them.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or any(
        segment in (".", "..") for segment in parts.path.split("/")
    ):
        return url_for("admin.index")
    return value


# --- sign-in and sign-out ----------------------------------------------------------------------


@bp.get("/login")
def login() -> WerkzeugResponse:
    """Start the sign-in at the identity provider (authorization code + PKCE S256)."""
    target = _safe_next(request.args.get("next"))
    if current_user() is not None:
        return redirect(target)
    client = _idp()
    session[_NEXT] = target
    try:
        return client.authorize_redirect(url_for("admin.callback", _external=True))  # type: ignore[no-any-return]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise IdentityProviderUnavailable(
            "The sign-in service cannot be reached right now. Try again in a minute."
        ) from exc


@bp.get("/callback")
def callback() -> WerkzeugResponse:
    """Finish the sign-in: check the provider's answer, verify the tokens, open a session."""
    client = _idp()
    try:
        token = client.authorize_access_token()
    except requests.RequestException as exc:
        raise IdentityProviderUnavailable(
            "The sign-in service cannot be reached right now. Try again in a minute."
        ) from exc
    except (AuthlibBaseError, JoseError, ValueError, KeyError, TypeError) as exc:
        log.warning("admin: sign-in callback refused (%s)", type(exc).__name__)
        return _sign_in_failed()
    verifier = services().verifier
    access_token = token.get("access_token") if isinstance(token, dict) else None
    if verifier is None or not isinstance(access_token, str):
        return _sign_in_failed()
    try:
        identity = verifier.verify(access_token)
    except IdentityProviderUnavailable:
        raise
    except AuthsvcError as exc:
        log.warning("admin: access token from the sign-in refused (%s)", exc.code)
        return _sign_in_failed()
    target = _safe_next(session.get(_NEXT))
    id_token = token.get("id_token") if isinstance(token.get("id_token"), str) else None
    settings = services().settings
    _bind_invitations(identity)
    # A fresh cookie session on sign-in: nothing from before (fixation) survives it.
    session.clear()
    session.permanent = True
    session[_SID] = admin_sessions.start_session(
        identity, id_token, settings.admin_session_lifetime
    )
    session[_CSRF] = secrets.token_urlsafe(32)
    session[_SEEN] = int(time.time())
    log.info("admin: %s signed in", identity.username or identity.subject)
    return redirect(target)


def _bind_invitations(identity: Identity) -> None:
    """Turn e-mail invitations of this (verified) address into memberships."""
    if not identity.email or not identity.email_verified:
        return
    try:
        from authsvc import albums
    except ImportError:  # pragma: no cover - the albums feature is part of the package
        return
    albums.bind_invitations(identity.subject, identity.email)


def _sign_in_failed() -> Response:
    """The page shown when the provider's answer cannot be trusted or has expired (400)."""
    session.pop(_SID, None)
    return Response(render_template("admin/sign_in_failed.html"), 400, mimetype="text/html")


@bp.post("/logout")
def logout() -> WerkzeugResponse:
    """Sign out here (the session row is deleted) and at the identity provider."""
    id_token = admin_sessions.end_session(session.get(_SID))
    session.clear()
    signed_out = url_for("admin.signed_out", _external=True)
    oauth: OAuth = current_app.extensions[OAUTH_EXTENSION]
    client = oauth.create_client(IDP_CLIENT)
    if client is None or id_token is None:
        return redirect(signed_out)
    try:
        end_session = client.load_server_metadata().get("end_session_endpoint")
    except (requests.RequestException, ValueError):
        end_session = None
    if not end_session:
        return redirect(signed_out)
    result = client.create_logout_url(post_logout_redirect_uri=signed_out, id_token_hint=id_token)
    return redirect(result["url"])


@bp.get("/signed-out")
def signed_out() -> str:
    """Confirm the sign-out."""
    return render_template("admin/signed_out.html")
