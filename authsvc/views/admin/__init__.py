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

The one blueprint ``admin`` and its hooks are in ``_blueprint``; this package imports the pages
and registers the blueprint (:func:`init_app`). Each page is a module of its own:
``sign_in`` (sign-in, callback, sign-out), ``album_list`` (start page, my albums, create),
``album`` (one album: members, settings, viewer links), ``studies`` (add, pick, remove),
``sharing`` (upload and read tokens), ``api_keys``, ``share_links``, ``roles``, ``people``,
``audit`` (with the CSV export) and ``status``; ``_common`` has what several pages share.
Their templates are ``templates/admin/*.html``, built from the macros in ``_macros.html``.
"""

from __future__ import annotations

import datetime as dt

from authlib.integrations.flask_client import OAuth
from flask import Flask

from authsvc.config import Settings
from authsvc.views.admin import album
from authsvc.views.admin import album_list
from authsvc.views.admin import api_keys
from authsvc.views.admin import audit
from authsvc.views.admin import people
from authsvc.views.admin import roles
from authsvc.views.admin import share_links
from authsvc.views.admin import sharing
from authsvc.views.admin import sign_in
from authsvc.views.admin import status
from authsvc.views.admin import studies
from authsvc.views.admin._blueprint import IDP_CLIENT
from authsvc.views.admin._blueprint import OAUTH_EXTENSION
from authsvc.views.admin._blueprint import bp

# The pages: each module adds its routes to ``bp`` when imported.
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
