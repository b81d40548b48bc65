"""authsvc.identity.authn: who is calling — credentials to :class:`Identity`, profile, actor.

The one authentication seam of the service. The JSON API, uploads, the nginx gate and the admin
pages all go through it (via ``authsvc.views.auth``, which reads the headers):

* :meth:`Authenticator.authenticate` turns :class:`Credentials` (a bearer JWT, or an API key)
  into an :class:`~authsvc.identity.Identity`; no credentials at all give
  :data:`~authsvc.identity.ANONYMOUS`, bad ones raise;
* :meth:`Authenticator.profile` composes the identity's plugin profile (permissions +
  authorized labels) from the stored roles configuration and, through the ``album_grants``
  it was given (:func:`authsvc.albums.grants_for`), its albums;
* :meth:`Authenticator.actor` reduces an identity to the :class:`~authsvc.policy.Actor` the
  policy needs.

The composition root (:mod:`authsvc.services`) builds one per app and hands it what lives in
other packages: the album grants, and whether a person or an API key's owner is disabled.

No ``flask.request`` here: callers pass the credentials in. The pieces that need the database
(API keys) use the app's session, so this runs inside an app context.

API keys are also accepted as ``Authorization: Bearer ask_...``, because many DICOMweb tools
(3D Slicer, scripts built on ``requests``) can only send a bearer token. The ``ask_`` prefix
cannot start a JWT (those start with ``eyJ``), so there is no ambiguity.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from authsvc.credentials.api_keys import API_KEY_PREFIX
from authsvc.credentials.api_keys import parse_api_key
from authsvc.credentials.api_keys import verify_api_key
from authsvc.errors import CredentialSuspended
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.errors import TokenRevoked
from authsvc.errors import Unauthenticated
from authsvc.extensions import db
from authsvc.identity import ANONYMOUS
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity import KeycloakVerifier
from authsvc.identity import normalize_group
from authsvc.identity.roles import Profile
from authsvc.identity.roles import RolesConfig
from authsvc.identity.roles import compose_profile
from authsvc.models import ApiKey
from authsvc.models import utcnow
from authsvc.policy import Actor
from authsvc.policy import is_global_admin

__all__ = [
    "ALL_PERMISSION",
    "ApiKeyCache",
    "Authenticator",
    "Credentials",
    "ProfileCache",
]

log = logging.getLogger(__name__)

#: The plugin permission that allows everything; holding it makes a global admin.
ALL_PERMISSION = "all"

#: identity -> (Orthanc labels, permissions) its album memberships give.
AlbumGrants = Callable[[Identity], tuple[frozenset[str], frozenset[str]]]


def _nobody_disabled(_subject: str) -> bool:
    return False


@dataclass(frozen=True)
class Credentials:
    """What a caller presented: the bearer token and/or the API key header, raw."""

    bearer: str | None = None
    api_key: str | None = None

    @property
    def present(self) -> bool:
        """Return True if the caller sent any credential at all."""
        return bool(self.bearer) or bool(self.api_key)


# --- API keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyRecord:
    """What a request needs from an ``api_key`` row (cached briefly per process)."""

    secret_hash: str
    identity: Identity
    expires_at: dt.datetime | None
    revoked: bool
    loaded_at: float
    #: The person a user key acts as is disabled in authsvc (see authsvc.credentials.lifecycle).
    owner_disabled: bool = False


class ApiKeyCache:
    """A short-lived per-process cache of API key rows, so a busy script costs no DB query.

    Entries live ``ttl`` seconds: a revocation made by another worker or replica takes effect
    within that time (the revoking process forgets the key at once, see :meth:`forget`).
    ``last_used_at`` is written at most once per ``touch_interval`` seconds per key and process,
    in its own short transaction, so it never rides on (or breaks) the caller's transaction.
    """

    def __init__(
        self,
        *,
        owner_disabled: Callable[[str], bool],
        ttl: float = 5.0,
        touch_interval: float = 60.0,
    ) -> None:
        """``owner_disabled(subject)``: is the person a user key acts as disabled in authsvc?"""
        self._owner_disabled = owner_disabled
        self._ttl = ttl
        self._touch_interval = touch_interval
        self._entries: dict[str, _KeyRecord] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revoking it here)."""
        with self._lock:
            self._entries.pop(key_id, None)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._touched.clear()

    def _load(self, key_id: str, now: float) -> _KeyRecord | None:
        with self._lock:
            record = self._entries.get(key_id)
        if record is not None and now - record.loaded_at < self._ttl:
            return record
        row = db.session.get(ApiKey, key_id)
        if row is None:
            return None
        record = _KeyRecord(
            secret_hash=row.secret_hash,
            identity=api_key_identity(row),
            expires_at=row.expires_at,
            revoked=row.revoked_at is not None,
            loaded_at=now,
            owner_disabled=row.kind == "user" and self._owner_disabled(row.owner_subject),
        )
        with self._lock:
            if len(self._entries) > 4096:
                self._entries.clear()
            self._entries[key_id] = record
        return record

    def _touch(self, key_id: str, now: float) -> None:
        with self._lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < self._touch_interval:
                return
            self._touched[key_id] = now
        try:
            with db.engine.begin() as conn:
                conn.execute(
                    sa.update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
                )
        except SQLAlchemyError as exc:
            # Bookkeeping only: a busy or briefly unreachable database must not turn a valid
            # key into a refusal. The next use (after touch_interval) tries again.
            log.warning("could not record the last use of an API key: %s", type(exc).__name__)
            with self._lock:
                self._touched.pop(key_id, None)

    def identify(self, text: str, *, prefix: str = API_KEY_PREFIX) -> Identity:
        """Return the identity of a presented API key.

        :raise TokenInvalid: malformed, unknown or wrong secret (one message for all three).
        :raise TokenExpired: past its expiry.
        :raise TokenRevoked: revoked.
        """
        parsed = parse_api_key(text.strip(), prefix)
        now = time.monotonic()
        record = self._load(parsed.key_id, now)
        if record is None or not verify_api_key(parsed.secret, record.secret_hash):
            raise TokenInvalid("The API key is not valid.")
        if record.revoked:
            raise TokenRevoked("The API key has been revoked.")
        if record.expires_at is not None and record.expires_at <= utcnow():
            raise TokenExpired("The API key has expired.")
        if record.owner_disabled:
            raise CredentialSuspended("The API key no longer works: its owner is disabled.")
        self._touch(parsed.key_id, now)
        return record.identity


def api_key_identity(row: ApiKey) -> Identity:
    """Return the identity an API key acts as: its owner, holding the key's roles."""
    return Identity(
        kind=IdentityKind.API_KEY,
        subject=row.owner_subject,
        username=row.owner_username,
        name=row.name,
        realm_roles=frozenset(r for r in row.roles if isinstance(r, str)),
    )


# --- a short-lived cache of composed profiles (the plugin's hot path) ------------------------


class ProfileCache:
    """Per-process cache of composed profiles, keyed by the (frozen, hashable) identity.

    Composing a profile costs one database query (album grants) plus the roles lookup; the
    plugin asks for the same user's profile over and over (once per new token, and again
    after every ``validity``). Entries live ``ttl`` seconds, so a membership change reaches a
    user's plugin profile within ``ttl`` + the plugin's ``validity``. Authentication is never
    cached here: tokens and keys are checked (expiry, revocation) before every lookup.
    ``clear`` after a change this process made (roles, revocations) takes effect at once.
    """

    def __init__(self, *, ttl: float = 5.0, max_entries: int = 10_000) -> None:
        """Start empty."""
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[Identity, tuple[Profile, float]] = {}
        self._lock = threading.Lock()

    def get(self, identity: Identity, compute: Callable[[], Profile]) -> Profile:
        """Return the cached profile of ``identity``, computing it when absent or stale."""
        if self._ttl <= 0:
            return compute()
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(identity)
        if entry is not None and now - entry[1] < self._ttl:
            return entry[0]
        profile = compute()
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[identity] = (profile, now)
        return profile

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()


# --- the authenticator -----------------------------------------------------------------------


class Authenticator:
    """Credentials -> Identity -> Profile -> Actor, with the app's verifier and roles.

    ``roles`` returns the current roles configuration (cached by its provider). ``verifier``
    is None when no OIDC issuer is configured: bearer JWTs are then refused.
    """

    def __init__(
        self,
        *,
        verifier: KeycloakVerifier | None,
        roles: Callable[[], RolesConfig],
        api_keys: ApiKeyCache | None = None,
        api_key_prefix: str = API_KEY_PREFIX,
        admin_roles: Iterable[str] = (),
        anonymous_roles: Iterable[str] = (),
        is_disabled: Callable[[str], bool] | None = None,
        album_grants: AlbumGrants | None = None,
    ) -> None:
        """Store the collaborators; does no I/O.

        ``is_disabled(subject)`` says whether an admin disabled that person in authsvc
        (:func:`authsvc.credentials.lifecycle.set_disabled`); their Keycloak tokens and API
        keys are then refused too. ``album_grants(identity)`` returns the (labels,
        permissions) its album memberships give; None: no albums.
        """
        self.verifier = verifier
        self.is_disabled = is_disabled
        self.roles = roles
        self.album_grants = album_grants
        self.api_keys = (
            api_keys
            if api_keys is not None
            else ApiKeyCache(owner_disabled=is_disabled or _nobody_disabled)
        )
        self.api_key_prefix = api_key_prefix
        self.admin_roles = frozenset(admin_roles)
        self.anonymous = replace(ANONYMOUS, realm_roles=frozenset(anonymous_roles))

    def authenticate(self, credentials: Credentials) -> Identity:
        """Return who presented ``credentials``; no credentials: the anonymous identity.

        :raise Unauthenticated: both a bearer token and an API key were sent, or bearer
            tokens are not accepted (no OIDC provider configured).
        :raise TokenInvalid: the token or key is malformed, forged, unknown (401).
        :raise TokenExpired: it has expired (401).
        :raise TokenRevoked: the API key was revoked (401).
        :raise CredentialSuspended: the person is disabled in authsvc (401).
        :raise IdentityProviderUnavailable: the provider's keys cannot be fetched (503).
        """
        bearer = (credentials.bearer or "").strip()
        api_key = (credentials.api_key or "").strip()
        if bearer and api_key:
            raise Unauthenticated("Send either a bearer token or an API key, not both.")
        if api_key:
            return self.api_keys.identify(api_key, prefix=self.api_key_prefix)
        if not bearer:
            return self.anonymous
        if bearer.startswith(self.api_key_prefix):
            return self.api_keys.identify(bearer, prefix=self.api_key_prefix)
        if self.verifier is None:
            raise Unauthenticated("Bearer tokens are not accepted: no OIDC provider is set up.")
        identity = self.verifier.verify(bearer)
        if self.is_disabled is not None and identity.subject and self.is_disabled(identity.subject):
            # Keycloak still signs their tokens until someone disables them there too.
            raise CredentialSuspended("This person is disabled in authsvc.")
        return identity

    def role_names(self, identity: Identity, config: RolesConfig) -> frozenset[str]:
        """Return every role the identity holds: realm, client and group-mapped roles."""
        names = set(identity.realm_roles) | identity.client_roles
        for group in identity.groups:
            names |= config.group_roles.get(normalize_group(group), frozenset())
        return frozenset(names)

    def key_roles_held(self, identity: Identity) -> frozenset[str]:
        """Return the roles an API key of this identity may hold: its own, never more.

        Configured roles it matches, plus the admin roles it holds (which need not appear in
        the roles configuration).
        """
        config = self.roles()
        held = compose_profile(identity, config).roles
        return held | (self.role_names(identity, config) & self.admin_roles)

    def assignable_roles(self) -> frozenset[str]:
        """Return the roles a service-account key may be given: configured and admin roles."""
        return frozenset(self.roles().roles) | self.admin_roles

    def profile(self, identity: Identity, *, with_albums: bool = True) -> Profile:
        """Return the identity's global profile (roles), plus its album grants if asked."""
        if identity.is_anonymous:
            identity = self.anonymous
        labels: frozenset[str] = frozenset()
        permissions: frozenset[str] = frozenset()
        if with_albums and not identity.is_anonymous and self.album_grants is not None:
            labels, permissions = self.album_grants(identity)
        return compose_profile(
            identity, self.roles(), extra_labels=labels, extra_permissions=permissions
        )

    def actor(self, identity: Identity) -> Actor:
        """Return the policy's view of the identity (global rights only, no album grants)."""
        if identity.is_anonymous:
            identity = self.anonymous
        config = self.roles()
        profile = compose_profile(identity, config)
        return Actor(
            subject=identity.subject,
            is_global_admin=is_global_admin(
                authenticated=not identity.is_anonymous,
                permissions=profile.permissions,
                role_names=self.role_names(identity, config),
                admin_roles=self.admin_roles,
            ),
            permissions=profile.permissions,
            sees_all_studies=profile.all_labels,
            via_api_key=identity.kind is IdentityKind.API_KEY,
        )
