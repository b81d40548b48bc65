"""Album membership: list, invite, change a role, remove, leave; e-mail invitations bound.

Membership changes lock the album row (``SELECT … FOR UPDATE`` on PostgreSQL) before reading
the owner count, so two managers editing members at the same moment are serialised and the
"at least one owner" rule cannot be raced. An e-mail invitation is bound to the user the first
time they appear with that verified e-mail (:func:`bind_invitations`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from authsvc import audit
from authsvc.albums.core import _authorize
from authsvc.albums.core import _best_role
from authsvc.albums.core import _deny
from authsvc.albums.core import _get_for
from authsvc.albums.core import _membership_changed
from authsvc.albums.values import Caller
from authsvc.albums.values import Page
from authsvc.albums.values import PrincipalKind
from authsvc.albums.values import _clean_principal
from authsvc.albums.values import _clean_role
from authsvc.albums.values import _Errors
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.errors import Conflict
from authsvc.errors import NotFound
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AuditEvent
from authsvc.models import utcnow
from authsvc.policy import Action
from authsvc.policy import AlbumRole
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import Target


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


def _delete_member(caller: Caller, album: Album, member: AlbumMember, action: AuditAction) -> None:
    """Record the member's removal, delete the row, commit, and forget cached maker answers."""
    audit.record(
        action,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {**_member_json_subject(member), "role": member.role},
    )
    db.session.delete(member)
    db.session.commit()
    _membership_changed()


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
    _delete_member(caller, album, member, AuditAction.album_member_remove)


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
    _delete_member(caller, album, own, AuditAction.album_leave)


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
