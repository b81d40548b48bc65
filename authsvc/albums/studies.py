"""An album's studies: add, remove, list.

"Nobody adds a study they cannot already see": a caller sees a study if they are a global
admin, see every study (``*`` labels with a read permission), hold a role-config label the
study carries (with a read permission), or are a member of an album whose label the study
carries. The study's labels are read from Orthanc; a study the caller cannot see is reported
exactly like a study that does not exist.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from authsvc import audit
from authsvc.albums.core import Archive
from authsvc.albums.core import _authorize
from authsvc.albums.core import _get_for
from authsvc.albums.grants import album_grants
from authsvc.albums.labels import _apply
from authsvc.albums.labels import _retry_a_few
from authsvc.albums.labels import queue_label
from authsvc.albums.values import MAX_BULK
from authsvc.albums.values import Caller
from authsvc.albums.values import LabelOp
from authsvc.albums.values import Page
from authsvc.albums.values import StudyResult
from authsvc.albums.values import _Errors
from authsvc.albums.values import _uid_of
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.extensions import db
from authsvc.models import AlbumStudy
from authsvc.models import utcnow
from authsvc.orthanc import OrthancClient
from authsvc.policy import Action
from authsvc.policy import Target
from authsvc.policy import decide

#: Permissions that let a role-config label (or ``*``) make a study visible (as the plugin).
_READ_PERMISSIONS = frozenset({"all", "view"})

_ORTHANC_ID_RE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


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


def add_studies(archive: Archive, caller: Caller, album_id: str, refs: object) -> list[StudyResult]:
    """Put studies into an album (contributors), by Orthanc id or StudyInstanceUID.

    Each study must already be visible to the caller; one that is not is reported as
    ``not-found``, exactly like a study that does not exist. Idempotent.
    :raise 404/403 (role). :raise 422: malformed list. :raise 503: Orthanc unreachable.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_STUDY_ADD)
    # The role part of the rule first (as if the study were visible), before any Orthanc call.
    _authorize(caller, Action.ALBUM_STUDY_ADD, album, role, Target(study_visible_to_actor=True))
    clean = _clean_refs(refs)
    client = archive.client(album.server_id)
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
    applied = _apply(archive, pending)
    _retry_a_few(archive)
    return [_with_label_state(r, applied) for r in results]


def remove_studies(
    archive: Archive, caller: Caller, album_id: str, refs: object
) -> list[StudyResult]:
    """Take studies out of an album (managers): the label goes, the studies stay in Orthanc.

    :raise 404/403/422/503.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_STUDY_REMOVE)
    _authorize(caller, Action.ALBUM_STUDY_REMOVE, album, role)
    clean = _clean_refs(refs)
    client = archive.client(album.server_id)
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
    applied = _apply(archive, pending)
    _retry_a_few(archive)
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


def list_studies(
    archive: Archive, caller: Caller, album_id: str, *, offset: int = 0, limit: int = 50
) -> Page:
    """List an album's studies from Orthanc's label search, one page (any member).

    ``total`` counts the studies authsvc put into the album. :raise 404/503.
    """
    album, role = _get_for(caller, album_id, Action.ALBUM_STUDIES_LIST)
    _authorize(caller, Action.ALBUM_STUDIES_LIST, album, role)
    client = archive.client(album.server_id)
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
