"""authsvc.albums: the album use-cases — albums, members, studies — and their Orthanc labels.

Every public function here is one use-case: it loads what the rules need, asks
:func:`authsvc.policy.decide`, acts, and records an audit row in the same transaction as the
change (denials are recorded too). The functions commit; callers (views, CLI) do not.

**Labels.** An album owns one Orthanc label (:mod:`authsvc.album_labels`), generated once and
never derived from user text. Adding a study to an album puts that label on the study in
Orthanc, with authsvc's own credentials; removing it deletes the label; deleting the album
removes the label from every study (the studies stay in Orthanc).

**Nothing lost.** A label change is first written to ``pending_label`` in the same transaction
as the database change (an outbox), then applied to Orthanc after the commit and the pending
row deleted. If Orthanc fails, the row stays with its error and a next attempt time;
:func:`retry_pending_labels` (run by ``authsvc reconcile`` and opportunistically after album
writes) applies it later. Every Orthanc label operation is idempotent, so applying twice is safe.
:func:`reconcile` compares ``album_study`` (what authsvc put into albums) with Orthanc's labels.

**Concurrency.** Album edits carry the album's ``version`` (ETag / If-Match): a stale version
gives 409/412 instead of a lost update. Membership changes lock the album row
(``SELECT … FOR UPDATE`` on PostgreSQL) before reading the owner count, so two managers editing
members at the same moment are serialised and the "at least one owner" rule cannot be raced.

**Visibility.** "Nobody adds a study they cannot already see": a caller sees a study if they
are a global admin, see every study (``*`` labels with a read permission), hold a role-config
label the study carries (with a read permission), or are a member of an album whose label the
study carries. The study's labels are read from Orthanc; a study the caller cannot see is
reported exactly like a study that does not exist.

**Profiles.** :func:`album_grants` gives the plugin profile the labels of every album the
identity can see (as a user, through a Keycloak group, or through an e-mail invitation, which
is bound to the user the first time they appear with that verified e-mail) plus the read-type
permissions :data:`ALBUM_MEMBER_PERMISSIONS` — never ``edit-labels``: album writes go through
authsvc. It is one indexed query.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
import secrets
import unicodedata
from collections.abc import Iterable
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from authsvc import audit
from authsvc.album_labels import is_album_label
from authsvc.album_labels import new_album_label
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.errors import Conflict
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.errors import PreconditionFailed
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import normalize_group
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AlbumStudy
from authsvc.models import AuditEvent
from authsvc.models import PendingLabel
from authsvc.models import utcnow
from authsvc.orthanc import OrthancClient
from authsvc.policy import NO_TARGET
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import Target
from authsvc.policy import decide

log = logging.getLogger(__name__)

__all__ = [
    "ALBUM_MEMBER_PERMISSIONS",
    "AlbumView",
    "Caller",
    "LabelOp",
    "Page",
    "PrincipalKind",
    "StudyResult",
    "add_studies",
    "album_grants",
    "album_role",
    "bind_caller_invitations",
    "bind_invitations",
    "caller_for",
    "change_member_role",
    "create_album",
    "delete_album",
    "get_album",
    "invite_member",
    "leave_album",
    "list_albums",
    "list_members",
    "list_studies",
    "queue_label",
    "reconcile",
    "remove_member",
    "remove_studies",
    "retry_pending_labels",
    "update_album",
]

#: Orthanc permissions album membership adds to a profile: read-type only (protocol spec §4.5:
#: ``view`` opens the label-checked read routes, ``download`` the download links). Never
#: ``edit-labels``: with it anyone could label any study into any album.
ALBUM_MEMBER_PERMISSIONS: frozenset[str] = frozenset({"view", "download"})

#: Permissions that let a role-config label (or ``*``) make a study visible (as the plugin).
_READ_PERMISSIONS = frozenset({"all", "view"})

NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 4000
PRINCIPAL_MAX_LENGTH = 320
MAX_PAGE_SIZE = 500
MAX_BULK = 1000

_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}")
_ORTHANC_ID_RE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


class PrincipalKind(StrEnum):
    """What an album member is."""

    USER = "user"
    GROUP = "group"
    EMAIL = "email"


class LabelOp(StrEnum):
    """A pending label operation."""

    ADD = "add"
    REMOVE = "remove"


# --- values ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who acts on albums: the policy actor plus the principals album membership matches.

    ``labels`` are the caller's role-config authorized labels (not album labels): they make
    studies visible for the "can already see it" rule. ``email`` is set only when verified.
    ``audit_name`` names the caller in audit rows (default ``user:<subject>``).
    """

    actor: Actor
    groups: frozenset[str] = frozenset()
    email: str | None = None
    labels: frozenset[str] = frozenset()
    audit_name: str = ""

    @property
    def subject(self) -> str:
        """Return the caller's subject ("" for anonymous)."""
        return self.actor.subject

    @property
    def name(self) -> str:
        """Return how audit rows name the caller."""
        return self.audit_name or f"user:{self.actor.subject}"


def caller_for(identity: Identity, actor: Actor, labels: Iterable[str] = ()) -> Caller:
    """Build a :class:`Caller` from an identity, its policy actor and its role labels."""
    email = identity.email.strip().lower() if identity.email and identity.email_verified else None
    kind = "apikey-owner" if identity.kind.value == "api_key" else "user"
    return Caller(
        actor=actor,
        groups=identity.group_names,
        email=email or None,
        labels=frozenset(labels),
        audit_name=f"{kind}:{identity.subject}" if identity.subject else "anonymous",
    )


@dataclasses.dataclass(frozen=True)
class AlbumView:
    """An album as one caller sees it."""

    album: Album
    role: AlbumRole | None
    member_count: int = 0
    study_count: int = 0


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a listing."""

    items: list[Any]
    total: int
    offset: int
    limit: int


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """What happened to one study of a bulk add/remove.

    ``status``: ``added``, ``already-present``, ``removed``, ``not-in-album``, ``not-found``
    (absent, or not visible to the caller: the two are indistinguishable on purpose), or
    ``invalid``. ``label``: ``applied`` or ``pending`` (Orthanc will get it on a retry).
    """

    ref: str
    status: str
    study_id: str | None = None
    study_instance_uid: str | None = None
    label: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# --- validation ---------------------------------------------------------------------------------


class _Errors:
    """Collects per-field problems and raises one 422 listing them all."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append({"field": field, "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(details=self.items)


def _has_control(text: str, allowed: str = "") -> bool:
    return any(unicodedata.category(c) in {"Cc", "Cf"} and c not in allowed for c in text)


def _clean_name(value: object, errors: _Errors, field: str = "name") -> str:
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return ""
    text = unicodedata.normalize("NFC", value.strip())
    if not text:
        errors.add(field, "must not be empty")
    elif len(text) > NAME_MAX_LENGTH:
        errors.add(field, f"must be at most {NAME_MAX_LENGTH} characters")
    elif _has_control(text):
        errors.add(field, "must not contain control characters")
    return text


def _clean_description(value: object, errors: _Errors) -> str:
    if not isinstance(value, str):
        errors.add("description", "must be a string")
        return ""
    text = unicodedata.normalize("NFC", value.strip())
    if len(text) > DESCRIPTION_MAX_LENGTH:
        errors.add("description", f"must be at most {DESCRIPTION_MAX_LENGTH} characters")
    elif _has_control(text, allowed="\n\t"):
        errors.add("description", "must not contain control characters other than newlines")
    return text


def _clean_role(value: object, errors: _Errors, field: str = "role") -> AlbumRole | None:
    try:
        return AlbumRole(value) if isinstance(value, str) else AlbumRole("")
    except ValueError:
        errors.add(field, f"must be one of {', '.join(r.value for r in AlbumRole)}")
        return None


def _clean_principal(kind: object, value: object, errors: _Errors) -> tuple[PrincipalKind, str]:
    """Validate and normalise a member principal (e-mails lower-cased, groups without '/')."""
    try:
        pkind = PrincipalKind(kind) if isinstance(kind, str) else PrincipalKind("")
    except ValueError:
        errors.add("kind", "must be one of user, group, email")
        return PrincipalKind.USER, ""
    if not isinstance(value, str) or not value.strip():
        errors.add("principal", "must be a non-empty string")
        return pkind, ""
    text = value.strip()
    if len(text) > PRINCIPAL_MAX_LENGTH or _has_control(text):
        errors.add("principal", f"must be at most {PRINCIPAL_MAX_LENGTH} printable characters")
        return pkind, ""
    if pkind is PrincipalKind.EMAIL:
        text = text.lower()
        if _EMAIL_RE.fullmatch(text) is None:
            errors.add("principal", "must be an e-mail address")
    elif pkind is PrincipalKind.GROUP:
        text = normalize_group(text)
        if not text:
            errors.add("principal", "must name a group")
    return pkind, text


def check_page(offset: object, limit: object, *, default_limit: int = 50) -> tuple[int, int]:
    """Validate pagination parameters; raise 422 naming the bad one."""
    errors = _Errors()
    values = []
    for field, value, default, low, high in (
        ("offset", offset, 0, 0, 10**9),
        ("limit", limit, default_limit, 1, MAX_PAGE_SIZE),
    ):
        if value is None or value == "":
            values.append(default)
            continue
        try:
            number = int(str(value), 10)
        except ValueError:
            errors.add(field, "must be an integer")
            values.append(default)
            continue
        if not low <= number <= high:
            errors.add(field, f"must be between {low} and {high}")
        values.append(number)
    errors.raise_if_any()
    return values[0], values[1]


# --- loading and deciding -------------------------------------------------------------------------


def _principal_conditions(
    subject: str, groups: Iterable[str], email: str | None
) -> list[tuple[PrincipalKind, sa.ColumnElement[bool]]]:
    """One SQL condition per kind of principal the caller is (user, groups, e-mail)."""
    out: list[tuple[PrincipalKind, sa.ColumnElement[bool]]] = []
    if subject:
        out.append(
            (
                PrincipalKind.USER,
                sa.and_(
                    AlbumMember.principal_kind == PrincipalKind.USER.value,
                    AlbumMember.principal == subject,
                ),
            )
        )
    group_list = sorted({normalize_group(g) for g in groups if normalize_group(g)})
    if group_list:
        out.append(
            (
                PrincipalKind.GROUP,
                sa.and_(
                    AlbumMember.principal_kind == PrincipalKind.GROUP.value,
                    AlbumMember.principal.in_(group_list),
                ),
            )
        )
    if email:
        out.append(
            (
                PrincipalKind.EMAIL,
                sa.and_(
                    AlbumMember.principal_kind == PrincipalKind.EMAIL.value,
                    AlbumMember.principal == email.lower(),
                ),
            )
        )
    return out


def _principal_filter(
    subject: str, groups: Iterable[str], email: str | None
) -> sa.ColumnElement[bool]:
    """The SQL condition "this member row names one of these principals"."""
    clauses = [condition for _kind, condition in _principal_conditions(subject, groups, email)]
    return sa.or_(*clauses) if clauses else sa.false()


def _caller_filter(caller: Caller) -> sa.ColumnElement[bool]:
    return _principal_filter(caller.subject, caller.groups, caller.email)


def _best_role(roles: Iterable[str]) -> AlbumRole | None:
    best: AlbumRole | None = None
    for value in roles:
        role = AlbumRole(value)
        if best is None or role.rank > best.rank:
            best = role
    return best


def album_role(caller: Caller, album_id: str) -> AlbumRole | None:
    """Return the caller's best role in the album (user, group or e-mail rows), or None."""
    if not caller.subject:
        return None
    rows = db.session.execute(
        sa.select(AlbumMember.role).where(AlbumMember.album_id == album_id, _caller_filter(caller))
    ).scalars()
    return _best_role(rows)


def _load(album_id: str, *, lock: bool = False) -> Album | None:
    if not isinstance(album_id, str) or not album_id or len(album_id) > 64:
        return None
    query = sa.select(Album).where(Album.id == album_id)
    if lock:
        # Serialises concurrent edits of one album (no-op on SQLite, which locks the database).
        query = query.with_for_update()
    return db.session.execute(query).scalar_one_or_none()


def _deny(caller: Caller, action: Action, subject: str, decision: Decision) -> None:
    """Record a denial, commit it, and raise 404 (concealed) or 403."""
    db.session.rollback()
    audit.record(str(action), caller.name, subject, Outcome.denied, {"reason": decision.reason})
    db.session.commit()
    if isinstance(decision, Denied) and decision.conceal:
        raise NotFound("No such album.")
    raise Forbidden(f"Not allowed: {decision.reason}.")


def _authorize(
    caller: Caller,
    action: Action,
    album: Album | None,
    role: AlbumRole | None,
    target: Target = NO_TARGET,
) -> None:
    """Raise 404 for a missing (or concealed) album, 403 when the policy says no."""
    if album is None:
        raise NotFound("No such album.")
    decision = decide(caller.actor, action, album_role=role, target=target)
    if not decision:
        _deny(caller, action, f"album:{album.id}", decision)


def _get_for(
    caller: Caller, album_id: str, action: Action, *, lock: bool = False
) -> tuple[Album, AlbumRole | None]:
    """Load an album and the caller's role; raise 404 unless the caller may at least see it."""
    album = _load(album_id, lock=lock)
    if album is None:
        raise NotFound("No such album.")
    role = album_role(caller, album.id)
    # Seeing the album comes first: a non-member learns nothing, whatever ``action`` is; the
    # action itself is decided by the use-case, with the target facts its guards need.
    _authorize(caller, Action.ALBUM_VIEW, album, role)
    return album, role


def _check_version(album: Album, expected: int | None, *, precondition: bool) -> None:
    if expected is not None and expected != album.version:
        error = PreconditionFailed if precondition else Conflict
        raise error(
            f"The album is at version {album.version}, not {expected}; reload and try again.",
            details={"version": album.version},
        )


def _counts(album_ids: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    if not album_ids:
        return {}, {}
    members = dict(
        db.session.execute(
            sa.select(AlbumMember.album_id, sa.func.count())
            .where(AlbumMember.album_id.in_(album_ids))
            .group_by(AlbumMember.album_id)
        ).all()
    )
    studies = dict(
        db.session.execute(
            sa.select(AlbumStudy.album_id, sa.func.count())
            .where(AlbumStudy.album_id.in_(album_ids))
            .group_by(AlbumStudy.album_id)
        ).all()
    )
    return members, studies


def _view(album: Album, role: AlbumRole | None) -> AlbumView:
    members, studies = _counts([album.id])
    return AlbumView(album, role, members.get(album.id, 0), studies.get(album.id, 0))


def _orthanc(album_server_id: str) -> OrthancClient:
    from authsvc.services import services

    client = services().orthanc.get(album_server_id)
    if client is None:
        raise OrthancUnavailable(f"Orthanc server {album_server_id!r} is not configured.")
    return client


def _label_prefix() -> str:
    from authsvc.services import services

    return services().settings.album_label_prefix


# --- albums -----------------------------------------------------------------------------------


def create_album(
    caller: Caller, name: object, description: object = "", server_id: object = None
) -> AlbumView:
    """Create an album owned by the caller.

    :raise 403: anonymous callers. :raise 422: invalid name, description or server.
    """
    decision = decide(caller.actor, Action.ALBUM_CREATE)
    if not decision:
        _deny(caller, Action.ALBUM_CREATE, "album:*", decision)
    errors = _Errors()
    clean_name = _clean_name(name, errors)
    clean_description = _clean_description(description if description is not None else "", errors)
    from authsvc.services import services

    registry = services().orthanc
    if server_id is not None and (
        not isinstance(server_id, str) or server_id not in registry.ids()
    ):
        errors.add("server_id", f"must be one of: {', '.join(registry.ids()) or '(none)'}")
    errors.raise_if_any()
    client = registry.get(server_id if isinstance(server_id, str) else None)
    now = utcnow()
    album = Album(
        id=secrets.token_urlsafe(12),
        name=clean_name,
        description=clean_description,
        label=new_album_label(_label_prefix()),
        server_id=client.server.id if client is not None else "",
        created_by=caller.name,
        created_at=now,
        updated_at=now,
        version=1,
    )
    db.session.add(album)
    db.session.add(
        AlbumMember(
            album_id=album.id,
            album_label=album.label,
            principal_kind=PrincipalKind.USER.value,
            principal=caller.subject,
            role=AlbumRole.OWNER.value,
            added_by=caller.name,
            added_at=now,
        )
    )
    audit.record(
        AuditAction.album_create,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {"name": clean_name, "label": album.label, "server_id": album.server_id},
    )
    db.session.commit()
    return AlbumView(album, AlbumRole.OWNER, 1, 0)


def list_albums(
    caller: Caller, *, offset: int = 0, limit: int = 50, everything: bool = False
) -> Page:
    """List the caller's albums (or, for global admins asking ``everything``, all albums)."""
    if not caller.subject:
        return Page([], 0, offset, limit)
    roles: dict[str, AlbumRole] = {}
    for album_id, role in db.session.execute(
        sa.select(AlbumMember.album_id, AlbumMember.role).where(_caller_filter(caller))
    ).all():
        previous = roles.get(album_id)
        best = _best_role([role] if previous is None else [role, previous.value])
        if best is not None:
            roles[album_id] = best
    if everything and caller.actor.is_global_admin:
        condition: sa.ColumnElement[bool] = sa.true()
    else:
        condition = Album.id.in_(list(roles)) if roles else sa.false()
    total = db.session.execute(
        sa.select(sa.func.count()).select_from(Album).where(condition)
    ).scalar_one()
    albums = list(
        db.session.execute(
            sa.select(Album)
            .where(condition)
            .order_by(Album.name, Album.id)
            .offset(offset)
            .limit(limit)
        ).scalars()
    )
    members, studies = _counts([a.id for a in albums])
    items = [
        AlbumView(a, roles.get(a.id), members.get(a.id, 0), studies.get(a.id, 0)) for a in albums
    ]
    return Page(items, int(total), offset, limit)


def get_album(caller: Caller, album_id: str) -> AlbumView:
    """Return one album. :raise 404: missing, or the caller may not see it."""
    album, role = _get_for(caller, album_id, Action.ALBUM_VIEW)
    return _view(album, role)


def update_album(
    caller: Caller,
    album_id: str,
    *,
    name: object = None,
    description: object = None,
    expected_version: int | None = None,
    precondition: bool = False,
) -> AlbumView:
    """Rename an album or change its description (owners).

    :raise 404/403: see :func:`get_album`; not an owner. :raise 409/412: stale version
    (412 when the version came from If-Match). :raise 422: invalid fields.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_EDIT, lock=True)
    _authorize(caller, Action.ALBUM_EDIT, album, role)
    errors = _Errors()
    changes: dict[str, str] = {}
    if name is not None:
        changes["name"] = _clean_name(name, errors)
    if description is not None:
        changes["description"] = _clean_description(description, errors)
    if not changes:
        errors.add("name", "give a name and/or a description to change")
    errors.raise_if_any()
    _check_version(album, expected_version, precondition=precondition)
    before = {key: getattr(album, key) for key in changes}
    for key, value in changes.items():
        setattr(album, key, value)
    album.version += 1
    album.updated_at = utcnow()
    audit.record(
        AuditAction.album_edit,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {"before": before, "after": changes, "version": album.version},
    )
    db.session.commit()
    return _view(album, role)


def delete_album(
    caller: Caller,
    album_id: str,
    *,
    expected_version: int | None = None,
    precondition: bool = False,
) -> int:
    """Delete an album (owners); its label is removed from its studies, which stay in Orthanc.

    Returns the number of studies whose label removal is queued. :raise 404/403/409/412.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_DELETE, lock=True)
    _authorize(caller, Action.ALBUM_DELETE, album, role)
    _check_version(album, expected_version, precondition=precondition)
    study_ids = list(
        db.session.execute(
            sa.select(AlbumStudy.study_id).where(AlbumStudy.album_id == album.id)
        ).scalars()
    )
    # Studies labelled behind authsvc's back (or adopted later) lose the label too.
    try:
        found = _orthanc(album.server_id).find_studies(labels=[album.label])
        study_ids = sorted(set(study_ids) | {str(s) for s in found})
    except (OrthancUnavailable, OrthancError) as exc:
        log.warning("album %s: cannot list labelled studies before deletion: %s", album.id, exc)
    pending = [queue_label(album.server_id, sid, album.label, LabelOp.REMOVE) for sid in study_ids]
    # Explicit deletes: SQLite does not enforce ON DELETE actions unless asked to.
    db.session.execute(
        sa.update(PendingLabel).where(PendingLabel.album_id == album.id).values(album_id=None)
    )
    db.session.execute(sa.delete(AlbumMember).where(AlbumMember.album_id == album.id))
    db.session.execute(sa.delete(AlbumStudy).where(AlbumStudy.album_id == album.id))
    audit.record(
        AuditAction.album_delete,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {"name": album.name, "label": album.label, "studies": len(study_ids)},
    )
    db.session.delete(album)
    db.session.commit()
    _membership_changed()
    _apply([p.id for p in pending])
    return len(study_ids)


# --- members ----------------------------------------------------------------------------------


def _membership_changed() -> None:
    """Forget this process's answers on whether credentials still stand on their makers
    (other processes see a change within the cache TTL, see :mod:`authsvc.makers`)."""
    from authsvc.services import services

    services().makers.clear()


def _member_json_subject(member: AlbumMember) -> dict[str, Any]:
    return {"member_id": member.id, "kind": member.principal_kind, "principal": member.principal}


def _owner_count(album_id: str) -> int:
    """Owners who can act: users and groups (a pending e-mail invitation is nobody yet)."""
    return int(
        db.session.execute(
            sa.select(sa.func.count())
            .select_from(AlbumMember)
            .where(
                AlbumMember.album_id == album_id,
                AlbumMember.role == AlbumRole.OWNER.value,
                AlbumMember.principal_kind != PrincipalKind.EMAIL.value,
            )
        ).scalar_one()
    )


def list_members(caller: Caller, album_id: str, *, offset: int = 0, limit: int = 50) -> Page:
    """List an album's members (any member). :raise 404."""
    album, role = _get_for(caller, album_id, Action.ALBUM_MEMBERS_LIST)
    _authorize(caller, Action.ALBUM_MEMBERS_LIST, album, role)
    total = db.session.execute(
        sa.select(sa.func.count()).select_from(AlbumMember).where(AlbumMember.album_id == album.id)
    ).scalar_one()
    rank = sa.case({r.value: r.rank for r in AlbumRole}, value=AlbumMember.role, else_=0)
    members = list(
        db.session.execute(
            sa.select(AlbumMember)
            .where(AlbumMember.album_id == album.id)
            .order_by(rank.desc(), AlbumMember.principal_kind, AlbumMember.principal)
            .offset(offset)
            .limit(limit)
        ).scalars()
    )
    return Page(members, int(total), offset, limit)


def _load_member(album: Album, member_id: object) -> AlbumMember:
    # Plain ASCII digits only: int() also takes "１", " 1", "+1" and "1_0", which would make
    # several URLs name one member; 18 digits keep it inside a PostgreSQL bigint.
    text = str(member_id)
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise NotFound("No such member.")
    number = int(text, 10)
    member = db.session.get(AlbumMember, number)
    if member is None or member.album_id != album.id:
        raise NotFound("No such member.")
    return member


def invite_member(
    caller: Caller, album_id: str, kind: object, principal: object, role: object
) -> AlbumMember:
    """Add a user, a group or an e-mail invitation with a role (managers; owners make owners).

    :raise 404/403. :raise 409: that principal is already a member. :raise 422: bad fields.
    """
    album, actor_role = _get_for(caller, album_id, Action.ALBUM_MEMBER_INVITE, lock=True)
    errors = _Errors()
    pkind, value = _clean_principal(kind, principal, errors)
    new_role = _clean_role(role, errors)
    # The role check runs before field validation errors are shown: a viewer learns nothing.
    _authorize(
        caller,
        Action.ALBUM_MEMBER_INVITE,
        album,
        actor_role,
        Target(new_role=new_role or AlbumRole.VIEWER),
    )
    errors.raise_if_any()
    assert new_role is not None  # noqa: S101 - guaranteed by raise_if_any
    existing = db.session.execute(
        sa.select(AlbumMember).where(
            AlbumMember.album_id == album.id,
            AlbumMember.principal_kind == pkind.value,
            AlbumMember.principal == value,
        )
    ).scalar_one_or_none()
    if existing is not None:
        raise Conflict(
            f"This {pkind.value} is already a member (role {existing.role}); "
            "change the role instead.",
            details={"member_id": existing.id},
        )
    member = AlbumMember(
        album_id=album.id,
        album_label=album.label,
        principal_kind=pkind.value,
        principal=value,
        role=new_role.value,
        added_by=caller.name,
        added_at=utcnow(),
    )
    db.session.add(member)
    db.session.flush()
    audit.record(
        AuditAction.album_member_add,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {**_member_json_subject(member), "role": new_role.value},
    )
    db.session.commit()
    _membership_changed()
    return member


def change_member_role(
    caller: Caller, album_id: str, member_id: object, role: object
) -> AlbumMember:
    """Change a member's role. :raise 404/403 (e.g. managers touching owners, last owner)/422."""
    album, actor_role = _get_for(caller, album_id, Action.ALBUM_MEMBER_ROLE_CHANGE, lock=True)
    errors = _Errors()
    new_role = _clean_role(role, errors)
    member = _load_member(album, member_id)
    old_role = AlbumRole(member.role)
    _authorize(
        caller,
        Action.ALBUM_MEMBER_ROLE_CHANGE,
        album,
        actor_role,
        Target(
            owner_count=_owner_count(album.id),
            member_role=old_role,
            new_role=new_role or old_role,
        ),
    )
    errors.raise_if_any()
    assert new_role is not None  # noqa: S101 - guaranteed by raise_if_any
    if new_role is not old_role:
        member.role = new_role.value
        audit.record(
            AuditAction.album_member_role,
            caller.name,
            f"album:{album.id}",
            Outcome.success,
            {**_member_json_subject(member), "from": old_role.value, "to": new_role.value},
        )
    db.session.commit()
    _membership_changed()
    return member


def remove_member(caller: Caller, album_id: str, member_id: object) -> None:
    """Remove a member (managers; owners remove owners; never the last owner). :raise 404/403."""
    album, actor_role = _get_for(caller, album_id, Action.ALBUM_MEMBER_REMOVE, lock=True)
    member = _load_member(album, member_id)
    role = AlbumRole(member.role)
    owners = _owner_count(album.id)
    if member.principal_kind == PrincipalKind.EMAIL.value and role is AlbumRole.OWNER:
        owners += 1  # an unbound invitation is not counted, so removing it never hits the floor
    _authorize(
        caller,
        Action.ALBUM_MEMBER_REMOVE,
        album,
        actor_role,
        Target(owner_count=owners, member_role=role),
    )
    audit.record(
        AuditAction.album_member_remove,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {**_member_json_subject(member), "role": member.role},
    )
    db.session.delete(member)
    db.session.commit()
    _membership_changed()


def leave_album(caller: Caller, album_id: str) -> None:
    """Leave an album: remove the caller's own (user) membership; the last owner cannot.

    :raise 404. :raise 403: the last owner, or membership only through a group.
    """
    album, actor_role = _get_for(caller, album_id, Action.ALBUM_LEAVE, lock=True)
    own = db.session.execute(
        sa.select(AlbumMember).where(
            AlbumMember.album_id == album.id,
            AlbumMember.principal_kind == PrincipalKind.USER.value,
            AlbumMember.principal == caller.subject,
        )
    ).scalar_one_or_none()
    if own is None:
        decision: Decision = Denied(
            "membership comes through a group or invitation; ask a manager to remove it"
        )
        if actor_role is None:
            decision = Denied(
                "not a member of this album", conceal=not caller.actor.is_global_admin
            )
        _deny(caller, Action.ALBUM_LEAVE, f"album:{album.id}", decision)
        return
    _authorize(
        caller,
        Action.ALBUM_LEAVE,
        album,
        AlbumRole(own.role),
        Target(owner_count=_owner_count(album.id)),
    )
    audit.record(
        AuditAction.album_leave,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {**_member_json_subject(own), "role": own.role},
    )
    db.session.delete(own)
    db.session.commit()
    _membership_changed()


# --- profile seam -------------------------------------------------------------------------------


@functools.cache
def _grants_statement(groups: bool, email: bool) -> sa.TextClause:
    """The profile query: one index-only range scan of ix_album_member_principal per kind of
    principal, glued with UNION ALL. An OR would make PostgreSQL fall back to a bitmap heap
    scan, and a join with ``album`` would cost more than the scans (hence ``album_label``).
    Plain prepared text: building and compiling an expression per call cost more than the
    query itself (measured in bench/albums.py).
    """
    parts = [
        "SELECT album_label, principal_kind FROM album_member"
        " WHERE principal_kind = 'user' AND principal = :subject"
    ]
    if groups:
        parts.append(
            "SELECT album_label, principal_kind FROM album_member"
            " WHERE principal_kind = 'group' AND principal IN :groups"
        )
    if email:
        parts.append(
            "SELECT album_label, principal_kind FROM album_member"
            " WHERE principal_kind = 'email' AND principal = :email"
        )
    statement = sa.text(" UNION ALL ".join(parts))
    if groups:
        statement = statement.bindparams(sa.bindparam("groups", expanding=True))
    return statement


def album_grants(
    subject: str,
    groups: Iterable[str] = (),
    email: str | None = None,
    *,
    server_id: str | None = None,
    bind: bool = True,
) -> tuple[frozenset[str], frozenset[str]]:
    """Return (album labels, permissions) for a profile: one indexed query.

    ``email`` must be a *verified* address (or None). When an e-mail invitation matches and
    ``bind`` is set, it is bound to ``subject`` (:func:`bind_invitations`) — once: afterwards
    the row names the user. ``server_id`` restricts the labels to one Orthanc server.
    """
    if not subject:
        return frozenset(), frozenset()
    group_list = sorted({normalize_group(g) for g in groups if normalize_group(g)})
    params: dict[str, Any] = {"subject": subject}
    if group_list:
        params["groups"] = group_list
    if email:
        params["email"] = email.lower()
    if server_id is None:
        query: sa.Executable = _grants_statement(bool(group_list), bool(email))
    else:
        query = (
            sa.select(Album.label, AlbumMember.principal_kind)
            .join(Album, Album.id == AlbumMember.album_id)
            .where(_principal_filter(subject, group_list, email), Album.server_id == server_id)
        )
        params = {}
    rows = db.session.execute(query, params).all()
    labels = frozenset([row[0] for row in rows])
    if email and bind:
        email_kind = PrincipalKind.EMAIL.value  # looked up once: this loop is the hot path
        if any(row[1] == email_kind for row in rows):
            bind_invitations(subject, email)
    if not labels:
        return frozenset(), frozenset()
    return labels, ALBUM_MEMBER_PERMISSIONS


def bind_caller_invitations(caller: Caller) -> int:
    """Bind e-mail invitations for the caller's verified e-mail, if any (cheap when none)."""
    if not caller.subject or not caller.email:
        return 0
    waiting = db.session.execute(
        sa.select(AlbumMember.id)
        .where(
            AlbumMember.principal_kind == PrincipalKind.EMAIL.value,
            AlbumMember.principal == caller.email,
        )
        .limit(1)
    ).first()
    if waiting is None:
        return 0
    db.session.rollback()  # end the read transaction before writing on another connection
    return bind_invitations(caller.subject, caller.email)


def bind_invitations(subject: str, email: str) -> int:
    """Turn e-mail invitations for ``email`` (verified) into memberships of ``subject``.

    Where the user is already a member, the better of the two roles is kept. Runs in its own
    transaction (the caller's session is left alone). Returns the number of invitations bound.
    """
    address = email.strip().lower()
    bound = 0
    with db.engine.begin() as conn:
        invites = conn.execute(
            sa.select(AlbumMember.id, AlbumMember.album_id, AlbumMember.role)
            .where(
                AlbumMember.principal_kind == PrincipalKind.EMAIL.value,
                AlbumMember.principal == address,
            )
            .with_for_update()
        ).all()
        for invite_id, album_id, role in invites:
            own = conn.execute(
                sa.select(AlbumMember.id, AlbumMember.role).where(
                    AlbumMember.album_id == album_id,
                    AlbumMember.principal_kind == PrincipalKind.USER.value,
                    AlbumMember.principal == subject,
                )
            ).first()
            if own is None:
                conn.execute(
                    sa.update(AlbumMember)
                    .where(AlbumMember.id == invite_id)
                    .values(principal_kind=PrincipalKind.USER.value, principal=subject)
                )
            else:
                best = _best_role([role, own.role])
                assert best is not None  # noqa: S101 - two roles given
                conn.execute(
                    sa.update(AlbumMember).where(AlbumMember.id == own.id).values(role=best.value)
                )
                conn.execute(sa.delete(AlbumMember).where(AlbumMember.id == invite_id))
            conn.execute(
                sa.insert(AuditEvent).values(
                    occurred_at=utcnow(),
                    action=AuditAction.album_invitation_bind.value,
                    actor=f"user:{subject}",
                    subject=f"album:{album_id}",
                    outcome=Outcome.success.value,
                    request_id=None,
                    detail={"email": address, "role": role},
                )
            )
            bound += 1
    return bound


# --- studies ------------------------------------------------------------------------------------


def _member_labels(caller: Caller) -> frozenset[str]:
    labels, _ = album_grants(caller.subject, caller.groups, caller.email, bind=False)
    return labels


def can_see_study(
    caller: Caller, study_labels: Iterable[str], member_labels: frozenset[str]
) -> bool:
    """Return True if the caller can already see a study carrying ``study_labels``."""
    actor = caller.actor
    if actor.is_global_admin:
        return True
    reads = not actor.permissions.isdisjoint(_READ_PERMISSIONS)
    if reads and (actor.sees_all_studies or "*" in caller.labels):
        return True
    labels = set(study_labels)
    if reads and not labels.isdisjoint(caller.labels):
        return True
    return not labels.isdisjoint(member_labels)


def _resolve(client: OrthancClient, ref: str) -> dict[str, Any] | None:
    """Return Orthanc's study JSON (with ``Labels``) for an Orthanc id or a StudyInstanceUID."""
    if _ORTHANC_ID_RE.fullmatch(ref):
        study = client.get_study(ref)
        if study is not None:
            return study
    if _UID_RE.fullmatch(ref) and len(ref) <= 64:
        study_id = client.lookup_study(ref)
        if study_id is not None:
            return client.get_study(study_id)
    return None


def _clean_refs(refs: object) -> list[str]:
    errors = _Errors()
    if not isinstance(refs, list) or not refs:
        errors.add("studies", "must be a non-empty list of Orthanc study ids or StudyInstanceUIDs")
        errors.raise_if_any()
    assert isinstance(refs, list)  # noqa: S101 - checked above
    if len(refs) > MAX_BULK:
        errors.add("studies", f"must list at most {MAX_BULK} studies")
    for index, ref in enumerate(refs):
        if not isinstance(ref, str) or not (
            _ORTHANC_ID_RE.fullmatch(ref) or (_UID_RE.fullmatch(ref) and len(ref) <= 64)
        ):
            errors.add(f"studies[{index}]", "must be an Orthanc study id or a StudyInstanceUID")
    errors.raise_if_any()
    return list(dict.fromkeys(refs))


def _uid_of(study: dict[str, Any]) -> str | None:
    tags = study.get("MainDicomTags") or {}
    uid = tags.get("StudyInstanceUID")
    return uid if isinstance(uid, str) else None


def add_studies(caller: Caller, album_id: str, refs: object) -> list[StudyResult]:
    """Put studies into an album (contributors), by Orthanc id or StudyInstanceUID.

    Each study must already be visible to the caller; one that is not is reported as
    ``not-found``, exactly like a study that does not exist. Idempotent.
    :raise 404/403 (role). :raise 422: malformed list. :raise 503: Orthanc unreachable.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_STUDY_ADD)
    # The role part of the rule first (as if the study were visible), before any Orthanc call.
    _authorize(caller, Action.ALBUM_STUDY_ADD, album, role, Target(study_visible_to_actor=True))
    clean = _clean_refs(refs)
    client = _orthanc(album.server_id)
    member_labels = _member_labels(caller)
    results: list[StudyResult] = []
    pending: list[int] = []
    present = set(
        db.session.execute(
            sa.select(AlbumStudy.study_id).where(AlbumStudy.album_id == album.id)
        ).scalars()
    )
    for ref in clean:
        study = _resolve(client, ref)
        labels = [str(x) for x in (study or {}).get("Labels", [])]
        visible = study is not None and can_see_study(caller, labels, member_labels)
        decision = decide(
            caller.actor,
            Action.ALBUM_STUDY_ADD,
            album_role=role,
            target=Target(study_visible_to_actor=visible),
        )
        if study is None or not decision:
            audit.record(
                AuditAction.album_study_add,
                caller.name,
                f"album:{album.id}",
                Outcome.denied,
                {"study": ref, "reason": "not found or not visible"},
            )
            results.append(StudyResult(ref, "not-found"))
            continue
        study_id = str(study["ID"])
        uid = _uid_of(study)
        if study_id in present and album.label in labels:
            results.append(StudyResult(ref, "already-present", study_id, uid, "applied"))
            continue
        status = "already-present" if study_id in present else "added"
        if study_id not in present:
            db.session.add(
                AlbumStudy(
                    album_id=album.id,
                    study_id=study_id,
                    study_instance_uid=uid,
                    added_by=caller.name,
                    added_at=utcnow(),
                )
            )
            present.add(study_id)
            audit.record(
                AuditAction.album_study_add,
                caller.name,
                f"album:{album.id}",
                Outcome.success,
                {"study_id": study_id, "study_instance_uid": uid},
            )
        row = queue_label(album.server_id, study_id, album.label, LabelOp.ADD, album_id=album.id)
        pending.append(row.id)
        results.append(StudyResult(ref, status, study_id, uid, "pending"))
    db.session.commit()
    applied = _apply(pending)
    _retry_a_few()
    return [_with_label_state(r, applied) for r in results]


def remove_studies(caller: Caller, album_id: str, refs: object) -> list[StudyResult]:
    """Take studies out of an album (managers): the label goes, the studies stay in Orthanc.

    :raise 404/403/422/503.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_STUDY_REMOVE)
    _authorize(caller, Action.ALBUM_STUDY_REMOVE, album, role)
    clean = _clean_refs(refs)
    client = _orthanc(album.server_id)
    rows = {
        r.study_id: r
        for r in db.session.execute(
            sa.select(AlbumStudy).where(AlbumStudy.album_id == album.id)
        ).scalars()
    }
    by_uid = {r.study_instance_uid: r for r in rows.values() if r.study_instance_uid}
    results: list[StudyResult] = []
    pending: list[int] = []
    for ref in clean:
        row = rows.get(ref) or by_uid.get(ref)
        study_id: str | None = row.study_id if row is not None else None
        uid = row.study_instance_uid if row is not None else None
        if row is None:
            # Not recorded: it may still carry the label (labelled behind authsvc's back).
            study = _resolve(client, ref)
            if study is not None and album.label in study.get("Labels", []):
                study_id, uid = str(study["ID"]), _uid_of(study)
        if study_id is None:
            results.append(StudyResult(ref, "not-in-album"))
            continue
        if row is not None:
            db.session.delete(row)
            rows.pop(row.study_id, None)
        audit.record(
            AuditAction.album_study_remove,
            caller.name,
            f"album:{album.id}",
            Outcome.success,
            {"study_id": study_id, "study_instance_uid": uid},
        )
        pending.append(
            queue_label(
                album.server_id, study_id, album.label, LabelOp.REMOVE, album_id=album.id
            ).id
        )
        results.append(StudyResult(ref, "removed", study_id, uid, "pending"))
    db.session.commit()
    applied = _apply(pending)
    _retry_a_few()
    return [_with_label_state(r, applied) for r in results]


def _with_label_state(result: StudyResult, applied: set[str]) -> StudyResult:
    if result.label == "pending" and result.study_id in applied:
        return dataclasses.replace(result, label="applied")
    return result


#: Tags asked from Orthanc for album study lists (computed ones included, Orthanc >= 1.11).
STUDY_LIST_TAGS = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyDescription",
    "StudyInstanceUID",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
    "NumberOfStudyRelatedSeries",
)


def list_studies(caller: Caller, album_id: str, *, offset: int = 0, limit: int = 50) -> Page:
    """List an album's studies from Orthanc's label search, one page (any member).

    ``total`` counts the studies authsvc put into the album. :raise 404/503.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_STUDIES_LIST)
    _authorize(caller, Action.ALBUM_STUDIES_LIST, album, role)
    client = _orthanc(album.server_id)
    found = client.find_studies(
        labels=[album.label],
        expand=True,
        since=offset,
        limit=limit,
        requested_tags=STUDY_LIST_TAGS,
    )
    # The total comes from authsvc's own record (one indexed count) rather than from
    # Orthanc's count-resources, which costs as much as the page itself on a large album;
    # the two agree except while a label change is pending or drift awaits `reconcile`.
    total = db.session.execute(
        sa.select(sa.func.count()).select_from(AlbumStudy).where(AlbumStudy.album_id == album.id)
    ).scalar_one()
    return Page([_study_json(s) for s in found], int(total), offset, limit)


def _study_json(study: dict[str, Any]) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for key in ("PatientMainDicomTags", "MainDicomTags", "RequestedTags"):
        part = study.get(key)
        if isinstance(part, dict):
            tags.update(part)
    modalities = tags.get("ModalitiesInStudy") or ""

    def number(name: str) -> int | None:
        try:
            return int(tags[name])
        except (KeyError, TypeError, ValueError):
            return None

    return {
        "id": study.get("ID"),
        "study_instance_uid": tags.get("StudyInstanceUID"),
        "patient_name": tags.get("PatientName"),
        "patient_id": tags.get("PatientID"),
        "study_date": tags.get("StudyDate"),
        "study_description": tags.get("StudyDescription"),
        "accession_number": tags.get("AccessionNumber"),
        "modalities": [m for m in str(modalities).split("\\") if m],
        "series_count": number("NumberOfStudyRelatedSeries"),
        "instance_count": number("NumberOfStudyRelatedInstances"),
        "labels": [str(x) for x in study.get("Labels", [])],
    }


# --- pending labels -------------------------------------------------------------------------------


def queue_label(
    server_id: str,
    study_id: str,
    label: str,
    op: LabelOp | str,
    *,
    album_id: str | None = None,
) -> PendingLabel:
    """Record a label change to make in Orthanc, in the caller's transaction (the outbox).

    A newer operation on the same (server, study, label) replaces an older one. The uploads
    feature uses this too: queue, commit, then :func:`apply_pending` (or let a retry do it).
    """
    row = db.session.execute(
        sa.select(PendingLabel).where(
            PendingLabel.server_id == server_id,
            PendingLabel.study_id == study_id,
            PendingLabel.label == label,
        )
    ).scalar_one_or_none()
    now = utcnow()
    if row is None:
        row = PendingLabel(
            album_id=album_id,
            server_id=server_id,
            study_id=study_id,
            label=label,
            op=str(LabelOp(op)),
            attempts=0,
            last_error=None,
            created_at=now,
            next_attempt_at=now,
        )
        db.session.add(row)
    else:
        row.op = str(LabelOp(op))
        row.album_id = album_id or row.album_id
        row.next_attempt_at = now
    db.session.flush()
    return row


def apply_pending(ids: Iterable[int]) -> set[str]:
    """Apply queued label changes now (after the commit); return the study ids done."""
    return _apply(list(ids))


def _backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(2 ** min(attempts, 12), 3600))


def _apply(ids: Sequence[int]) -> set[str]:
    """Try each pending row once; delete it on success, record the error otherwise.

    Rows are locked with ``SKIP LOCKED`` (a row another replica is applying is left to it)
    and committed once per batch: if the process dies half-way, the rows not yet committed
    are simply retried later, which is harmless because label changes are idempotent.
    """
    done: set[str] = set()
    for start in range(0, len(ids), 500):
        rows = db.session.execute(
            sa.select(PendingLabel)
            .where(PendingLabel.id.in_(list(ids[start : start + 500])))
            .order_by(PendingLabel.id)
            .with_for_update(skip_locked=True)
        ).scalars()
        for row in list(rows):
            if _apply_one(row):
                done.add(row.study_id)
        db.session.commit()
    return done


def _apply_one(row: PendingLabel) -> bool:
    """Make one label change in Orthanc; update or delete the row (no commit)."""
    from authsvc.services import services

    client = services().orthanc.get(row.server_id)
    try:
        if client is None:
            raise OrthancUnavailable(f"Orthanc server {row.server_id!r} is not configured.")
        if row.op == LabelOp.ADD:
            client.add_label(row.study_id, row.label)
        else:
            client.remove_label(row.study_id, row.label)
    except OrthancError as exc:
        if exc.orthanc_status == 404:
            # The study is gone from Orthanc: nothing to label, and nothing left to remove.
            log.info("label %s %s: study %s no longer exists", row.op, row.label, row.study_id)
            if row.op == LabelOp.ADD and row.album_id is not None:
                db.session.execute(
                    sa.delete(AlbumStudy).where(
                        AlbumStudy.album_id == row.album_id, AlbumStudy.study_id == row.study_id
                    )
                )
            db.session.delete(row)
            return False
        _failed(row, exc.message)
        return False
    except OrthancUnavailable as exc:
        _failed(row, exc.message)
        return False
    db.session.delete(row)
    return True


def _failed(row: PendingLabel, message: str) -> None:
    row.attempts += 1
    row.last_error = message[:500]
    row.next_attempt_at = utcnow() + _backoff(row.attempts)
    log.warning(
        "label %s %s on study %s failed (attempt %d), will retry: %s",
        row.op,
        row.label,
        row.study_id,
        row.attempts,
        message,
    )


@dataclasses.dataclass
class RetryReport:
    """What :func:`retry_pending_labels` did."""

    applied: int = 0
    failed: int = 0
    remaining: int = 0


def _retry_a_few(limit: int = 10) -> None:
    """Piggy-back a few due retries on an album write: Orthanc is evidently reachable again.

    ``authsvc reconcile`` (cron) remains the guarantee; this only shortens the wait. It never
    fails the caller's request.
    """
    try:
        due = db.session.execute(
            sa.select(PendingLabel.id)
            .where(PendingLabel.next_attempt_at <= utcnow())
            .order_by(PendingLabel.next_attempt_at)
            .limit(limit)
        ).scalars()
        ids = list(due)
        db.session.rollback()
        if ids:
            _apply(ids)
    except Exception:  # noqa: BLE001 - best effort by design, logged
        db.session.rollback()
        log.warning("opportunistic label retry failed", exc_info=True)


def retry_pending_labels(*, limit: int = 500, due_only: bool = True) -> RetryReport:
    """Retry pending label changes (those due, or all); safe to run on several replicas."""
    query = sa.select(PendingLabel.id).order_by(PendingLabel.next_attempt_at).limit(limit)
    if due_only:
        query = query.where(PendingLabel.next_attempt_at <= utcnow())
    ids = list(db.session.execute(query).scalars())
    db.session.rollback()
    report = RetryReport()
    for pending_id in ids:
        before = db.session.get(PendingLabel, pending_id)
        if before is None:
            continue
        study_id = before.study_id
        db.session.rollback()
        done = _apply([pending_id])
        still = db.session.get(PendingLabel, pending_id)
        if study_id in done or still is None:
            report.applied += 1
        else:
            report.failed += 1
        db.session.rollback()
    report.remaining = int(
        db.session.execute(sa.select(sa.func.count()).select_from(PendingLabel)).scalar_one()
    )
    db.session.rollback()
    return report


# --- reconcile ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Drift:
    """One difference between the database and Orthanc's labels."""

    kind: str  # missing-label | unrecorded-label | orphan-label | study-gone | pending
    server_id: str
    label: str
    study_id: str
    album_id: str | None = None
    repaired: bool = False

    def describe(self) -> str:
        """Return one human-readable line."""
        where = f"album {self.album_id}" if self.album_id else "no album"
        state = "repaired" if self.repaired else "NOT repaired"
        return f"{self.kind}: study {self.study_id} label {self.label} ({where}) — {state}"


def _recorded(album_id: str) -> set[str]:
    """Return the Orthanc ids of the studies recorded in an album (a fresh read)."""
    ids = set(
        db.session.execute(
            sa.select(AlbumStudy.study_id).where(AlbumStudy.album_id == album_id)
        ).scalars()
    )
    db.session.rollback()
    return ids


def _still_labelled(client: OrthancClient, study_id: str, label: str, *, expect: bool) -> bool:
    """Return True if Orthanc still shows the state reconcile found (label present or not).

    A study that no longer exists counts as "not labelled". Orthanc errors keep the first
    answer (the repair then reports its own error).
    """
    try:
        study = client.get_study(study_id)
    except (OrthancUnavailable, OrthancError):
        return True
    has = study is not None and label in study.get("Labels", [])
    return has is expect


def _settled(album: Album, study_id: str, *, recorded: bool) -> bool:
    """Return True if the study's record is still as seen and no label change is pending.

    Read in a fresh transaction right before reconcile acts, so a user's add or removal that
    committed since the first read is left alone (its own pending label change will run).
    """
    present = (
        db.session.execute(
            sa.select(AlbumStudy.id).where(
                AlbumStudy.album_id == album.id, AlbumStudy.study_id == study_id
            )
        ).first()
        is not None
    )
    pending = (
        db.session.execute(
            sa.select(PendingLabel.id).where(
                PendingLabel.server_id == album.server_id,
                PendingLabel.study_id == study_id,
                PendingLabel.label == album.label,
            )
        ).first()
        is not None
    )
    db.session.rollback()
    return present is recorded and not pending


@dataclasses.dataclass
class ReconcileReport:
    """What :func:`reconcile` found and did."""

    drifts: list[Drift] = dataclasses.field(default_factory=list)
    retried: RetryReport = dataclasses.field(default_factory=RetryReport)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Return True if nothing needed (or still needs) repair."""
        return not self.drifts and not self.errors and self.retried.remaining == 0


def reconcile(*, repair: bool = True) -> ReconcileReport:
    """Compare ``album_study`` and pending changes with Orthanc's labels; repair if asked.

    * pending label changes are retried first (all of them, due or not);
    * a recorded study without its album's label gets it back (``missing-label``);
    * a study carrying an album's label without a record is adopted (``unrecorded-label``):
      only Orthanc admins can label studies outside authsvc, so the label is taken as intent;
    * a recorded study that no longer exists in Orthanc is forgotten (``study-gone``);
    * a label shaped like an album label with no album behind it is removed from every study
      carrying it (``orphan-label``): it grants access to nobody authsvc knows.
    """
    from authsvc.services import services

    report = ReconcileReport()
    if repair:
        report.retried = retry_pending_labels(limit=100_000, due_only=False)
    prefix = services().settings.album_label_prefix
    registry = services().orthanc
    albums = list(db.session.execute(sa.select(Album).order_by(Album.id)).scalars())
    known_labels: set[str] = {a.label for a in albums}
    db.session.rollback()
    for album in albums:
        client = registry.get(album.server_id)
        if client is None:
            report.errors.append(f"album {album.id}: server {album.server_id!r} not configured")
            continue
        # The database first, then Orthanc: a study removed (or added) through authsvc in
        # between shows up as a candidate, and every candidate is checked again against the
        # database right before it is acted on (_settled), so reconcile never undoes a
        # concurrent user change.
        recorded = _recorded(album.id)
        try:
            labelled = {str(s) for s in client.find_studies(labels=[album.label])}
        except (OrthancUnavailable, OrthancError) as exc:
            report.errors.append(f"album {album.id}: {exc.message}")
            continue
        for study_id in sorted(recorded - labelled):
            # Orthanc again, then the database: a removal through authsvc applied meanwhile
            # is seen in the database (no record, or its pending change), never undone.
            if not _still_labelled(client, study_id, album.label, expect=False):
                continue
            if not _settled(album, study_id, recorded=True):
                continue
            drift = Drift("missing-label", album.server_id, album.label, study_id, album.id)
            if repair:
                try:
                    client.add_label(study_id, album.label)
                    drift.repaired = True
                except OrthancError as exc:
                    if exc.orthanc_status == 404:
                        drift.kind = "study-gone"
                        db.session.execute(
                            sa.delete(AlbumStudy).where(
                                AlbumStudy.album_id == album.id, AlbumStudy.study_id == study_id
                            )
                        )
                        audit.record(
                            AuditAction.album_study_remove,
                            "system:reconcile",
                            f"album:{album.id}",
                            Outcome.success,
                            {"study_id": study_id, "reason": "study no longer in Orthanc"},
                        )
                        db.session.commit()
                        drift.repaired = True
                    else:
                        report.errors.append(f"study {study_id}: {exc.message}")
                except OrthancUnavailable as exc:
                    report.errors.append(f"study {study_id}: {exc.message}")
            db.session.rollback()
            report.drifts.append(drift)
        for study_id in sorted(labelled - recorded):
            # The database again, then Orthanc: a removal through authsvc deletes its pending
            # row only once Orthanc confirmed it, so a label still there now is not one.
            if not _settled(album, study_id, recorded=False):
                continue
            if not _still_labelled(client, study_id, album.label, expect=True):
                continue
            drift = Drift("unrecorded-label", album.server_id, album.label, study_id, album.id)
            if repair:
                study = client.get_study(study_id)
                db.session.add(
                    AlbumStudy(
                        album_id=album.id,
                        study_id=study_id,
                        study_instance_uid=_uid_of(study) if study else None,
                        added_by="system:reconcile",
                        added_at=utcnow(),
                    )
                )
                audit.record(
                    AuditAction.album_study_add,
                    "system:reconcile",
                    f"album:{album.id}",
                    Outcome.success,
                    {"study_id": study_id, "reason": "label found in Orthanc"},
                )
                try:
                    db.session.commit()
                    drift.repaired = True
                except sa.exc.IntegrityError:
                    # Added through authsvc at this very moment: nothing to adopt.
                    db.session.rollback()
                    continue
            db.session.rollback()
            report.drifts.append(drift)
    pending_keys = {
        (p.server_id, p.study_id, p.label)
        for p in db.session.execute(sa.select(PendingLabel)).scalars()
    }
    for client in registry:
        try:
            all_labels = client.all_labels()
        except (OrthancUnavailable, OrthancError) as exc:
            report.errors.append(f"server {client.server.id!r}: {exc.message}")
            continue
        for label in sorted(all_labels):
            if label in known_labels or not is_album_label(label, prefix):
                continue
            # Fresh check: an album created since the start of this run owns its label.
            owned = db.session.execute(sa.select(Album.id).where(Album.label == label)).first()
            db.session.rollback()
            if owned is not None:
                continue
            try:
                studies = [str(s) for s in client.find_studies(labels=[label])]
            except (OrthancUnavailable, OrthancError) as exc:
                report.errors.append(f"label {label}: {exc.message}")
                continue
            for study_id in studies:
                if (client.server.id, study_id, label) in pending_keys:
                    continue
                drift = Drift("orphan-label", client.server.id, label, study_id)
                if repair:
                    try:
                        client.remove_label(study_id, label)
                        drift.repaired = True
                    except (OrthancUnavailable, OrthancError) as exc:
                        report.errors.append(f"study {study_id}: {exc.message}")
                report.drifts.append(drift)
    if repair and report.drifts:
        audit.record(
            AuditAction.album_reconcile,
            "system:reconcile",
            None,
            Outcome.success,
            {
                "drifts": len(report.drifts),
                "repaired": sum(d.repaired for d in report.drifts),
                "kinds": sorted({d.kind for d in report.drifts}),
            },
        )
        db.session.commit()
    remaining = db.session.execute(sa.select(PendingLabel)).scalars().all()
    for p in remaining:
        report.drifts.append(
            Drift("pending", p.server_id, p.label, p.study_id, p.album_id, repaired=False)
        )
    db.session.rollback()
    return report
