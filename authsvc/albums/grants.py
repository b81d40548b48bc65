"""The profile seam: which album labels (and read permissions) an identity gets.

:func:`album_grants` gives the plugin profile the labels of every album the identity can see
(as a user, through a Keycloak group, or through an e-mail invitation, which it binds) plus the
read-type permissions :data:`ALBUM_MEMBER_PERMISSIONS` — never ``edit-labels``: album writes go
through authsvc. It is one indexed query.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from authsvc.albums.core import _principal_filter
from authsvc.albums.members import bind_invitations
from authsvc.albums.values import PrincipalKind
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import normalize_group
from authsvc.models import Album
from authsvc.models import AlbumMember

#: Orthanc permissions album membership adds to a profile: read-type only (protocol spec §4.5:
#: ``view`` opens the label-checked read routes, ``download`` the download links). Never
#: ``edit-labels``: with it anyone could label any study into any album.
ALBUM_MEMBER_PERMISSIONS: frozenset[str] = frozenset({"view", "download"})


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


def grants_for(identity: Identity) -> tuple[frozenset[str], frozenset[str]]:
    """Return (labels, permissions) the identity gets from its album memberships.

    The Orthanc labels of every album the identity may view — as a user, through a Keycloak
    group, or through an e-mail invitation for its *verified* e-mail (bound to the user on
    the way) — and the read-type permissions that go with them (architecture, "Plugin user
    mode"; never ``edit-labels``). One indexed query (:func:`album_grants`), so a membership
    change reaches the plugin within one profile ``validity``. The authenticator's
    ``album_grants`` (:class:`authsvc.identity.authn.Authenticator`).
    """
    if identity.is_anonymous or not identity.subject:
        return frozenset(), frozenset()
    email = identity.email if identity.email and identity.email_verified else None
    return album_grants(identity.subject, identity.group_names, email)
