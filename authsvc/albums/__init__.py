"""authsvc.albums: the album domain — albums, members, studies, their Orthanc labels, read access.

Every public use-case function loads what the rules need, asks :func:`authsvc.policy.decide`,
acts, and records an audit row in the same transaction as the change (denials are recorded
too). The functions commit; callers (views, CLI) do not.

An album owns one Orthanc label (:mod:`authsvc.album_labels`), generated once and never
derived from user text. Adding a study to an album puts that label on the study in Orthanc,
with authsvc's own credentials; removing it deletes the label; deleting the album removes the
label from every study (the studies stay in Orthanc).

The modules, one concern each:

* :mod:`~authsvc.albums.values` — callers, views, pages, study results; input validation;
* :mod:`~authsvc.albums.core` — loading an album and the caller's role, asking the policy;
* :mod:`~authsvc.albums.usecases` — create, list, get, edit, delete an album;
* :mod:`~authsvc.albums.members` — membership and e-mail invitations;
* :mod:`~authsvc.albums.studies` — add, remove, list an album's studies;
* :mod:`~authsvc.albums.labels` — the pending-label outbox, retries and :func:`reconcile`;
* :mod:`~authsvc.albums.grants` — the album labels a plugin profile gets;
* :mod:`~authsvc.albums.access` — the read path: roles by label (read tokens are credentials).

This package re-exports the names callers use (``from authsvc import albums``;
``albums.create_album(...)``). Code that replaces a function for a test patches the module
that defines it (``authsvc.albums.labels._recorded``), not this re-export.
"""

from __future__ import annotations

from authsvc.albums.core import Archive
from authsvc.albums.core import album_role
from authsvc.albums.core import membership_changed
from authsvc.albums.grants import ALBUM_MEMBER_PERMISSIONS
from authsvc.albums.grants import album_grants
from authsvc.albums.grants import grants_for
from authsvc.albums.labels import Drift
from authsvc.albums.labels import ReconcileReport
from authsvc.albums.labels import RetryReport
from authsvc.albums.labels import apply_pending
from authsvc.albums.labels import queue_label
from authsvc.albums.labels import reconcile
from authsvc.albums.labels import retry_pending_labels
from authsvc.albums.members import bind_caller_invitations
from authsvc.albums.members import bind_invitations
from authsvc.albums.members import change_member_role
from authsvc.albums.members import invite_member
from authsvc.albums.members import leave_album
from authsvc.albums.members import list_members
from authsvc.albums.members import remove_member
from authsvc.albums.studies import STUDY_LIST_TAGS
from authsvc.albums.studies import add_studies
from authsvc.albums.studies import can_see_study
from authsvc.albums.studies import list_studies
from authsvc.albums.studies import remove_studies
from authsvc.albums.usecases import create_album
from authsvc.albums.usecases import delete_album
from authsvc.albums.usecases import get_album
from authsvc.albums.usecases import list_albums
from authsvc.albums.usecases import update_album
from authsvc.albums.values import DESCRIPTION_MAX_LENGTH
from authsvc.albums.values import MAX_BULK
from authsvc.albums.values import MAX_PAGE_SIZE
from authsvc.albums.values import NAME_MAX_LENGTH
from authsvc.albums.values import PRINCIPAL_MAX_LENGTH
from authsvc.albums.values import AlbumView
from authsvc.albums.values import Caller
from authsvc.albums.values import LabelOp
from authsvc.albums.values import Page
from authsvc.albums.values import PrincipalKind
from authsvc.albums.values import StudyResult
from authsvc.albums.values import caller_for
from authsvc.albums.values import check_page

__all__ = [
    "Archive",
    "membership_changed",
    "ALBUM_MEMBER_PERMISSIONS",
    "DESCRIPTION_MAX_LENGTH",
    "MAX_BULK",
    "MAX_PAGE_SIZE",
    "NAME_MAX_LENGTH",
    "PRINCIPAL_MAX_LENGTH",
    "STUDY_LIST_TAGS",
    "AlbumView",
    "Caller",
    "Drift",
    "LabelOp",
    "Page",
    "PrincipalKind",
    "ReconcileReport",
    "RetryReport",
    "StudyResult",
    "add_studies",
    "album_grants",
    "grants_for",
    "album_role",
    "apply_pending",
    "bind_caller_invitations",
    "bind_invitations",
    "can_see_study",
    "caller_for",
    "change_member_role",
    "check_page",
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
