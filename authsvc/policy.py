"""authsvc.policy: every "may this actor do that?" answer, in one pure module.

Deny by default, decide in one place: the JSON API, the admin pages, the upload endpoint, the
plugin callbacks and the nginx gate all ask :func:`decide` (or :func:`decide_token_access` for
share links and album read tokens). Views load what the rules need (the actor's album role, the
owner count, whether the actor can see a study…), call the policy, and act on the
:class:`Decision`. No I/O, no Flask: a bug in a view can at worst fail closed.

The rules are data: :data:`ALBUM_RULES`, :data:`GATE_RULES` and :data:`ACCOUNT_RULES`; any
action in none of them is denied. What each rule says and why the non-obvious ones are there:
docs/policy.md. The words and values the rules speak of (roles, actions, actors, decisions…)
are in :mod:`authsvc.policy_values`; import them from here, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from authsvc.orthanc.routes import Capability
from authsvc.orthanc.routes import RouteKind
from authsvc.orthanc.routes import RouteTarget
from authsvc.policy_values import NO_TARGET
from authsvc.policy_values import Action
from authsvc.policy_values import Actor
from authsvc.policy_values import AlbumRole
from authsvc.policy_values import Allowed
from authsvc.policy_values import CredentialKind
from authsvc.policy_values import Decision
from authsvc.policy_values import Denied
from authsvc.policy_values import Maker
from authsvc.policy_values import Target
from authsvc.policy_values import TokenKind

__all__ = [
    "SHARE_CREATE_PERMISSIONS",
    "CredentialKind",
    "Maker",
    "decide_credential_backing",
    "decide_share_creation",
    "ORTHANC_SERVICE_PERMISSIONS",
    "ACCOUNT_RULES",
    "ALBUM_RULES",
    "GATE_RULES",
    "NO_TARGET",
    "AccountRule",
    "Action",
    "Actor",
    "AlbumRole",
    "AlbumRule",
    "Allowed",
    "Decision",
    "Denied",
    "GateRule",
    "Target",
    "TokenKind",
    "decide",
    "decide_token_access",
    "gate_action",
]


# --- album rules -----------------------------------------------------------------------------

#: A guard sees (actor, the actor's real album role, the authority the actor acts with, target)
#: and returns a denial, or None to let the action through.
Guard = Callable[[Actor, "AlbumRole | None", AlbumRole, Target], "Denied | None"]


@dataclass(frozen=True, slots=True)
class AlbumRule:
    """Least album role for an action (None: no membership needed) and its extra guards."""

    min_role: AlbumRole | None
    guards: tuple[Guard, ...] = ()


def _authenticated(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """Anonymous callers create nothing."""
    return None if actor.is_authenticated else Denied("authentication required")


def _member(actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target) -> Denied | None:
    """Only a member can leave (admins included: there is nothing to leave)."""
    return None if role is not None else Denied("not a member of this album")


def _study_visible(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """A study may be added only by someone who can already see it."""
    return None if t.study_visible_to_actor else Denied("study not visible to the actor")


def _owner_needs_owner(
    named: AlbumRole | None, fact: str, authority: AlbumRole, denial: str
) -> Denied | None:
    """Deny when the role in ``Target.<fact>`` is missing, or is owner and the actor is not."""
    if named is None:
        return Denied(f"target.{fact} is required")
    if named is AlbumRole.OWNER and authority is not AlbumRole.OWNER:
        return Denied(denial)
    return None


def _may_grant(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """The role granted must be named; only owners grant ownership."""
    return _owner_needs_owner(t.new_role, "new_role", authority, "only owners can make owners")


def _may_touch_member(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """The member's current role must be named; only owners change or remove owners."""
    return _owner_needs_owner(
        t.member_role, "member_role", authority, "only owners can change or remove owners"
    )


def _last_owner_stays(t: Target) -> Denied | None:
    """Deny when an owner would go away while being the last one (or the count is unknown)."""
    if t.owner_count is None:
        return Denied("target.owner_count is required")
    if t.owner_count <= 1:
        return Denied("an album keeps at least one owner")
    return None


def _not_removing_last_owner(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """Removing an owner needs another owner to remain."""
    return _last_owner_stays(t) if t.member_role is AlbumRole.OWNER else None


def _not_demoting_last_owner(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """Turning an owner into something else needs another owner to remain."""
    if t.member_role is AlbumRole.OWNER and t.new_role is not AlbumRole.OWNER:
        return _last_owner_stays(t)
    return None


def _not_leaving_last_owner(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """An owner may leave only if another owner remains."""
    return _last_owner_stays(t) if role is AlbumRole.OWNER else None


def _own_token_or_manager(
    actor: Actor, role: AlbumRole | None, authority: AlbumRole, t: Target
) -> Denied | None:
    """Contributors handle their own upload tokens; everyone's needs a manager."""
    if t.token_issued_by_actor or authority.at_least(AlbumRole.MANAGER):
        return None
    return Denied("only managers handle upload tokens issued by others")


_V, _C, _M, _O = AlbumRole.VIEWER, AlbumRole.CONTRIBUTOR, AlbumRole.MANAGER, AlbumRole.OWNER

#: The album rule table. docs/policy.md gives the reasons behind the guards.
ALBUM_RULES: Mapping[Action, AlbumRule] = MappingProxyType(
    {
        Action.ALBUM_CREATE: AlbumRule(None, (_authenticated,)),
        Action.ALBUM_VIEW: AlbumRule(_V),
        Action.ALBUM_STUDIES_LIST: AlbumRule(_V),
        Action.ALBUM_MEMBERS_LIST: AlbumRule(_V),
        Action.ALBUM_LEAVE: AlbumRule(_V, (_member, _not_leaving_last_owner)),
        Action.ALBUM_UPLOAD: AlbumRule(_C),
        Action.ALBUM_STUDY_ADD: AlbumRule(_C, (_study_visible,)),
        Action.ALBUM_UPLOAD_TOKEN_CREATE: AlbumRule(_C),
        Action.ALBUM_UPLOAD_TOKEN_LIST: AlbumRule(_C, (_own_token_or_manager,)),
        Action.ALBUM_UPLOAD_TOKEN_REVOKE: AlbumRule(_C, (_own_token_or_manager,)),
        Action.ALBUM_STUDY_REMOVE: AlbumRule(_M),
        Action.ALBUM_MEMBER_INVITE: AlbumRule(_M, (_may_grant,)),
        Action.ALBUM_MEMBER_REMOVE: AlbumRule(_M, (_may_touch_member, _not_removing_last_owner)),
        Action.ALBUM_MEMBER_ROLE_CHANGE: AlbumRule(
            _M, (_may_touch_member, _may_grant, _not_demoting_last_owner)
        ),
        Action.ALBUM_SHARE_LINK_CREATE: AlbumRule(_M),
        Action.ALBUM_SHARE_LINK_LIST: AlbumRule(_M),
        Action.ALBUM_SHARE_LINK_REVOKE: AlbumRule(_M),
        Action.ALBUM_READ_TOKEN_CREATE: AlbumRule(_M),
        Action.ALBUM_READ_TOKEN_LIST: AlbumRule(_M),
        Action.ALBUM_READ_TOKEN_REVOKE: AlbumRule(_M),
        Action.ALBUM_EDIT: AlbumRule(_O),
        Action.ALBUM_DELETE: AlbumRule(_O),
    }
)


def _decide_album(
    actor: Actor, rule: AlbumRule, album_role: AlbumRole | None, target: Target
) -> Decision:
    """Apply an album rule: membership and role first, then the guards."""
    if actor.is_global_admin:
        authority = AlbumRole.OWNER  # admins act with an owner's authority on every album
    elif rule.min_role is None:
        authority = album_role or AlbumRole.VIEWER  # unused by the guards of such rules
    elif album_role is None:
        return Denied("not a member of this album", conceal=True)
    elif not album_role.at_least(rule.min_role):
        return Denied(f"needs album role {rule.min_role} or higher")
    else:
        authority = album_role
    for guard in rule.guards:
        denial = guard(actor, album_role, authority, target)
        if denial is not None:
            return denial
    return Allowed("global admin" if actor.is_global_admin else f"album role {authority}")


# --- gate rules ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateRule:
    """Who may do a gate action. Global admins may do every action except ``never`` ones.

    ``album_min_role``: album membership at this role (on an album holding the study) grants
    the action, with one of ``permissions`` too if ``album_needs_permission``. Otherwise one of
    ``permissions`` is needed together with one of: nothing else (``permission_alone``), the
    study being under the actor's role-config labels (``via_labels``), or the actor seeing every
    study (``via_all_studies``).
    """

    never: bool = False
    anyone: bool = False
    album_min_role: AlbumRole | None = None
    album_needs_permission: bool = False
    permissions: frozenset[str] = frozenset()
    permission_alone: bool = False
    via_labels: bool = False
    via_all_studies: bool = False


#: What authsvc's own credential (``orthanc_service_key``) may do at an Orthanc that runs the
#: authorization plugin, on every label: read studies (album checks, lists, album DICOMweb),
#: store uploads, and attach or remove album labels. Not "all": no delete, modify, settings or
#: admin routes, so a leaked service key cannot destroy data or change who may do what.
ORTHANC_SERVICE_PERMISSIONS = frozenset({"view", "upload", "edit-labels"})


def _perms(*names: str) -> frozenset[str]:
    """Return Orthanc permission names plus "all", which every plugin entry accepts."""
    return frozenset({"all", *names})


#: The gate rule table: what a request through nginx may do to Orthanc.
GATE_RULES: Mapping[Action, GateRule] = MappingProxyType(
    {
        # Path tricks and unparsable requests: nobody, admins included; nothing odd is forwarded.
        Action.GATE_MALFORMED: GateRule(never=True),
        Action.GATE_STATIC: GateRule(anyone=True),
        Action.GATE_STUDY_READ: GateRule(
            album_min_role=_V, permissions=_perms("view"), via_labels=True, via_all_studies=True
        ),
        Action.GATE_STUDY_WRITE: GateRule(
            album_min_role=_C, permissions=_perms("upload"), via_labels=True, via_all_studies=True
        ),
        Action.GATE_STUDY_MODIFY: GateRule(
            album_min_role=_M,
            album_needs_permission=True,
            permissions=_perms("modify"),
            via_labels=True,
            via_all_studies=True,
        ),
        Action.GATE_RESOURCE_DELETE: GateRule(),
        Action.GATE_LIST: GateRule(permissions=_perms("view"), via_all_studies=True),
        # Uploads to Orthanc at large (POST /instances, STOW-RS): as the plugin allows them.
        # Album contributors upload through authsvc's album endpoint, which labels the data.
        Action.GATE_UPLOAD: GateRule(permissions=_perms("upload"), permission_alone=True),
        Action.GATE_ADMIN: GateRule(),
    }
)


def _decide_gate(
    actor: Actor, rule: GateRule, album_role: AlbumRole | None, target: Target
) -> Decision:
    """Apply a gate rule."""
    if rule.never:
        return Denied("malformed request")
    if rule.anyone:
        return Allowed("open route")
    if actor.is_global_admin:
        return Allowed("global admin")
    has_permission = not actor.permissions.isdisjoint(rule.permissions)
    if (
        rule.album_min_role is not None
        and album_role is not None
        and album_role.at_least(rule.album_min_role)
        and (has_permission or not rule.album_needs_permission)
    ):
        return Allowed(f"album role {album_role}")
    if has_permission:
        if rule.permission_alone:
            return Allowed("orthanc permission")
        if rule.via_labels and target.study_label_access:
            return Allowed("orthanc permission on a study under the actor's labels")
        if rule.via_all_studies and actor.sees_all_studies:
            return Allowed("orthanc permission on every study")
    return Denied("not allowed through the gate")


# --- account rules: credentials and settings ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRule:
    """Who may manage API keys, share tokens and the roles configuration.

    Every account action needs an authenticated actor; global admins may do all of them.
    ``admin_only``: nobody else. ``owner_only``: others only on what they own (their own API
    keys, the share tokens they created), given as ``Target.token_issued_by_actor``; a denial
    is concealed (404) so ids of other people's credentials cannot be probed.
    """

    admin_only: bool = False
    owner_only: bool = False
    #: Refused to callers using an API key: a key must not mint keys (a stolen key could
    #: otherwise outlive its own revocation by making a successor).
    no_api_key: bool = False


#: The account rule table. Service-account keys carry roles chosen by their creator, so only
#: admins make them; anyone may make keys for themself (holding their own roles at most), but
#: only from a real sign-in, never with another key.
ACCOUNT_RULES: Mapping[Action, AccountRule] = MappingProxyType(
    {
        Action.API_KEY_CREATE: AccountRule(no_api_key=True),
        Action.API_KEY_CREATE_SERVICE: AccountRule(admin_only=True, no_api_key=True),
        Action.API_KEY_LIST: AccountRule(),
        Action.API_KEY_LIST_ALL: AccountRule(admin_only=True),
        Action.API_KEY_REVOKE: AccountRule(owner_only=True),
        Action.ROLES_EDIT: AccountRule(admin_only=True),
        Action.ROLES_VIEW: AccountRule(admin_only=True),
        Action.SHARE_TOKEN_LIST: AccountRule(),
        Action.SHARE_TOKEN_LIST_ALL: AccountRule(admin_only=True),
        Action.SHARE_TOKEN_REVOKE: AccountRule(owner_only=True),
        # Disabling or enabling a person in authsvc (and so every credential they made).
        Action.USER_DISABLE: AccountRule(admin_only=True),
        # The administrators' admin pages (status, audit trail) and their menu entries.
        Action.ADMIN_PAGES_ADMINISTER: AccountRule(admin_only=True),
    }
)


def is_global_admin(
    *,
    authenticated: bool,
    permissions: frozenset[str],
    role_names: frozenset[str],
    admin_roles: frozenset[str],
) -> bool:
    """The admin decision: is this identity a global administrator (``Actor.is_global_admin``)?

    Facts in: whether the identity is authenticated, its global permissions from the role
    configuration, the names of the roles it holds, and the configured ``admin_roles``. An
    administrator holds the ``all`` permission or one of the admin roles; anonymous never is.
    """
    if not authenticated:
        return False
    return "all" in permissions or not admin_roles.isdisjoint(role_names)


def sees_every_study(actor: Actor, authorized_labels: Collection[str]) -> bool:
    """Return whether a study search for ``actor`` needs no label filter at all.

    True for global administrators, for ``*`` labels in the role configuration, and for the
    ``*`` label given with a viewing permission (``view`` or ``all``).
    """
    return (
        actor.is_global_admin
        or actor.sees_all_studies
        or ("*" in authorized_labels and not actor.permissions.isdisjoint({"all", "view"}))
    )


def _decide_account(actor: Actor, rule: AccountRule, target: Target) -> Decision:
    """Apply an account rule."""
    if not actor.is_authenticated:
        return Denied("authentication required")
    if rule.no_api_key and actor.via_api_key:
        return Denied("API keys cannot create API keys")
    if actor.is_global_admin:
        return Allowed("global admin")
    if rule.admin_only:
        return Denied("global admins only")
    if rule.owner_only and not target.token_issued_by_actor:
        return Denied("not the actor's own", conceal=True)
    return Allowed("the actor's own credentials")


# --- entry points ----------------------------------------------------------------------------


def decide(
    actor: Actor,
    action: Action,
    *,
    album_role: AlbumRole | None = None,
    target: Target = NO_TARGET,
) -> Decision:
    """Return whether ``actor`` may do ``action``; deny anything no rule covers.

    ``album_role`` is the actor's role in the album concerned (None: not a member). For gate
    actions it is the best role the actor holds in any album whose label the study carries.
    """
    album_rule = ALBUM_RULES.get(action)
    if album_rule is not None:
        return _decide_album(actor, album_rule, album_role, target)
    gate_rule = GATE_RULES.get(action)
    if gate_rule is not None:
        return _decide_gate(actor, gate_rule, album_role, target)
    account_rule = ACCOUNT_RULES.get(action)
    if account_rule is not None:
        return _decide_account(actor, account_rule, target)
    return Denied("no rule for this action")


_GATE_RESOURCE_ACTIONS: Mapping[Capability, Action] = MappingProxyType(
    {
        Capability.READ: Action.GATE_STUDY_READ,
        Capability.WRITE: Action.GATE_STUDY_WRITE,
        Capability.MODIFY: Action.GATE_STUDY_MODIFY,
        Capability.DELETE: Action.GATE_RESOURCE_DELETE,
    }
)
_GATE_SERVER_WIDE_ACTIONS: Mapping[Capability, Action] = MappingProxyType(
    {
        Capability.READ: Action.GATE_LIST,
        Capability.WRITE: Action.GATE_UPLOAD,
        Capability.MODIFY: Action.GATE_ADMIN,
        Capability.DELETE: Action.GATE_ADMIN,
    }
)


def gate_action(target: RouteTarget) -> Action:
    """Return the gate action a classified request amounts to.

    Unknown (well-formed but unlisted) routes are admin-only: admins may use any Orthanc route,
    everybody else is denied by default. Malformed requests are denied to everyone.
    """
    kind = target.kind
    if kind is RouteKind.RESOURCE:
        # A RESOURCE target without resources cannot be checked per study: admins only.
        if not target.resources:
            return Action.GATE_ADMIN
        return _GATE_RESOURCE_ACTIONS[target.capability]
    if kind is RouteKind.SERVER_WIDE:
        return _GATE_SERVER_WIDE_ACTIONS[target.capability]
    if kind is RouteKind.STATIC:
        return Action.GATE_STATIC
    if kind is RouteKind.ADMIN_ONLY or kind is RouteKind.UNKNOWN:
        return Action.GATE_ADMIN
    return Action.GATE_MALFORMED


# --- tokens ----------------------------------------------------------------------------------

_READ_HTTP_METHODS = frozenset({"GET", "HEAD"})
_READ_TOKEN_KINDS = frozenset({TokenKind.SHARE_LINK, TokenKind.INSTANT_LINK, TokenKind.ALBUM_READ})


def decide_token_access(
    token_kind: TokenKind,
    http_method: str | None,
    orthanc_internal_method: str | None,
    *,
    capability: Capability | None = None,
    allow_internal_post: bool = True,
) -> Decision:
    """Return whether a token of ``token_kind`` may be used for this request's method.

    Only the method side: whether the token covers the study is decided where tokens are
    decoded. Read tokens (share links, instant links, album read tokens) read, never write,
    modify or delete.

    * Gate path: ``http_method`` is the client's real method (upper case) and ``capability``
      the classified route's; allowed only for GET/HEAD on a read route.
    * Plugin path (``/tokens/validate``): ``orthanc_internal_method`` is the plugin's
      ``method`` field (lower case). ``"get"`` is allowed. ``"post"`` is allowed unless
      ``allow_internal_post`` is False, because the plugin validates its own ``/tools/find``
      lookup, which the DICOMweb plugin runs for every WADO/QIDO request of a token holder,
      with ``"post"`` (protocol spec §3.1, §14). The plugin does not tell that lookup apart
      from a client POST on the same study (e.g. ``/studies/{id}/modify``); deployments that
      must close that gap put the nginx gate in front, which sees the real method and route.
    * ``"put"``, ``"delete"``, anything else, or no method at all: denied.

    Upload tokens never pass here: they are honoured only by authsvc's album upload endpoint.
    """
    if token_kind not in _READ_TOKEN_KINDS:
        return Denied("this token kind cannot be used against Orthanc")
    if http_method is None and orthanc_internal_method is None:
        return Denied("request method unknown")
    if http_method is not None:
        if http_method not in _READ_HTTP_METHODS:
            return Denied("read tokens only allow GET")
        if capability is not None and capability is not Capability.READ:
            return Denied("read tokens only allow reading")
    if orthanc_internal_method is not None:
        if orthanc_internal_method == "post":
            if not allow_internal_post:
                return Denied("internal post lookups are disabled")
        elif orthanc_internal_method != "get":
            return Denied("read tokens only allow reading")
    return Allowed("read-only use of a read token")


# --- share links made for a user (Orthanc's PUT /auth/tokens/<type>, routed to authsvc) -------

#: The permission the authorization plugin's default table asks for to create each token type
#: (``all`` always does too). A type not listed here is refused.
SHARE_CREATE_PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {
        "viewer-instant-link": "view",
        "meddream-instant-link": "view",
        "download-instant-link": "download",
        "stone-viewer-publication": "share",
        "ohif-viewer-publication": "share",
        "volview-viewer-publication": "share",
        "osimis-viewer-publication": "share",
        "meddream-viewer-publication": "share",
    }
)


def decide_share_creation(
    actor: Actor, token_type: str, *, permissions: frozenset[str], studies_visible: bool
) -> Decision:
    """Return whether ``actor`` may make a link of ``token_type`` to the resources named.

    ``permissions`` are the actor's full Orthanc permissions (roles and albums, what the
    plugin's profile holds). Beyond the plugin's own rule (the type's permission), a link may
    only name studies the actor can see (``studies_visible``): the plugin checks no resource
    on this route, so without it anyone with ``share`` could publish any study by its id.
    """
    if not actor.is_authenticated:
        return Denied("authentication required")
    needed = SHARE_CREATE_PERMISSIONS.get(token_type)
    if needed is None:
        return Denied("this token type cannot be created here")
    if not actor.is_global_admin and permissions.isdisjoint({"all", needed}):
        return Denied(f"the {needed} permission is needed for {token_type} links")
    if not studies_visible:
        return Denied("a link may only name studies the actor can see")
    return Allowed("the actor may share what it sees")


# --- credentials follow their maker's rights ---------------------------------------------------


#: The action whose rule a maker must still pass for an album credential to keep working.
_BACKING_ACTIONS: Mapping[CredentialKind, Action] = MappingProxyType(
    {
        CredentialKind.UPLOAD_TOKEN: Action.ALBUM_UPLOAD_TOKEN_CREATE,
        CredentialKind.ALBUM_READ_TOKEN: Action.ALBUM_READ_TOKEN_CREATE,
    }
)


def decide_credential_backing(
    kind: CredentialKind, maker: Maker, *, token_type: str = ""
) -> Decision:
    """Return whether a credential still stands on its maker's rights (checked at every use).

    A credential is worth what its maker could do *now*: an upload or album read token keeps
    working while its maker may still make one on that album (the same rule as issuing it:
    contributor for upload tokens, manager for read tokens; global admins while they are
    admins); a share link made by a user while that user may still make it for those studies
    (:func:`decide_share_creation`, ``token_type`` is the link's type); an API key while its
    owner is not disabled. A disabled or unknown maker backs nothing; a deleted album ends
    its tokens. The reasons are shown to admins and callers: they name no secret.
    """
    if not maker.actor.is_authenticated:
        return Denied("its maker is unknown")
    if maker.disabled:
        return Denied(
            "its owner is disabled" if kind is CredentialKind.API_KEY else "its maker is disabled"
        )
    if kind is CredentialKind.API_KEY:
        return Allowed("its owner is not disabled")
    action = _BACKING_ACTIONS.get(kind)
    if action is not None:
        if not maker.album_exists:
            return Denied("its album was deleted")
        if decide(maker.actor, action, album_role=maker.album_role):
            return Allowed("its maker may still make it")
        least = ALBUM_RULES[action].min_role
        return Denied(f"its maker is no longer a {least} (or higher) of this album")
    if kind is CredentialKind.SHARE_LINK:
        decision = decide_share_creation(
            maker.actor,
            token_type,
            permissions=maker.permissions,
            studies_visible=maker.studies_visible,
        )
        if decision:
            return Allowed("its maker may still share these studies")
        return Denied(f"its maker may no longer make it ({decision.reason})")
    return Denied("no rule for this credential")
