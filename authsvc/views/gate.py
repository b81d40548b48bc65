"""``GET /gate/auth``: nginx ``auth_request``'s decision point (logic: :mod:`authsvc.orthanc.gate`).

nginx sends the original method and URI (``X-Original-Method``, ``X-Original-URI``) and every
client header. The answer is a status and two small headers, never a body worth reading:

* 200: forward the request; 401: no or bad credentials (with ``WWW-Authenticate``);
* 403: the policy says no, or something failed on our side (Orthanc, database, OIDC provider):
  fail closed. nginx turns any other status into a 500, so no other status ever leaves here.

``X-Authsvc-Reason`` says why (short, safe: never a token or a URI). ``X-Accel-Expires`` says
how long nginx may reuse a "yes" to a read (``gate_cache_seconds``; "no" and writes: never).

Credentials are looked for in ``Authorization: Bearer``, the ``token`` header and the ``token``
query argument (OE2's names) and the API key header. Each value is either a *link token* — an
album read token (``ar1.…``), a share link (``sh1.…``) or a legacy orthanc-auth-service link (an
HS256 JWT) — or an *identity* (a Keycloak JWT, an API key). The identity is tried first, then
the link: a user who opens a link to a study outside their albums still gets it, read-only.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from urllib.parse import parse_qsl

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request

from authsvc.credentials.read_token_records import verify_read_token
from authsvc.credentials.sealing import TOKEN_TAGS
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.share_links import INSTANT_LINK_TYPES
from authsvc.credentials.share_links import ResourceLevel
from authsvc.credentials.share_links import ResourceRef as ShareResource
from authsvc.credentials.share_links import resources_match
from authsvc.errors import AuthsvcError
from authsvc.errors import Unauthenticated
from authsvc.identity.authn import Credentials
from authsvc.models import utcnow
from authsvc.orthanc.gate import Caller
from authsvc.orthanc.gate import GateAnswer
from authsvc.orthanc.gate import GateEngine
from authsvc.orthanc.routes import DEFAULT_CLASSIFIER
from authsvc.orthanc.study_labels import StudyFacts
from authsvc.orthanc.study_labels import TtlMap
from authsvc.policy import Actor
from authsvc.policy import TokenKind
from authsvc.services import services
from authsvc.views.auth import bearer_from_header

log = logging.getLogger(__name__)

bp = Blueprint("gate", __name__)

REASON_HEADER = "X-Authsvc-Reason"
#: nginx's own caching header: seconds its proxy_cache may keep this answer (0: not at all).
CACHE_HEADER = "X-Accel-Expires"
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
#: Seconds a caller's rights are reused (the roles and membership caches live as long).
CALLER_TTL = 5.0
_CALLERS_KEY = "authsvc.gate.callers"
TOKEN_NAME = "token"
_READ_TOKEN_PREFIX = TOKEN_TAGS[Purpose.ALBUM_READ] + "."
_TOKEN_PREFIXES = (_READ_TOKEN_PREFIX, TOKEN_TAGS[Purpose.SHARE] + ".")


def engine() -> GateEngine:
    """Return the gate engine of this app (cheap: it only bundles long-lived collaborators)."""
    svc = services()
    return GateEngine(DEFAULT_CLASSIFIER, svc.study_labels, lambda: svc.orthanc.get(None))


def _query_token(uri: str) -> str | None:
    """Return the ``token`` query argument of the original URI, if any."""
    _, _, query = uri.partition("?")
    if not query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == TOKEN_NAME:
            return value
    return None


def _is_link_token(value: str) -> bool:
    """Return True for a share link or album read token, False for an identity credential.

    Sealed tokens say what they are (``ar1.``/``sh1.``). A JWT signed with a shared secret
    (``HS*``) can only be a legacy orthanc-auth-service link: Keycloak signs with its private
    keys, and authsvc never accepts HMAC for identities. Anything else (a Keycloak JWT, an API
    key) identifies a user, as OE2 sends its Keycloak token in the ``token`` header.
    """
    if value.startswith(_TOKEN_PREFIXES):
        return True
    head, dot, _ = value.partition(".")
    if not dot or not head.startswith("eyJ"):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and str(header.get("alg", "")).upper().startswith("HS")


def _credentials(uri: str) -> tuple[str | None, Credentials]:
    """Return (a link token, the identity credentials) the request carries.

    Places looked at, in order: ``Authorization: Bearer``, the ``token`` header, the ``token``
    query argument (OE2's names), and the API key header.
    """
    link: str | None = None
    bearer: str | None = None
    for value in (
        bearer_from_header(request.headers.get("Authorization")),
        request.headers.get(TOKEN_NAME),
        _query_token(uri),
    ):
        value = (value or "").strip()
        if not value:
            continue
        if _is_link_token(value):
            link = link or value
        else:
            bearer = bearer or value
    api_key = request.headers.get(services().settings.api_key_header) or None
    return link, Credentials(bearer=bearer, api_key=api_key)


def _token_caller(token: str) -> Caller:
    """Return the caller a token makes (album read token or share link).

    :raise 401: the token is invalid, expired or revoked, or tokens of its kind are disabled.
    """
    svc = services()
    if token.startswith(_READ_TOKEN_PREFIX):
        if svc.upload_keys is None:
            raise Unauthenticated("Album read tokens are not enabled.")
        grant = verify_read_token(svc.makers, svc.upload_keys, token)
        return Caller(Actor(""), token_kind=TokenKind.ALBUM_READ, token_album_label=grant.label)
    claims = svc.share_tokens.read(
        token, now=utcnow(), expected_server_id=svc.settings.orthanc_server_id or None
    )
    kind = (
        TokenKind.INSTANT_LINK if claims.token_type in INSTANT_LINK_TYPES else TokenKind.SHARE_LINK
    )

    def covers(study: StudyFacts) -> bool:
        wanted = ShareResource(ResourceLevel.STUDY, study.study_id, study.study_uid or None)
        if not resources_match(claims, wanted):
            return False
        # The link stands on its maker's rights: still allowed to share this study?
        return bool(svc.share_tokens.maker_backing(claims, study.labels))

    return Caller(Actor(""), token_kind=kind, token_covers=covers)


def gate_callers(uri: str) -> list[Caller]:
    """Return who is asking: the identity, the link token, or both (tried in that order).

    :raise 401: invalid credentials (Unauthenticated and its token subclasses).
    :raise 503: the OIDC provider or the database cannot be reached (AuthsvcError).
    """
    link, credentials = _credentials(uri)
    callers = []
    if credentials.present or link is None:
        callers.append(_identity_caller(credentials))
    if link is not None:
        callers.append(_token_caller(link))
    return callers


def _identity_caller(credentials: Credentials) -> Caller:
    """Return the caller an identity credential makes, with role labels and album roles."""
    svc = services()
    authenticator = svc.authenticator
    identity = authenticator.authenticate(credentials)
    # A viewer sends hundreds of requests a second with one identity: what the identity is
    # allowed (roles, album memberships) is kept as long as those caches keep it anyway.
    callers = _caller_cache()
    cached: Caller | None = callers.get(identity)
    if cached is not None:
        return cached
    actor = authenticator.actor(identity)
    if identity.is_anonymous:
        caller = Caller(actor)
    else:
        profile = authenticator.profile(identity, with_albums=False)
        email = identity.email if identity.email and identity.email_verified else None
        roles = svc.album_roles.roles(identity.subject, identity.group_names, email)
        caller = Caller(actor, role_labels=profile.authorized_labels, album_roles=roles)
    callers.put(identity, caller)
    return caller


def _caller_cache() -> TtlMap:
    """Return this app's identity -> Caller cache (as short-lived as the role caches)."""
    cache: TtlMap | None = current_app.extensions.get(_CALLERS_KEY)
    if cache is None:
        cache = current_app.extensions.setdefault(_CALLERS_KEY, TtlMap(CALLER_TTL, time.monotonic))
    return cache


def _respond(answer: GateAnswer, method: str) -> Response:
    response = Response(status=answer.status)
    response.headers[REASON_HEADER] = answer.reason
    if answer.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="authsvc"'
    # How long nginx may reuse this answer for requests with the same key (method, headers,
    # URI or study: nginx/authsvc_gate.js). Only a "yes" to a read: a "no" is never reused, so
    # access granted or restored shows at once, and writes are always asked about.
    seconds = services().settings.gate_cache_seconds if answer.allowed else 0
    response.headers[CACHE_HEADER] = str(seconds if method in _CACHEABLE_METHODS else 0)
    return response


@bp.get("/gate/auth")
def auth() -> Response:
    """Decide one request nginx is about to forward to Orthanc: 200, 401 or 403 only."""
    method = request.headers.get("X-Original-Method", "")
    uri = request.headers.get("X-Original-URI", "")
    gate = engine()
    try:
        target = gate.classify(method, uri)
        answer = GateAnswer(403, "no caller")
        for caller in gate_callers(uri):
            answer = gate.answer(caller, method, target)
            if answer.allowed:
                break
    except Unauthenticated as exc:
        answer = GateAnswer(401, exc.code)
    except AuthsvcError as exc:
        log.warning("gate: %s (%s)", exc.code, exc.status)
        answer = GateAnswer(403, exc.code)
    except Exception:
        # A bug must not become nginx's 500, nor an open door: deny, and leave a traceback.
        log.exception("gate: unexpected error")
        answer = GateAnswer(403, "internal-error")
    if not answer.allowed:
        log.info(
            "gate: %s %s %s -> %s (%s)",
            method if method.isalpha() and len(method) < 10 else "?",
            answer.action or "-",
            ",".join(answer.studies) or "-",
            answer.status,
            answer.reason,
        )
    return _respond(answer, method)
