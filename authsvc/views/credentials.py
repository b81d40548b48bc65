"""The JSON API for credentials and settings: ``/api/api-keys``, ``/api/share-tokens``,
``/api/roles``.

Callers authenticate with a Keycloak bearer token or an API key (:mod:`authsvc.views.auth`).
What they may do comes from the policy's account rules: everyone manages their own API keys
and the share tokens they created; global admins manage everyone's, create service-account
keys, and edit the roles configuration. Other people's keys and tokens answer 404.

* ``POST /api/api-keys`` ``{"name", "expires_in_days"?, "roles"?}`` -> 201 with ``key`` (shown
  once). Admins add ``"service_account": true`` and the ``roles`` the key holds.
* ``GET /api/api-keys`` (``?all=true`` for admins), ``GET|DELETE /api/api-keys/<id>``.
* ``GET /api/share-tokens`` (``?all=true`` for admins), ``GET|DELETE /api/share-tokens/<id>``.
* ``GET /api/roles`` -> ``{"version", "roles", "available-labels", ...}`` with ``ETag``;
  ``PUT /api/roles`` with ``If-Match: "<version>"`` or a ``version`` field (409/412 when stale);
  ``GET /api/roles/history``.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request

from authsvc.credentials import api_key_records
from authsvc.credentials import lifecycle
from authsvc.credentials.api_key_records import actor_tag
from authsvc.credentials.api_key_records import key_json
from authsvc.credentials.share_link_records import share_token_json
from authsvc.credentials.share_links import ResourceLevel
from authsvc.credentials.share_links import ResourceRef
from authsvc.errors import Conflict
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import OrthancError
from authsvc.errors import PreconditionFailed
from authsvc.errors import Unauthenticated
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity.authn import Credentials
from authsvc.identity.roles import Profile
from authsvc.models import utcnow
from authsvc.orthanc.plugin_protocol import parse_orthanc_create
from authsvc.policy import Action
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import Target
from authsvc.policy import decide
from authsvc.policy import decide_share_creation
from authsvc.services import services
from authsvc.views.auth import bearer_from_header
from authsvc.views.auth import current_actor
from authsvc.views.auth import require_identity
from authsvc.views.requests import json_body

bp = Blueprint("credentials", __name__, url_prefix="/api")


def _enforce(decision: Decision) -> None:
    """Raise 404 for concealed denials, 403 for the others."""
    if decision:
        return
    if isinstance(decision, Denied) and decision.conceal:
        raise NotFound()
    raise Forbidden(f"Not allowed: {decision.reason}.")


def _wants_all() -> bool:
    return request.args.get("all", "").lower() in {"1", "true", "yes"}


def _object(allowed: set[str]) -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise ValidationFailed(details=[{"field": "", "message": "the body must be a JSON object"}])
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationFailed(details=[{"field": k, "message": "unknown field"} for k in unknown])
    return body


# --- API keys ------------------------------------------------------------------------------------


@bp.post("/api-keys")
def create_api_key() -> tuple[Response, int]:
    """Create an API key; the answer is the only time the key is shown.

    :raise 401: not authenticated. :raise 403: service-account key by a non-admin.
    :raise 422: bad name, expiry or roles (a user asking for roles they do not hold).
    """
    identity = require_identity()
    body = _object({"name", "expires_in_days", "roles", "service_account"})
    service = body.get("service_account", False)
    if not isinstance(service, bool):
        raise ValidationFailed(
            details=[{"field": "service_account", "message": "must be true or false"}]
        )
    _enforce(
        decide(
            current_actor(),
            Action.API_KEY_CREATE_SERVICE if service else Action.API_KEY_CREATE,
            target=Target(token_issued_by_actor=True),
        )
    )
    authenticator = services().authenticator

    def roles() -> list[str]:
        if service:
            if "roles" not in body:
                raise ValidationFailed(
                    details=[{"field": "roles", "message": "a service-account key needs roles"}]
                )
            return api_key_records.check_roles(
                body["roles"], allowed=authenticator.assignable_roles(), what="unknown roles"
            )
        # A user's key holds the user's configured roles, or fewer: never more.
        held_names = authenticator.key_roles_held(identity)
        if "roles" not in body:
            return sorted(held_names)
        return api_key_records.check_roles(
            body["roles"], allowed=held_names, what="roles you do not hold"
        )

    now = utcnow()
    created = api_key_records.create_key(
        identity,
        name=body.get("name"),
        expires_in_days=body.get("expires_in_days"),
        service=service,
        roles=roles,
        now=now,
    )
    db.session.commit()
    reply = key_json(created.row, now=now)
    reply["key"] = created.plaintext
    response = jsonify(reply)
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.get("/api-keys")
def list_api_keys() -> Response:
    """List the caller's own keys, or every key (``?all=true``, admins)."""
    identity = require_identity()
    if _wants_all():
        _enforce(decide(current_actor(), Action.API_KEY_LIST_ALL))
        rows = api_key_records.list_keys(owner_subject=None)
    else:
        _enforce(decide(current_actor(), Action.API_KEY_LIST))
        rows = api_key_records.list_keys(owner_subject=identity.subject)
    now = utcnow()
    return jsonify(items=[key_json(r, now=now) for r in rows])


def _key_for(identity: Identity, key_id: str) -> Any:
    row = api_key_records.get_key(key_id)
    own = api_key_records.is_owned_by(row, identity)
    _enforce(
        decide(current_actor(), Action.API_KEY_REVOKE, target=Target(token_issued_by_actor=own))
    )
    return row


@bp.get("/api-keys/<key_id>")
def get_api_key(key_id: str) -> Response:
    """Show one key (own, or any for admins; 404 otherwise)."""
    return jsonify(key_json(_key_for(require_identity(), key_id)))


@bp.delete("/api-keys/<key_id>")
def revoke_api_key(key_id: str) -> Response:
    """Revoke a key (own, or any for admins); it stops working at once in this process and
    within seconds in the others."""
    identity = require_identity()
    row = _key_for(identity, key_id)
    api_key_records.revoke_key(row, actor=identity, now=utcnow())
    db.session.commit()
    services().authenticator.api_keys.forget(row.id)
    services().profile_cache.clear()
    services().makers.forget()  # what a service key made stands on it
    return jsonify(key_json(row))


# --- share tokens --------------------------------------------------------------------------


@bp.get("/share-tokens")
def list_share_tokens() -> Response:
    """List the share tokens the caller created, or all of them (``?all=true``, admins)."""
    identity = require_identity()
    tokens = services().share_tokens
    if _wants_all():
        _enforce(decide(current_actor(), Action.SHARE_TOKEN_LIST_ALL))
        rows = tokens.list(created_by=None)
    else:
        _enforce(decide(current_actor(), Action.SHARE_TOKEN_LIST))
        rows = tokens.list(created_by=actor_tag(identity))
    now = utcnow()
    items = [
        share_token_json(r, now=now, suspension=services().makers.share_link_suspension(r))
        for r in rows
    ]
    return jsonify(items=items)


#: Orthanc id of a resource (five groups of eight hex digits), as in Orthanc's URLs.
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
_STUDY_OF = {
    ResourceLevel.STUDY: "/studies/{}",
    ResourceLevel.SERIES: "/series/{}/study",
    ResourceLevel.INSTANCE: "/instances/{}/study",
}


def _user_sees(profile: Profile, resources: tuple[ResourceRef, ...]) -> bool:
    """Tell whether every resource is a study (or part of one) the profile's labels cover.

    Resources need their Orthanc id (OE2 always sends it); a patient spans studies and is
    only shareable by users who see every study. An unknown resource is not visible.

    :raise OrthancUnavailable: Orthanc cannot be reached (fail closed: 503).
    """
    if profile.all_labels:
        return True
    if not resources:
        return False
    client = services().orthanc.get(services().settings.orthanc_server_id or None)
    if client is None:
        return False
    for resource in resources:
        template = _STUDY_OF.get(resource.level)
        orthanc_id = (resource.orthanc_id or "").lower()
        if template is None or not _ORTHANC_ID.fullmatch(orthanc_id):
            return False
        try:
            study = client.json("GET", template.format(orthanc_id))
        except OrthancError:
            return False  # 404 (or any refusal): nothing the user could see
        labels = study.get("Labels") if isinstance(study, dict) else None
        if not isinstance(labels, list) or profile.authorized_labels.isdisjoint(labels):
            return False
    return True


def _oe2_identity() -> Identity:
    """Return the caller of an Orthanc-route request: OE2 sends its JWT in ``token``.

    :raise 401: no credentials, or invalid ones.
    """
    raw = (request.headers.get("token") or "").strip()
    if not raw:
        return require_identity()
    credentials = Credentials(bearer=bearer_from_header(raw) or raw)
    identity = services().authenticator.authenticate(credentials)
    if identity.is_anonymous:
        raise Unauthenticated("Authentication is required: send a bearer token or an API key.")
    return identity


@bp.put("/orthanc/auth/tokens/<token_type>")
def create_share_token_for_user(token_type: str) -> Response:
    """Orthanc's ``PUT /auth/tokens/<type>`` answered for the signed-in user.

    nginx (plugin.conf.template) sends OE2's "Share" and instant-link requests here instead of
    through the plugin, which would not tell authsvc who asked: the link is then recorded as
    made by the user, who lists and revokes it. The body and the answer are Orthanc's
    (``{"Token", "Url"}``). Allowed with the permission the plugin asks for that type, and
    only for studies the user can see.

    :raise 401: not signed in. :raise 403: not allowed. :raise 422: bad body or type.
    """
    identity = _oe2_identity()
    svc = services()
    req = parse_orthanc_create(token_type, json_body(), svc.settings.orthanc_server_id or None)
    profile = svc.profile_cache.get(identity, lambda: svc.authenticator.profile(identity))
    actor = svc.authenticator.actor(identity)
    decision = decide_share_creation(
        actor,
        token_type,
        permissions=profile.permissions,
        studies_visible=_user_sees(profile, req.resources),
    )
    if not decision:
        svc.decisions.count("create-for-user", "refused")
        raise Forbidden(f"Not allowed: {decision.reason}.")
    created = svc.share_tokens.create(req, created_by=actor_tag(identity), now=utcnow())
    db.session.commit()
    svc.decisions.count("create-for-user", "created")
    response = jsonify({"Token": created.token, "Url": created.url or None})
    response.headers["Cache-Control"] = "no-store"
    return response


def _share_token_for(identity: Identity, token_id: str) -> Any:
    row = services().share_tokens.get(token_id)
    own = row.created_by == actor_tag(identity)
    _enforce(
        decide(current_actor(), Action.SHARE_TOKEN_REVOKE, target=Target(token_issued_by_actor=own))
    )
    return row


@bp.get("/share-tokens/<token_id>")
def get_share_token(token_id: str) -> Response:
    """Show one share token (never the token itself)."""
    return jsonify(share_token_json(_share_token_for(require_identity(), token_id)))


@bp.delete("/share-tokens/<token_id>")
def revoke_share_token(token_id: str) -> Response:
    """Revoke a share token: validation and decoding refuse it from now on."""
    identity = require_identity()
    row = _share_token_for(identity, token_id)
    services().share_tokens.revoke(row, actor=actor_tag(identity), now=utcnow())
    db.session.commit()
    return jsonify(share_token_json(row))


# --- roles configuration ------------------------------------------------------------------------


def _roles_response(status: int = 200) -> Response:
    snapshot = services().roles.load()
    body = {"version": snapshot.version, **snapshot.config.to_json()}
    response = jsonify(body)
    response.status_code = status
    response.headers["ETag"] = f'"{snapshot.version}"'
    return response


@bp.get("/roles")
def get_roles() -> Response:
    """Return the roles configuration with its version (admins)."""
    require_identity()
    _enforce(decide(current_actor(), Action.ROLES_VIEW))
    return _roles_response()


def _expected_version(body: dict[str, Any]) -> int:
    header = request.headers.get("If-Match")
    if header is not None:
        value = header.strip().removeprefix("W/").strip('"')
        if not value.isdigit():
            raise PreconditionFailed('If-Match must name a roles version, e.g. "3".')
        return int(value)
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValidationFailed(
            details=[
                {
                    "field": "version",
                    "message": "give the version you edited (field or If-Match header)",
                }
            ]
        )
    return version


@bp.put("/roles")
def put_roles() -> Response:
    """Replace the roles configuration if it is still at the version the caller edited.

    :raise 403: not an admin. :raise 409/412: stale version. :raise 422: invalid document.
    """
    identity = require_identity()
    _enforce(decide(current_actor(), Action.ROLES_EDIT))
    body = json_body()
    if not isinstance(body, dict):
        raise ValidationFailed(details=[{"field": "", "message": "the body must be a JSON object"}])
    expected = _expected_version(body)
    document = {k: v for k, v in body.items() if k != "version"}
    try:
        services().roles.save(
            document, actor=actor_tag(identity), source="api", expected_version=expected
        )
    except Conflict as exc:
        db.session.rollback()
        if request.headers.get("If-Match") is not None:
            raise PreconditionFailed() from exc
        raise
    db.session.commit()
    return _roles_response()


@bp.get("/roles/history")
def roles_history() -> Response:
    """Return who changed the roles configuration, when and how (admins)."""
    require_identity()
    _enforce(decide(current_actor(), Action.ROLES_VIEW))
    items = [
        {
            "version": h.version,
            "changed_at": h.changed_at.isoformat(),
            "changed_by": h.changed_by,
            "source": h.source,
            "document": h.document,
        }
        for h in services().roles.history()
    ]
    return jsonify(items=items)


# --- people: disable / enable in authsvc ----------------------------------------------------------

_SUBJECT_MAX = 255


def _person_json(row: Any) -> dict[str, Any]:
    return {
        "subject": row.subject,
        "username": row.username,
        "name": row.name,
        "disabled": row.disabled_at is not None,
        "disabled_at": row.disabled_at.isoformat() if row.disabled_at else None,
        "disabled_by": row.disabled_by,
        "last_seen_at": row.last_seen_at.isoformat(),
    }


def _set_disabled(subject: str, *, disabled: bool) -> Response:
    identity = require_identity()
    _enforce(decide(current_actor(), Action.USER_DISABLE))
    if not subject or len(subject) > _SUBJECT_MAX or not subject.isprintable():
        raise ValidationFailed(details=[{"field": "subject", "message": "not a subject"}])
    if subject == identity.subject and disabled:
        raise Conflict("Admins cannot disable themselves.")
    row = lifecycle.set_disabled(subject, disabled=disabled, actor=actor_tag(identity))
    db.session.commit()
    svc = services()
    svc.makers.forget()
    svc.authenticator.api_keys.clear()
    return jsonify(_person_json(row))


@bp.post("/users/<path:subject>/disable")
def disable_user(subject: str) -> Response:
    """Disable a person in authsvc (admins): every credential they made stops, and their
    sign-in to the admin pages. Their Keycloak account is not touched (disable it there too).

    :raise 403: not an admin, or an API key. :raise 409: one's own account. :raise 422.
    """
    return _set_disabled(subject, disabled=True)


@bp.post("/users/<path:subject>/enable")
def enable_user(subject: str) -> Response:
    """Enable a person again (admins): their credentials still in force work again.

    :raise 403: not an admin. :raise 404: authsvc does not know this person.
    """
    return _set_disabled(subject, disabled=False)
