"""authsvc.credentials.share_link_records: share links as a service (create, validate, decode,
list, revoke).

Builds on the pure :mod:`authsvc.credentials.share_links` (sealing, legacy HS256 tokens,
resource matching, links) and :func:`authsvc.policy.decide_token_access` (which HTTP methods a
token allows), and adds what needs state: the ``share_token`` rows that make tokens listable and
revocable, the audit events, the known Orthanc servers, and a short per-process revocation cache.

Rules (protocol spec §3.1, §3.4, §3.5, §10.3, §10.4):

* validation grants only when the token is authentic, unexpired, not revoked, issued for the
  requesting server, covers the requested resource, and the method is a read (``get``, or the
  plugin's internal ``post`` for ``/tools/find``); everything else is ``granted: false``;
* decoding returns ``resources`` only for a valid token; otherwise ``error-code`` says why;
* a request naming an Orthanc server authsvc does not know (``server-id``) gets nothing.

Legacy orthanc-auth-service tokens (HS256, when ``legacy_share_secret`` is set) are validated
and decoded too, so links already sent keep working; they have no row and cannot be revoked one
by one (remove the legacy secret to revoke them all).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from authsvc import audit
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.credentials.lifecycle import USER_TAG_PREFIX
from authsvc.credentials.lifecycle import MakerRights
from authsvc.credentials.read_token_records import verify_read_token
from authsvc.credentials.records import lifetime_state
from authsvc.credentials.records import revoke_row
from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import ExpectedServer
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.sealing import new_token_id
from authsvc.credentials.sealing import token_purpose
from authsvc.credentials.share_links import INSTANT_LINK_TYPES
from authsvc.credentials.share_links import LegacyShareKey
from authsvc.credentials.share_links import PublicRoots
from authsvc.credentials.share_links import ResourceLevel
from authsvc.credentials.share_links import ResourceRef
from authsvc.credentials.share_links import ShareTokenClaims
from authsvc.credentials.share_links import TokenType
from authsvc.credentials.share_links import check_creatable
from authsvc.credentials.share_links import creation_url
from authsvc.credentials.share_links import decode_legacy_token
from authsvc.credentials.share_links import issue_share_token
from authsvc.credentials.share_links import read_share_token
from authsvc.credentials.share_links import redirect_url
from authsvc.credentials.share_links import resources_match
from authsvc.credentials.share_links import share_expires_at
from authsvc.errors import AuthsvcError
from authsvc.errors import NotFound
from authsvc.errors import ShareTokenExpired
from authsvc.errors import TokenInvalid
from authsvc.errors import TokenRevoked
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.models import ShareToken
from authsvc.models import utcnow
from authsvc.orthanc import OrthancServers
from authsvc.orthanc.plugin_protocol import CreateRequest
from authsvc.orthanc.plugin_protocol import DecodeErrorCode
from authsvc.orthanc.plugin_protocol import ValidateRequest
from authsvc.orthanc.plugin_protocol import decode_reply
from authsvc.orthanc.plugin_protocol import resource_json
from authsvc.orthanc.study_labels import StudyLabelCache
from authsvc.policy import CredentialKind
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import TokenKind
from authsvc.policy import decide_token_access

__all__ = ["CreatedShareToken", "ShareTokenService", "share_token_json"]

# MedDream links need a token from MedDream's own service, which authsvc does not talk to.
_UNSUPPORTED_TYPES = frozenset(
    {TokenType.MEDDREAM_INSTANT_LINK, TokenType.MEDDREAM_VIEWER_PUBLICATION}
)


@dataclass(frozen=True)
class CreatedShareToken:
    """A new share token: show ``token``/``url`` once; ``row`` is what is stored."""

    token: str
    url: str | None
    row: ShareToken


class ShareTokenService:
    """Share tokens for one app: keys, public roots, lifetime rules and known servers."""

    def __init__(
        self,
        *,
        ring: KeyRing | None,
        legacy_key: LegacyShareKey | None,
        roots: PublicRoots,
        known_servers: Iterable[str | None],
        max_lifetime: timedelta | None,
        never_expires_allowed: bool,
        rights: MakerRights,
        orthanc: OrthancServers,
        study_labels: StudyLabelCache,
        read_keys: KeyRing | None,
        revocation_ttl: float = 5.0,
    ) -> None:
        """Store the configuration and collaborators; does no I/O.

        ``rights`` judges a link's maker now, ``orthanc`` and ``study_labels`` read a study's
        labels when the plugin sent none, ``read_keys`` opens album read tokens (None: off).
        """
        self.rights = rights
        self.orthanc = orthanc
        self.study_labels = study_labels
        self.read_keys = read_keys
        self.ring = ring
        self.legacy_key = legacy_key
        self.roots = roots
        self.known_servers = frozenset(known_servers)
        self.max_lifetime = max_lifetime
        self.never_expires_allowed = never_expires_allowed
        self._revocation_ttl = revocation_ttl
        self._revoked_cache: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    # -- reading a token ------------------------------------------------------------------------

    def read(
        self, token: str, *, now: datetime, expected_server_id: ExpectedServer = ANY_SERVER
    ) -> ShareTokenClaims:
        """Verify a share token of either format and check its revocation.

        :raise TokenInvalid: not an authentic share token, or for another server.
        :raise ShareTokenExpired: authentic but expired.
        :raise TokenRevoked: revoked (or its row is gone).
        """
        if not token:
            raise TokenInvalid()
        if self.ring is None:
            if self.legacy_key is None or token_purpose(token) is not None:
                raise TokenInvalid()
            claims = decode_legacy_token(self.legacy_key, token, now=now)
        else:
            claims = read_share_token(
                token,
                ring=self.ring,
                legacy_key=self.legacy_key,
                now=now,
                expected_server_id=expected_server_id,
            )
        if claims.token_id is not None and self._is_revoked(claims.token_id):
            raise TokenRevoked("This share link has been revoked.")
        return claims

    def _is_revoked(self, token_id: str) -> bool:
        """Tell whether the token is revoked (answers cached ``revocation_ttl`` seconds).

        The worker that revokes a token knows at once, the others within the TTL (the app
        sets one second: a viewer's burst of validations of one link costs one query, and a
        revocation reaches every worker at once for all practical purposes).
        """
        now = time.monotonic()
        with self._lock:
            cached = self._revoked_cache.get(token_id)
        if cached is not None and now - cached[1] < self._revocation_ttl:
            return cached[0]
        row = db.session.get(ShareToken, token_id)
        # No row: never issued here (a key shared with another deployment) or deleted.
        revoked = row is None or row.revoked_at is not None
        with self._lock:
            if len(self._revoked_cache) > 10_000:
                self._revoked_cache.clear()
            self._revoked_cache[token_id] = (revoked, now)
        return revoked

    # -- C1 ---------------------------------------------------------------------------------------

    def validate(self, request: ValidateRequest, *, now: datetime) -> Decision:
        """Decide a ``/tokens/validate`` call (deny by default; the reason is safe to log)."""
        if not request.token:
            return Denied("no token")
        if request.server_id not in self.known_servers:
            return Denied("unknown server-id")
        album = self._album_token_decision(request)
        if album is not None:
            return album
        resource = request.requested_resource()
        if resource is None:
            return Denied("no resource to check (system level or no ids)")
        try:
            claims = self.read(request.token, now=now, expected_server_id=request.server_id)
        except AuthsvcError as exc:
            return Denied(f"token refused: {exc.code}")
        if not resources_match(claims, resource):
            return Denied("the token does not cover this resource")
        backing = self.maker_backing(claims, self._study_labels(claims, resource, request))
        if not backing:
            return Denied(f"share link suspended: {backing.reason}")
        kind = (
            TokenKind.INSTANT_LINK
            if claims.token_type in INSTANT_LINK_TYPES
            else TokenKind.SHARE_LINK
        )
        return decide_token_access(kind, None, request.method)

    def _album_token_decision(self, request: ValidateRequest) -> Decision | None:
        """Decide ``/tokens/validate`` for an album read token (``ar1.``), or None if not one.

        Album read tokens open every study of one album and nothing else: the plugin sends the
        study's labels, so the token is granted when they contain the album's label (no call to
        Orthanc), the album lives on the requesting server, and the method only reads.
        """
        if token_purpose(request.token) is not Purpose.ALBUM_READ:
            return None
        if self.read_keys is None:
            return Denied("album read tokens are not enabled")
        try:
            grant = verify_read_token(self.rights, self.read_keys, request.token)
        except AuthsvcError as exc:
            return Denied(f"album read token refused: {exc.code}")
        if (grant.server_id or None) != request.server_id:
            return Denied("the token's album lives on another server")
        if request.requested_resource() is None or grant.label not in request.labels:
            return Denied("the study is not in the token's album")
        return decide_token_access(TokenKind.ALBUM_READ, None, request.method)

    def _study_labels(
        self, claims: ShareTokenClaims, requested: ResourceRef, request: ValidateRequest
    ) -> tuple[str, ...]:
        """Return the labels to judge a link's maker on, for a study the link covers.

        The plugin sends a resource's labels only when it has some at hand: it sends none for
        the study of a QIDO ``StudyInstanceUID=`` query (OHIF's first request) and none while
        its 60 s label cache predates the study's labels. Then the study's labels are read
        from Orthanc (cached, authsvc's own credentials), by the token's own Orthanc id for
        that study; when Orthanc cannot say, none (the maker check then fails closed).
        """
        if (
            request.labels
            or requested.level is not ResourceLevel.STUDY
            # Only a link made for a user has a maker to judge: never ask Orthanc for others.
            or not (claims.issuer or "").startswith(USER_TAG_PREFIX)
        ):
            return request.labels
        client = self.orthanc.get(request.server_id or None)
        for granted in claims.resources:
            if (
                client is None
                or granted.level is not ResourceLevel.STUDY
                or not granted.orthanc_id
                or not resources_match(replace(claims, resources=(granted,)), requested)
            ):
                continue
            try:
                facts = self.study_labels.study(client, granted.orthanc_id)
            except AuthsvcError:
                return request.labels
            return tuple(sorted(facts.labels)) if facts is not None else request.labels
        return request.labels

    def maker_backing(self, claims: ShareTokenClaims, labels: Iterable[str]) -> Decision:
        """Return whether a link's maker may still make it for a study with these labels.

        Only links made for a signed-in user (``iss`` ``user:<sub>``) have a maker; the
        refusal is audited (throttled) with the link's id, never the link itself.
        """
        backing = self.rights.share_link(claims.issuer, claims.token_type.value, labels)
        if not backing and claims.token_id is not None:
            self.rights.audit_refusal(
                CredentialKind.SHARE_LINK,
                claims.token_id,
                f"share-token:{claims.token_id}",
                backing.reason,
            )
        return backing

    # -- C5 ---------------------------------------------------------------------------------------

    def decode(self, token: str, *, now: datetime) -> dict[str, Any]:
        """Answer a ``/tokens/decode`` call; resources only for a valid token."""
        if not token:
            return decode_reply(token_type=None, error_code=DecodeErrorCode.INVALID)
        try:
            claims = self.read(token, now=now)
        except ShareTokenExpired as exc:
            return decode_reply(token_type=exc.token_type, error_code=DecodeErrorCode.EXPIRED)
        except TokenRevoked:
            return decode_reply(token_type=None, error_code=DecodeErrorCode.INVALID)
        except AuthsvcError:
            return decode_reply(token_type=None, error_code=DecodeErrorCode.INVALID)
        if claims.token_type in _UNSUPPORTED_TYPES:
            return decode_reply(
                token_type=claims.token_type.value, error_code=DecodeErrorCode.UNKNOWN
            )
        return decode_reply(
            token_type=claims.token_type.value,
            error_code=None,
            redirect_url=redirect_url(claims.token_type, token, claims.resources, self.roots),
            resources=claims.resources,
        )

    # -- C4 ---------------------------------------------------------------------------------------

    def create(
        self, request: CreateRequest, *, created_by: str, now: datetime
    ) -> CreatedShareToken:
        """Mint a share token, store its row and audit it; the caller commits.

        :raise ValidationFailed: unknown/unsupported/disabled type, bad resources, bad expiry,
            unknown server (422).
        """
        try:
            token_type = TokenType(request.token_type)
        except ValueError:
            raise _problem("type", "Unknown token type.") from None
        if token_type in _UNSUPPORTED_TYPES:
            raise _problem("type", f"{token_type.value} links are not supported by authsvc.")
        if self.ring is None:
            raise _problem("type", "Share links are disabled: share_token_keys is not set.")
        if request.server_id not in self.known_servers:
            raise _problem("server-id", "This Orthanc server is not configured in authsvc.")
        expires_at = share_expires_at(
            now,
            expiration_date=request.expiration_date,
            validity_duration=request.validity_duration,
            max_lifetime=self.max_lifetime,
        )
        if expires_at is None and not self.never_expires_allowed:
            raise _problem("validity-duration", "Share links must expire; give a duration.")
        check_creatable(token_type, request.resources, self.roots)
        token_id = new_token_id()
        token = issue_share_token(
            self.ring,
            token_id=token_id,
            token_type=token_type,
            resources=request.resources,
            server_id=request.server_id,
            now=now,
            expires_at=expires_at,
            issuer=None if created_by == "plugin" else created_by,
            request_id=request.request_id,
        )
        url = creation_url(token_type, token, request.resources, self.roots)
        row = ShareToken(
            id=token_id,
            token_type=token_type.value,
            resources=[resource_json(r) for r in request.resources],
            server_id=request.server_id,
            created_by=created_by,
            request_id=request.request_id,
            created_at=now,
            expires_at=expires_at,
        )
        db.session.add(row)
        audit.record(
            AuditAction.token_share_create,
            created_by,
            f"share-token:{token_id}",
            Outcome.success,
            {
                "type": token_type.value,
                "resources": [r.dicom_uid or r.orthanc_id for r in request.resources],
                "server_id": request.server_id,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
        return CreatedShareToken(token=token, url=url, row=row)

    # -- listing and revoking ---------------------------------------------------------------------

    def list(self, *, created_by: str | None, limit: int = 500) -> list[ShareToken]:
        """Return share token rows, newest first (``created_by`` None: everyone's)."""
        query = sa.select(ShareToken).order_by(ShareToken.created_at.desc(), ShareToken.id)
        if created_by is not None:
            query = query.where(ShareToken.created_by == created_by)
        return list(db.session.scalars(query.limit(limit)))

    def get(self, token_id: str) -> ShareToken:
        """Return a share token row.

        :raise NotFound: no such token.
        """
        row = db.session.get(ShareToken, token_id)
        if row is None:
            raise NotFound("No such share token.")
        return row

    def revoke(self, row: ShareToken, *, actor: str, now: datetime) -> None:
        """Revoke a share token (idempotent) and audit it; the caller commits."""
        revoke_row(
            row,
            now=now,
            revoked_by=actor,
            event=AuditAction.token_share_revoke,
            actor=actor,
            target=f"share-token:{row.id}",
            details={"type": row.token_type},
        )
        with self._lock:
            self._revoked_cache[row.id] = (True, time.monotonic())


def _problem(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def share_token_json(
    row: ShareToken, *, now: datetime | None = None, suspension: str | None = None
) -> dict[str, Any]:
    """Return a share token row for the JSON API (never the token itself).

    ``suspension``: why a link in force no longer works (its maker lost the right, see
    :meth:`authsvc.credentials.lifecycle.MakerRights.share_link_suspension`); the ``status`` is then
    ``suspended``.
    """
    now = now or utcnow()
    status: str = lifetime_state(row, now)
    if status == "active" and suspension:
        status = "suspended"
    return {
        "id": row.id,
        "type": row.token_type,
        "resources": row.resources,
        "server_id": row.server_id,
        "created_by": row.created_by,
        "request_id": row.request_id,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "status": status,
        "reason": suspension if status == "suspended" else None,
    }
