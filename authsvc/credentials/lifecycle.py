"""authsvc.credentials.lifecycle: credentials follow their maker's rights (the rule's I/O side).

Upload tokens, album read tokens and share links are made by one person and used by others;
API keys act as their owner. Each keeps working only while its maker could still make it now
(:func:`authsvc.policy.decide_credential_backing` decides; this module gathers the facts):

* **Who the maker is now.** ``known_user`` keeps the last :class:`~authsvc.identity.Identity`
  authsvc saw of each person (admin sign-in, plugin profile, any authenticated API call; see
  :meth:`authsvc.identity.users.UserDirectory.remember`, which writes a changed identity at
  once) and
  whether an admin disabled them (:func:`set_disabled`). Realm roles and groups are as of
  that last sighting: authsvc cannot ask Keycloak (it holds no admin credentials), so a role
  removed in Keycloak reaches the maker's credentials when the maker next uses authsvc; to
  stop them at once an admin disables the person here. A maker with no identity on record
  holds the roles of their user API keys still in force and no groups (plus direct album
  memberships). Service-account makers (``api-key:<id>``) are their key: revoked or
  expired, it backs nothing.
* **What the maker may do now.** Album roles are read live from ``album_member`` (user,
  group and e-mail rows, as the profile reads them); the roles configuration is the current
  one. Share links made through ``PUT /api/orthanc/auth/tokens/<type>`` (``created_by``
  ``user:<sub>``) need the maker to still hold the type's permission and see the study being
  read (its labels, which the plugin and the gate already have). Links the plugin made
  (``plugin``) and legacy links name no maker and are not affected.
* **Cost and bound.** One answer per (credential, maker, album or labels) is kept
  :class:`BackingCache` ``ttl`` seconds per process (the worker cache TTL, at most 5 s), so a
  viewer's burst of frame requests costs one check; a change is seen within that TTL (plus
  the plugin's own ``validity`` on the plugin path, and nginx's gate cache). A check costs a
  primary-key read of the maker and one indexed membership query (album tokens), or the
  maker's album grants (share links).
* **What a refusal looks like.** :class:`~authsvc.errors.CredentialSuspended` (401,
  ``credential-suspended``, the reason in words, no secret), and one ``credential:refused``
  audit row per credential and process per minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from authsvc import audit
from authsvc.albums import album_grants
from authsvc.albums import album_role
from authsvc.albums import caller_for
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.errors import AuthsvcError
from authsvc.errors import NotFound
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity.roles import RolesConfig
from authsvc.identity.roles import compose_profile
from authsvc.logs import current_request_id
from authsvc.models import AdminSession
from authsvc.models import Album
from authsvc.models import AlbumReadToken
from authsvc.models import ApiKey
from authsvc.models import AuditEvent
from authsvc.models import KnownUser
from authsvc.models import ShareToken
from authsvc.models import UploadToken
from authsvc.models import utcnow
from authsvc.orthanc import OrthancServers
from authsvc.orthanc.study_labels import StudyLabelCache
from authsvc.orthanc.study_labels import TtlMap
from authsvc.policy import Actor
from authsvc.policy import Allowed
from authsvc.policy import CredentialKind
from authsvc.policy import Decision
from authsvc.policy import Maker
from authsvc.policy import decide_credential_backing

__all__ = [
    "SERVICE_MAKER_PREFIX",
    "USER_TAG_PREFIX",
    "BackingCache",
    "MakerRights",
    "api_key_owner_disabled",
    "audit_refusal",
    "maker_identity",
    "set_disabled",
]

log = logging.getLogger(__name__)

#: How a service-account key names itself as a maker (its ``owner_subject``).
SERVICE_MAKER_PREFIX = "api-key:"
#: How share links made for a signed-in user name their maker (``created_by``).
USER_TAG_PREFIX = "user:"
_AUDIT_EVERY = 60.0


# --- who the maker is --------------------------------------------------------------------------


def maker_identity(subject: str) -> tuple[Identity | None, bool]:
    """Return (the maker's identity as last seen, disabled?) for a ``created_by`` subject.

    None: nobody (empty subject, or a service key that no longer exists). A person with no
    identity on record is a bare user identity (no roles, no groups).
    """
    from authsvc.identity.admin_sessions import identity_from_json
    from authsvc.identity.authn import api_key_identity

    if not subject or len(subject) > 512:
        return None, True
    if subject.startswith(SERVICE_MAKER_PREFIX):
        key = db.session.get(ApiKey, subject[len(SERVICE_MAKER_PREFIX) :])
        if key is None or key.kind != "service":
            return None, True
        gone = key.revoked_at is not None or (
            key.expires_at is not None and key.expires_at <= utcnow()
        )
        return api_key_identity(key), gone
    user = db.session.get(KnownUser, subject)
    disabled = user is not None and user.disabled_at is not None
    if user is not None and user.identity:
        try:
            identity = identity_from_json(user.identity)
        except (KeyError, ValueError, TypeError):
            pass
        else:
            if identity.subject == subject:
                return identity, disabled
    return _known_through_keys(subject), disabled


def _known_through_keys(subject: str) -> Identity:
    """Return a person with no identity on record: the roles of their user keys in force.

    Someone who only ever used authsvc with API keys made their credentials with those keys'
    roles (never more than their own); revoking the keys takes the roles away.
    """
    now = utcnow()
    roles = db.session.scalars(
        sa.select(ApiKey.roles).where(
            ApiKey.owner_subject == subject,
            ApiKey.kind == "user",
            ApiKey.revoked_at.is_(None),
            sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    ).all()
    names = frozenset(r for held in roles for r in held if isinstance(r, str))
    return Identity(kind=IdentityKind.USER, subject=subject, realm_roles=names)


def api_key_owner_disabled(owner_subject: str) -> bool:
    """Return True when the person a user API key acts as is disabled in authsvc."""
    user = db.session.get(KnownUser, owner_subject) if owner_subject else None
    return user is not None and user.disabled_at is not None


def set_disabled(subject: str, *, disabled: bool, actor: str) -> KnownUser:
    """Disable or enable a person in authsvc (idempotent), audited; the caller commits.

    A person authsvc has never seen can be disabled too (by subject): the row is made.
    :raise NotFound: enabling someone authsvc does not know.
    """
    row = db.session.get(KnownUser, subject)
    if row is None:
        if not disabled:
            raise NotFound("No such person.")
        row = KnownUser(subject=subject, username=subject.lower(), name="", last_seen_at=utcnow())
        db.session.add(row)
    changed = (row.disabled_at is not None) != disabled
    if disabled and row.disabled_at is None:
        row.disabled_at = utcnow()
        row.disabled_by = actor
    elif not disabled:
        row.disabled_at = None
        row.disabled_by = None
    if disabled:
        # Signed-in admin pages end at once (sign-in is refused while disabled).
        db.session.execute(sa.delete(AdminSession).where(AdminSession.subject == subject))
    if changed:
        audit.record(
            AuditAction.user_disable if disabled else AuditAction.user_enable,
            actor,
            f"user:{subject}",
            Outcome.success,
            {"username": row.username},
        )
    return row


# --- the checks --------------------------------------------------------------------------------


class BackingCache:
    """A few seconds of backing answers per process, and the throttle of refusal audit rows."""

    def __init__(self, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty cache (``ttl`` 0 disables it)."""
        self._ttl = ttl
        self._answers = TtlMap(ttl, clock)
        self._audited = TtlMap(_AUDIT_EVERY, clock)

    def get(self, key: object, compute: Callable[[], Decision]) -> Decision:
        """Return the cached answer for ``key``, computing it when absent or stale."""
        if self._ttl > 0:
            cached: Decision | None = self._answers.get(key)
            if cached is not None:
                return cached
        decision = compute()
        if self._ttl > 0:
            self._answers.put(key, decision)
        return decision

    def clear(self) -> None:
        """Forget every answer (after a change made by this process)."""
        self._answers.clear()

    def should_audit(self, credential: str) -> bool:
        """Return True at most once a minute per credential (refusals are audited, not floods)."""
        if self._audited.get(credential) is not None:
            return False
        self._audited.put(credential, True)
        return True


class MakerRights:
    """Does a credential still stand on its maker's rights? The facts, gathered and cached.

    Built once per process by the composition root (:mod:`authsvc.services`) with what it
    needs to judge a maker now: the answers' cache, how an identity becomes a policy actor
    and which roles configuration is current (the app's authenticator), and the Orthanc
    servers with their study-label cache (to see whether a share link's maker still sees the
    study). :func:`authsvc.policy.decide_credential_backing` decides.
    """

    def __init__(
        self,
        *,
        cache: BackingCache,
        actor_of: Callable[[Identity], Actor],
        roles: Callable[[], RolesConfig],
        orthanc: OrthancServers,
        study_labels: StudyLabelCache,
    ) -> None:
        """Hold the collaborators (no I/O)."""
        self.cache = cache
        self._actor_of = actor_of
        self._roles = roles
        self._orthanc = orthanc
        self._study_labels = study_labels

    def forget(self, _sender: object = None) -> None:
        """Forget every cached answer (a membership changed here; a ``blinker`` receiver)."""
        self.cache.clear()

    def _maker(self, subject: str, album: Album | None) -> Maker:
        identity, disabled = maker_identity(subject)
        if identity is None:
            return Maker(actor=Actor(""), disabled=True)
        actor = self._actor_of(identity)
        role = album_role(caller_for(identity, actor), album.id) if album is not None else None
        return Maker(
            actor=actor, disabled=disabled, album_exists=album is not None, album_role=role
        )

    def album_credential(
        self, kind: CredentialKind, credential_id: str, created_by: str, album: Album | None
    ) -> Decision:
        """Return whether an upload or album read token still stands on its maker (cached)."""
        album_id = album.id if album is not None else None
        key = (kind, credential_id, created_by, album_id)
        return self.cache.get(
            key, lambda: decide_credential_backing(kind, self._maker(created_by, album))
        )

    def share_link(
        self, created_by: str | None, token_type: str, labels: Iterable[str] | None
    ) -> Decision:
        """Return whether a share link made for ``user:<sub>`` may still open a study with
        ``labels``.

        ``labels`` None: the study is not known here (an admin listing), only the rest is
        checked. Links with no user maker (made by the plugin, or legacy ones) are not affected.
        """
        if not created_by or not created_by.startswith(USER_TAG_PREFIX):
            return Allowed("no user maker on record")
        subject = created_by[len(USER_TAG_PREFIX) :]
        study_labels = frozenset(labels) if labels is not None else None
        key = (CredentialKind.SHARE_LINK, created_by, token_type, study_labels)

        def compute() -> Decision:
            return decide_credential_backing(
                CredentialKind.SHARE_LINK,
                self._share_maker(subject, study_labels),
                token_type=token_type,
            )

        return self.cache.get(key, compute)

    def _share_maker(self, subject: str, labels: frozenset[str] | None) -> Maker:
        identity, disabled = maker_identity(subject)
        if identity is None:
            return Maker(actor=Actor(""), disabled=True)
        email = identity.email if identity.email and identity.email_verified else None
        album_labels, album_permissions = album_grants(
            identity.subject, identity.group_names, email, bind=False
        )
        profile = compose_profile(
            identity,
            self._roles(),
            extra_labels=album_labels,
            extra_permissions=album_permissions,
        )
        visible = (
            labels is None or profile.all_labels or not profile.authorized_labels.isdisjoint(labels)
        )
        return Maker(
            actor=self._actor_of(identity),
            disabled=disabled,
            permissions=profile.permissions,
            studies_visible=visible,
        )

    def album_token_suspension(self, row: UploadToken | AlbumReadToken) -> str | None:
        """Return why an album token in force no longer works (admin pages), or None."""
        kind = (
            CredentialKind.UPLOAD_TOKEN
            if isinstance(row, UploadToken)
            else CredentialKind.ALBUM_READ_TOKEN
        )
        if row.revoked_at is not None or row.expires_at <= utcnow():
            return None
        backing = self.album_credential(
            kind, row.id, row.created_by, db.session.get(Album, row.album_id)
        )
        return None if backing else backing.reason

    def share_link_suspension(self, row: ShareToken) -> str | None:
        """Return why a share link in force no longer works (admin pages), or None.

        Study-level resources are looked up in Orthanc (labels, cached) to check the maker
        still sees them; if Orthanc cannot answer, only the maker's standing and permission
        are checked (validation, which has the labels, decides anyway).
        """
        if row.revoked_at is not None or (
            row.expires_at is not None and row.expires_at <= utcnow()
        ):
            return None
        if not row.created_by.startswith(USER_TAG_PREFIX):
            return None
        client = self._orthanc.get(row.server_id or None)
        label_sets: list[frozenset[str] | None] = []
        for resource in row.resources:
            orthanc_id = resource.get("orthanc-id") if isinstance(resource, dict) else None
            if (
                client is None
                or resource.get("level") != "study"
                or not isinstance(orthanc_id, str)
            ):
                continue
            try:
                facts = self._study_labels.study(client, orthanc_id)
            except AuthsvcError:
                continue
            label_sets.append(facts.labels if facts is not None else frozenset())
        for labels in label_sets or [None]:
            backing = self.share_link(row.created_by, row.token_type, labels)
            if not backing:
                return backing.reason
        return None

    def audit_refusal(
        self, kind: CredentialKind, credential_id: str, subject: str, reason: str
    ) -> None:
        """Record that a credential was refused because of its maker (throttled)."""
        if self.cache.should_audit(f"{kind}:{credential_id}"):
            audit_refusal(kind, credential_id, subject, reason)


def audit_refusal(kind: CredentialKind, credential_id: str, subject: str, reason: str) -> None:
    """Record that a credential was refused because of its maker, in its own transaction
    (:meth:`MakerRights.audit_refusal` throttles)."""
    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.insert(AuditEvent).values(
                    occurred_at=utcnow(),
                    action=AuditAction.credential_refused.value,
                    actor=f"{kind}:{credential_id}",
                    subject=subject,
                    outcome=Outcome.denied.value,
                    request_id=current_request_id(),
                    detail={"kind": kind.value, "reason": reason},
                )
            )
    except SQLAlchemyError as exc:
        log.warning("could not audit a refused credential: %s", type(exc).__name__)
