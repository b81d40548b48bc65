"""The album use-cases proper: create, list, get, rename/describe, delete.

Album edits carry the album's ``version`` (ETag / If-Match): a stale version gives 409/412
instead of a lost update. Deleting an album removes its label from every study carrying it
(the studies stay in Orthanc), through the pending-label outbox (:mod:`authsvc.albums.labels`).
"""

from __future__ import annotations

import logging
import secrets

import sqlalchemy as sa

from authsvc import audit
from authsvc.album_labels import new_album_label
from authsvc.albums.core import Archive
from authsvc.albums.core import _authorize
from authsvc.albums.core import _best_role
from authsvc.albums.core import _caller_filter
from authsvc.albums.core import _check_version
from authsvc.albums.core import _counts
from authsvc.albums.core import _deny
from authsvc.albums.core import _get_for
from authsvc.albums.core import _membership_changed
from authsvc.albums.core import _view
from authsvc.albums.labels import _apply
from authsvc.albums.labels import queue_label
from authsvc.albums.values import AlbumView
from authsvc.albums.values import Caller
from authsvc.albums.values import LabelOp
from authsvc.albums.values import Page
from authsvc.albums.values import PrincipalKind
from authsvc.albums.values import _clean_description
from authsvc.albums.values import _clean_name
from authsvc.albums.values import _Errors
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AlbumStudy
from authsvc.models import PendingLabel
from authsvc.models import utcnow
from authsvc.policy import Action
from authsvc.policy import AlbumRole
from authsvc.policy import decide

log = logging.getLogger(__name__)


def create_album(
    archive: Archive,
    caller: Caller,
    name: object,
    description: object = "",
    server_id: object = None,
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
    registry = archive.servers
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
        label=new_album_label(archive.label_prefix),
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
    archive: Archive,
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
        found = archive.client(album.server_id).find_studies(labels=[album.label])
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
    _apply(archive, [p.id for p in pending])
    return len(study_ids)
