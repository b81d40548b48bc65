"""authsvc.albums.access: what an album gives a caller on the read path: roles by label.

The nginx gate and the album DICOMweb endpoint ask on every request which albums the caller is
in, with which role. :func:`roles_by_label` maps each album label to the caller's best role in
that album (as a user, through a Keycloak group, or through an e-mail invitation). One indexed
query, cached a few seconds per process (:class:`RoleCache`): a viewer's 200 frame requests
cost one query, and a membership change made elsewhere is seen within ``ttl`` seconds.

Album read tokens are credentials: :mod:`authsvc.credentials.read_token_records`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from types import MappingProxyType

import sqlalchemy as sa

from authsvc.albums.core import _principal_filter
from authsvc.extensions import db
from authsvc.models import AlbumMember
from authsvc.orthanc.study_labels import TtlMap
from authsvc.policy import AlbumRole

__all__ = [
    "RoleCache",
    "roles_by_label",
]

log = logging.getLogger(__name__)


# --- album roles by label -------------------------------------------------------------------


def roles_by_label(
    subject: str, groups: Iterable[str] = (), email: str | None = None
) -> Mapping[str, AlbumRole]:
    """Return album label → the principal's best role there (user, group and e-mail rows)."""
    if not subject:
        return MappingProxyType({})
    # album_label repeats the album's immutable label: an index-only scan, no join.
    rows = db.session.execute(
        sa.select(AlbumMember.album_label, AlbumMember.role).where(
            _principal_filter(subject, groups, email)
        )
    ).all()
    best: dict[str, AlbumRole] = {}
    for label, value in rows:
        try:
            role = AlbumRole(value)
        except ValueError:
            continue  # an unknown role in the database grants nothing
        current = best.get(label)
        if current is None or role.rank > current.rank:
            best[label] = role
    return MappingProxyType(best)


class RoleCache:
    """A few seconds of :func:`roles_by_label` per principal, per process."""

    def __init__(self, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty cache (``ttl`` 0 disables it)."""
        self._ttl = ttl
        self._map = TtlMap(ttl, clock)

    def roles(
        self, subject: str, groups: Iterable[str] = (), email: str | None = None
    ) -> Mapping[str, AlbumRole]:
        """Return :func:`roles_by_label` for the principal, cached."""
        key = (subject, frozenset(groups), email)
        if self._ttl > 0:
            cached: Mapping[str, AlbumRole] | None = self._map.get(key)
            if cached is not None:
                return cached
        roles = roles_by_label(subject, key[1], email)
        if self._ttl > 0:
            self._map.put(key, roles)
        return roles

    def clear(self) -> None:
        """Forget everything (after a membership change made by this process)."""
        self._map.clear()
