"""Loading an album and the caller's role in it, then asking the policy: every use-case's steps.

:func:`album_role` is the caller's best role in an album (as a user, through a Keycloak group
or through an e-mail invitation). :func:`_get_for` loads an album for a caller and conceals it
(404) from anyone who may not see it; :func:`_authorize` asks :func:`authsvc.policy.decide`
for the use-case's own action and records a denial in the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from blinker import Namespace
from sqlalchemy.orm import InstrumentedAttribute

from authsvc import audit
from authsvc.albums.values import AlbumView
from authsvc.albums.values import Caller
from authsvc.albums.values import PrincipalKind
from authsvc.audit import Outcome
from authsvc.errors import Conflict
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import OrthancUnavailable
from authsvc.errors import PreconditionFailed
from authsvc.extensions import db
from authsvc.identity import normalize_group
from authsvc.models import Album
from authsvc.models import AlbumMember
from authsvc.models import AlbumStudy
from authsvc.orthanc import OrthancClient
from authsvc.orthanc import OrthancServers
from authsvc.policy import NO_TARGET
from authsvc.policy import Action
from authsvc.policy import AlbumRole
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import Target
from authsvc.policy import decide


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


def _count_by_album(
    album_id: InstrumentedAttribute[str], album_ids: Sequence[str]
) -> dict[str, int]:
    """Count rows per album, ``album_id`` being a table's album column."""
    rows = db.session.execute(
        sa.select(album_id, sa.func.count()).where(album_id.in_(album_ids)).group_by(album_id)
    ).all()
    return {key: int(count) for key, count in rows}


def _counts(album_ids: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Return (members, studies) per album."""
    if not album_ids:
        return {}, {}
    return (
        _count_by_album(AlbumMember.album_id, album_ids),
        _count_by_album(AlbumStudy.album_id, album_ids),
    )


def _view(album: Album, role: AlbumRole | None) -> AlbumView:
    members, studies = _counts([album.id])
    return AlbumView(album, role, members.get(album.id, 0), studies.get(album.id, 0))


@dataclass(frozen=True)
class Archive:
    """Where the albums' studies live: the Orthanc servers, and the prefix of the labels
    authsvc owns there. Built once by the composition root (:mod:`authsvc.services`) and
    passed to every use-case that talks to Orthanc."""

    servers: OrthancServers
    label_prefix: str

    def client(self, server_id: str) -> OrthancClient:
        """Return the album's Orthanc client.

        :raise OrthancUnavailable: the album's server is no longer configured (503).
        """
        client = self.servers.get(server_id)
        if client is None:
            raise OrthancUnavailable(f"Orthanc server {server_id!r} is not configured.")
        return client


#: Sent after a membership change is committed (invite, role change, removal, album deleted).
#: The composition root connects the per-process cache of "does a credential still stand on
#: its maker?" answers to it (other processes see the change within that cache's TTL, see
#: :mod:`authsvc.credentials.lifecycle`).
membership_changed = Namespace().signal("album-membership-changed")


def _membership_changed() -> None:
    membership_changed.send(None)
