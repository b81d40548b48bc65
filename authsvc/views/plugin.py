"""The Orthanc authorization plugin's callbacks (protocol spec §2-§3, §10-§12).

``POST /user/get-profile`` (alias ``/user/profile``), ``POST /tokens/validate``,
``PUT /tokens/<type>``, ``POST /tokens/decode``, ``GET|PUT /settings/roles``.

The plugin authenticates with HTTP Basic (``plugin_username``/``plugin_password``, compared in
constant time; 401 with ``WWW-Authenticate: Basic`` otherwise). The user's token is read only
from the JSON body, never from headers (the plugin also copies it into a header on validation,
which could clash with its own Basic credentials). Bodies arrive chunked; ``json_body`` reads
them. Every reply is built by :mod:`authsvc.orthanc.plugin_protocol`.

Failure rules: a token that cannot be used gives the anonymous profile, ``granted: false`` or
an ``error-code`` (HTTP 200, so the plugin may cache the "no"); a dependency that is down
(Keycloak, the database) gives 503, which the plugin treats as "no" without caching it, so
access comes back as soon as the dependency does.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from typing import ParamSpec
from typing import TypeVar

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request
from sqlalchemy.exc import SQLAlchemyError

from authsvc.errors import AuthsvcError
from authsvc.errors import DependencyUnavailable
from authsvc.errors import Forbidden
from authsvc.errors import IdentityProviderUnavailable
from authsvc.extensions import db
from authsvc.identity.authn import Credentials
from authsvc.identity.roles import Profile
from authsvc.models import utcnow
from authsvc.orthanc.plugin_protocol import anonymous_profile_reply
from authsvc.orthanc.plugin_protocol import create_reply
from authsvc.orthanc.plugin_protocol import parse_create
from authsvc.orthanc.plugin_protocol import parse_profile
from authsvc.orthanc.plugin_protocol import parse_token_request
from authsvc.orthanc.plugin_protocol import parse_validate
from authsvc.orthanc.plugin_protocol import profile_reply
from authsvc.orthanc.plugin_protocol import validate_reply
from authsvc.policy import ORTHANC_SERVICE_PERMISSIONS
from authsvc.services import services
from authsvc.views.errors import render_error
from authsvc.views.requests import json_body

log = logging.getLogger(__name__)

bp = Blueprint("plugin", __name__)

P = ParamSpec("P")
R = TypeVar("R")

_NOTHING = Profile(permissions=frozenset(), authorized_labels=frozenset(), roles=frozenset())
#: The profile of authsvc's own service key: every label, the few permissions it needs.
_SERVICE = Profile(
    permissions=ORTHANC_SERVICE_PERMISSIONS, authorized_labels=frozenset({"*"}), roles=frozenset()
)
#: The ``user-id`` of that profile (what the plugin's audit logs would name).
SERVICE_USER_ID = "authsvc-service"


def _without_bearer(token: str) -> str:
    """Return the token without a ``Bearer`` prefix (the key may be sent as Authorization)."""
    scheme, _, rest = token.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else token


def _same(given: str | None, expected: str) -> bool:
    """Compare secrets in constant time (bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest((given or "").encode("utf-8"), expected.encode("utf-8"))


@bp.before_request
def check_plugin_credentials() -> Response | None:
    """Refuse callers without the plugin's HTTP Basic credentials (401, Basic challenge)."""
    settings = services().settings
    try:
        auth = request.authorization
    except ValueError:  # Werkzeug's Basic parser raises on non-ASCII text (a 500 before)
        auth = None
    ok = False
    if settings.plugin_password and auth is not None and auth.type == "basic":
        # Both compared every time (no short-circuit): timing reveals neither.
        user_ok = _same(auth.username, settings.plugin_username)
        password_ok = _same(auth.password, settings.plugin_password)
        ok = user_ok and password_ok
    if ok:
        return None
    services().decisions.count("plugin-auth", "denied")
    message = "The Orthanc plugin's HTTP Basic credentials are missing or wrong."
    if not settings.plugin_password:
        message = "Plugin callbacks are disabled: plugin_password is not configured."
    response = render_error(401, "unauthenticated", message)
    response.headers["WWW-Authenticate"] = 'Basic realm="authsvc", charset="UTF-8"'
    return response


def _database_guard(view: Callable[P, R]) -> Callable[P, R]:
    """Turn database outages into 503 (the plugin then denies without caching)."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return view(*args, **kwargs)
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("database error in a plugin callback: %s", type(exc).__name__)
            raise DependencyUnavailable("The database is unavailable; try again later.") from exc

    return wrapped


def _reply(body: Any) -> Response:
    """Serialise a reply (compact JSON; the hot path skips jsonify's provider lookups)."""
    return current_app.response_class(
        json.dumps(body, separators=(",", ":")), mimetype="application/json"
    )


# --- C2/C3 ---------------------------------------------------------------------------------------


@bp.post("/user/get-profile")
@bp.post("/user/profile")
@_database_guard
def get_profile() -> Response:
    """Return the profile of the token's owner, the anonymous profile, or a user-id lookup."""
    svc = services()
    validity = svc.settings.plugin_validity
    req = parse_profile(json_body())
    if req.is_user_id_lookup:
        name = svc.users.name_of(req.user_id or "")
        svc.decisions.count("profile-user-id", "found" if name else "unknown")
        if name is None:
            return _reply(None)
        return _reply(
            profile_reply(
                name=name, user_id=req.user_id, profile=_NOTHING, groups=[], validity=validity
            )
        )
    authenticator = svc.authenticator
    if req.token and svc.orthanc.is_service_key(_without_bearer(req.token), req.server_id):
        # authsvc itself, calling this Orthanc to label, upload and look up studies.
        svc.decisions.count("profile", "service")
        return _reply(
            profile_reply(
                name="authsvc",
                user_id=SERVICE_USER_ID,
                profile=_SERVICE,
                groups=[],
                validity=validity,
            )
        )
    if req.token:
        try:
            identity = authenticator.authenticate(Credentials(bearer=req.token))
        except IdentityProviderUnavailable:
            svc.decisions.count("profile", "unavailable")
            raise
        except AuthsvcError as exc:
            # Share links, expired or forged JWTs, unknown API keys: anonymous, so the plugin
            # falls back to token validation (protocol spec §3.2, P5/P6).
            log.debug("profile: token refused (%s); answering anonymous", exc.code)
        else:
            if not identity.is_anonymous:
                svc.users.remember(identity)
                profile = svc.profile_cache.get(identity, lambda: authenticator.profile(identity))
                svc.decisions.count("profile", "user")
                return _reply(
                    profile_reply(
                        name=identity.name or identity.username,
                        user_id=identity.subject,
                        profile=profile,
                        groups=sorted(identity.groups),
                        validity=validity,
                    )
                )
    svc.decisions.count("profile", "anonymous")
    anonymous = authenticator.anonymous
    profile = svc.profile_cache.get(anonymous, lambda: authenticator.profile(anonymous))
    return _reply(anonymous_profile_reply(profile, validity))


# --- C1 ------------------------------------------------------------------------------------------


@bp.post("/tokens/validate")
@_database_guard
def validate_token() -> Response:
    """Decide whether the token may access the resource with this method."""
    svc = services()
    req = parse_validate(json_body())
    decision = svc.share_tokens.validate(req, now=utcnow())
    svc.decisions.count("validate", "granted" if decision else "denied")
    if not decision:
        log.debug("validate: denied (%s)", decision.reason)
    return _reply(validate_reply(bool(decision), svc.settings.plugin_validity))


# --- C4 ------------------------------------------------------------------------------------------


@bp.put("/tokens/<token_type>")
@_database_guard
def create_token(token_type: str) -> Response:
    """Create a share token of ``token_type`` for the plugin (OE2 "Share", instant links).

    :raise 400: the body's type differs from the URL's.
    :raise 422: unknown or disabled type, bad resources or expiry, unknown server.
    """
    svc = services()
    req = parse_create(token_type, json_body())
    if not svc.settings.plugin_share_links:
        # The plugin names no user: such a link would belong to nobody and could name any
        # study. This deployment makes links through nginx's user-aware route instead.
        svc.decisions.count("create", "refused")
        raise Forbidden(
            "Share links are made through authsvc's own route on this server "
            "(PUT /api/orthanc/auth/tokens/<type>); the plugin's route is turned off."
        )
    try:
        created = svc.share_tokens.create(req, created_by="plugin", now=utcnow())
        db.session.commit()
    except AuthsvcError:
        svc.decisions.count("create", "refused")
        raise
    svc.decisions.count("create", "created")
    return _reply(create_reply(created.token, created.url))


# --- C5 ------------------------------------------------------------------------------------------


@bp.post("/tokens/decode")
@_database_guard
def decode_token() -> Response:
    """Tell what a token is; resources only for a valid one."""
    svc = services()
    token = parse_token_request(json_body())
    reply = svc.share_tokens.decode(token, now=utcnow())
    svc.decisions.count("decode", reply["error-code"] or "valid")
    return _reply(reply)


# --- C6/C7 ---------------------------------------------------------------------------------------


@bp.get("/settings/roles")
@_database_guard
def get_roles() -> Response:
    """Return the roles configuration in the plugin's JSON shape, as stored right now.

    Read from the database on every call (one primary-key read; OE2 asks on page loads, not per
    image), never from this worker's cache: a change made through any worker or instance is
    what the next GET returns.
    """
    return _reply(services().roles.load().config.to_json())


@bp.put("/settings/roles")
@_database_guard
def put_roles() -> Response:
    """Replace the roles configuration (the plugin adds ``server-id``, which is dropped).

    :raise 422: the document is not a valid roles configuration.
    """
    body = json_body()
    if isinstance(body, dict):
        body.pop("server-id", None)
    services().roles.save(body, actor="plugin", source="plugin")
    db.session.commit()
    return _reply(None)
