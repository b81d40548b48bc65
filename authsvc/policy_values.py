"""authsvc.policy_values: the words and values :mod:`authsvc.policy` decides with.

The vocabulary (album roles, actions, token and credential kinds) and the values a caller hands
the policy or gets back (:class:`Actor`, :class:`Target`, :class:`Maker`, :class:`Decision`).
Pure data: no rule and no decision lives here, those stay in :mod:`authsvc.policy`, which
re-exports every name below, so callers import them from there. No I/O, no Flask, no authsvc
import: the bottom layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar

__all__ = [
    "NO_TARGET",
    "Action",
    "Actor",
    "AlbumRole",
    "Allowed",
    "CredentialKind",
    "Decision",
    "Denied",
    "Maker",
    "Target",
    "TokenKind",
]


# --- vocabulary ------------------------------------------------------------------------------


class AlbumRole(StrEnum):
    """A member's role in an album, from most to least powerful.

    Compare roles with :meth:`at_least` or :attr:`rank`, never with ``<``: these are strings,
    and ``"manager" < "owner"`` is alphabetical order, not power.
    """

    OWNER = "owner"
    MANAGER = "manager"
    CONTRIBUTOR = "contributor"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """Return the role's power: viewer 1, contributor 2, manager 3, owner 4."""
        return _ROLE_RANK[self]

    def at_least(self, other: AlbumRole) -> bool:
        """Return True if this role includes everything ``other`` may do."""
        return _ROLE_RANK[self] >= _ROLE_RANK[other]


_ROLE_RANK: Mapping[AlbumRole, int] = MappingProxyType(
    {AlbumRole.VIEWER: 1, AlbumRole.CONTRIBUTOR: 2, AlbumRole.MANAGER: 3, AlbumRole.OWNER: 4}
)


class Action(StrEnum):
    """Everything the policy decides, named ``<scope>:<subject>:<verb>``. Keep alphabetized."""

    # The "noqa: S105" marks below: bandit takes "*_TOKEN_*" names for passwords.

    #: The administrators' admin pages (status, audit trail): global administrators only.
    ADMIN_PAGES_ADMINISTER = "admin:pages:administer"
    ALBUM_CREATE = "album:create"
    ALBUM_DELETE = "album:delete"
    ALBUM_EDIT = "album:edit"
    ALBUM_LEAVE = "album:leave"
    ALBUM_MEMBERS_LIST = "album:members:list"
    ALBUM_MEMBER_INVITE = "album:member:invite"
    ALBUM_MEMBER_REMOVE = "album:member:remove"
    ALBUM_MEMBER_ROLE_CHANGE = "album:member:role"
    ALBUM_READ_TOKEN_CREATE = "album:read-token:create"  # noqa: S105
    ALBUM_READ_TOKEN_LIST = "album:read-token:list"  # noqa: S105
    ALBUM_READ_TOKEN_REVOKE = "album:read-token:revoke"  # noqa: S105
    ALBUM_SHARE_LINK_CREATE = "album:share-link:create"
    ALBUM_SHARE_LINK_LIST = "album:share-link:list"
    ALBUM_SHARE_LINK_REVOKE = "album:share-link:revoke"
    ALBUM_STUDIES_LIST = "album:studies:list"
    ALBUM_STUDY_ADD = "album:study:add"
    ALBUM_STUDY_REMOVE = "album:study:remove"
    ALBUM_UPLOAD = "album:upload"
    ALBUM_UPLOAD_TOKEN_CREATE = "album:upload-token:create"  # noqa: S105
    ALBUM_UPLOAD_TOKEN_LIST = "album:upload-token:list"  # noqa: S105
    ALBUM_UPLOAD_TOKEN_REVOKE = "album:upload-token:revoke"  # noqa: S105
    ALBUM_VIEW = "album:view"
    API_KEY_CREATE = "api-key:create"
    API_KEY_CREATE_SERVICE = "api-key:create-service"
    API_KEY_LIST = "api-key:list"
    API_KEY_LIST_ALL = "api-key:list-all"
    API_KEY_REVOKE = "api-key:revoke"
    USER_DISABLE = "user:disable"
    GATE_ADMIN = "gate:admin"
    GATE_LIST = "gate:server:list"
    GATE_MALFORMED = "gate:malformed"
    GATE_RESOURCE_DELETE = "gate:resource:delete"
    GATE_STATIC = "gate:static"
    GATE_STUDY_MODIFY = "gate:study:modify"
    GATE_STUDY_READ = "gate:study:read"
    GATE_STUDY_WRITE = "gate:study:write"
    GATE_UPLOAD = "gate:server:upload"
    ROLES_EDIT = "roles:edit"
    ROLES_VIEW = "roles:view"
    SHARE_TOKEN_LIST = "share-token:list"  # noqa: S105
    SHARE_TOKEN_LIST_ALL = "share-token:list-all"  # noqa: S105
    SHARE_TOKEN_REVOKE = "share-token:revoke"  # noqa: S105


class TokenKind(StrEnum):
    """Kinds of bearer tokens that reach Orthanc (see ``policy.decide_token_access``)."""

    #: Viewer publications (stone/ohif/volview/…-viewer-publication): long-lived share links.
    SHARE_LINK = "share-link"
    #: viewer-instant-link, download-instant-link: short-lived links OE2 makes for a user.
    INSTANT_LINK = "instant-link"
    #: Read access to one album's studies (DICOMweb clients, scripts).
    ALBUM_READ = "album-read"
    #: Upload tokens: valid only on authsvc's album upload endpoint, never against Orthanc.
    UPLOAD = "upload"


class CredentialKind(StrEnum):
    """Credentials one person makes that others then use (``policy.decide_credential_backing``)."""

    UPLOAD_TOKEN = "upload-token"  # noqa: S105
    ALBUM_READ_TOKEN = "album-read-token"  # noqa: S105
    SHARE_LINK = "share-link"
    API_KEY = "api-key"


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is asking, reduced to what the policy needs. ``subject`` is "" for anonymous."""

    subject: str
    is_global_admin: bool = False
    #: Global Orthanc permissions from the role configuration ("view", "upload", "all"…).
    permissions: frozenset[str] = frozenset()
    #: True if the actor's authorized labels are ``*`` (every study, labelled or not).
    sees_all_studies: bool = False
    #: True when the caller authenticated with an API key (not a Keycloak session).
    via_api_key: bool = False

    @property
    def is_authenticated(self) -> bool:
        """Return True unless the actor is anonymous."""
        return bool(self.subject)


@dataclass(frozen=True, slots=True)
class Target:
    """Facts about the object of an action that some rules need; absent facts deny.

    * ``owner_count``: owners the album has now (member remove/role change, leave);
    * ``member_role``: current role of the member acted upon (member remove/role change);
    * ``new_role``: role being granted (invite, role change);
    * ``study_visible_to_actor``: the actor can already see the study (study add);
    * ``study_label_access``: the actor's role-config labels cover the study (gate);
    * ``token_issued_by_actor``: the upload token(s) concerned were issued by the actor.
    """

    owner_count: int | None = None
    member_role: AlbumRole | None = None
    new_role: AlbumRole | None = None
    study_visible_to_actor: bool = False
    study_label_access: bool = False
    token_issued_by_actor: bool = False


#: A target with no facts: enough for actions whose rules need none.
NO_TARGET = Target()


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer: truthy when allowed; ``reason`` says why (safe to log)."""

    reason: str
    allowed: ClassVar[bool] = False

    def __bool__(self) -> bool:
        """Return whether the action is allowed."""
        return self.allowed


@dataclass(frozen=True, slots=True)
class Allowed(Decision):
    """The action is allowed."""

    allowed: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Denied(Decision):
    """The action is denied. ``conceal``: answer 404 (the actor may not know the album exists)."""

    allowed: ClassVar[bool] = False
    conceal: bool = False


@dataclass(frozen=True, slots=True)
class Maker:
    """What authsvc knows *now* about the maker of a credential (absent facts deny).

    * ``actor``: the maker as last seen (roles, admin), or a bare subject when authsvc has no
      identity on record (no admin rights then); anonymous: the maker is unknown;
    * ``disabled``: an admin disabled the maker in authsvc (or the service key is gone);
    * ``album_exists`` / ``album_role``: for album credentials, the album is still there and
      the maker's best role in it now (user, group or e-mail membership);
    * ``permissions`` / ``studies_visible``: for share links, the maker's Orthanc permissions
      now and whether the maker can still see every study the link names.
    """

    actor: Actor
    disabled: bool = False
    album_exists: bool = False
    album_role: AlbumRole | None = None
    permissions: frozenset[str] = frozenset()
    studies_visible: bool = False
