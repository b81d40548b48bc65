"""The HTTP side of authentication: read the caller's credentials, once per request.

Every view that needs to know who is calling uses these helpers:

* :func:`current_identity` — the caller's identity (anonymous when no credentials were sent);
  invalid credentials raise (401), an unreachable OIDC provider raises (503): fail closed;
* :func:`require_identity` — the same, but anonymous callers get 401 too;
* :func:`current_actor` — the :class:`~authsvc.policy.Actor` to hand to the policy;
* :func:`login_required` — a decorator doing :func:`require_identity` before the view.

Credentials come from ``Authorization: Bearer <JWT or API key>`` and from the API key header
(``api_key_header``, default ``api-key``). Results are cached on ``g`` for the request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec
from typing import TypeVar

from flask import g
from flask import request

from authsvc.errors import AuthsvcError
from authsvc.errors import Unauthenticated
from authsvc.identity import Identity
from authsvc.identity.authn import Credentials
from authsvc.identity.roles import Profile
from authsvc.policy import Actor
from authsvc.services import services

P = ParamSpec("P")
R = TypeVar("R")

_BEARER = "bearer "


def actor_for(identity: Identity) -> Actor:
    """Return the policy actor of the identity (the app's :class:`Authenticator`)."""
    return services().authenticator.actor(identity)


def profile_for(identity: Identity, *, with_albums: bool = True) -> Profile:
    """Return the identity's profile, album grants included unless asked otherwise."""
    return services().authenticator.profile(identity, with_albums=with_albums)


def bearer_from_header(value: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not value or not value[: len(_BEARER)].lower() == _BEARER:
        return None
    return value[len(_BEARER) :].strip() or None


def request_credentials() -> Credentials:
    """Return the credentials the current request carries (not yet checked)."""
    header = services().settings.api_key_header
    return Credentials(
        bearer=bearer_from_header(request.headers.get("Authorization")),
        api_key=request.headers.get(header) or None,
    )


def current_identity() -> Identity:
    """Return who is calling; the anonymous identity when no credentials were sent.

    :raise 401: credentials were sent but are invalid, expired or revoked.
    :raise 503: the OIDC provider is needed and cannot be reached (fail closed).
    """
    if "authsvc_identity" in g:
        identity: Identity = g.authsvc_identity
        return identity
    error: AuthsvcError | None = g.get("authsvc_identity_error")
    if error is not None:
        raise error
    try:
        identity = services().authenticator.authenticate(request_credentials())
    except AuthsvcError as exc:
        g.authsvc_identity_error = exc
        raise
    g.authsvc_identity = identity
    if not identity.is_anonymous:
        # Who made a credential is checked against their last identity seen
        # (authsvc.credentials.lifecycle).
        services().users.remember(identity)
    return identity


def require_identity() -> Identity:
    """Return the caller's identity; anonymous callers are refused.

    :raise 401: no credentials, or invalid ones.
    :raise 503: the OIDC provider cannot be reached.
    """
    identity = current_identity()
    if identity.is_anonymous:
        raise Unauthenticated("Authentication is required: send a bearer token or an API key.")
    return identity


def current_actor() -> Actor:
    """Return the policy actor of the caller (anonymous actor when no credentials)."""
    if "authsvc_actor" in g:
        actor: Actor = g.authsvc_actor
        return actor
    actor = actor_for(current_identity())
    g.authsvc_actor = actor
    return actor


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    """Decorate a view so that anonymous or badly authenticated callers get 401 (or 503)."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        require_identity()
        return view(*args, **kwargs)

    return wrapped
