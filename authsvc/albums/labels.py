"""An album's Orthanc label, kept true: the pending-label outbox and :func:`reconcile`.

**Nothing lost.** A label change is first written to ``pending_label`` in the same transaction
as the database change (an outbox), then applied to Orthanc after the commit and the pending
row deleted. If Orthanc fails, the row stays with its error and a next attempt time;
:func:`retry_pending_labels` (run by ``authsvc reconcile`` and opportunistically after album
writes) applies it later. Every Orthanc label operation is idempotent, so applying twice is safe.
:func:`reconcile` compares ``album_study`` (what authsvc put into albums) with Orthanc's labels.
(The label's name itself is made by :mod:`authsvc.album_labels`.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable
from collections.abc import Sequence

import sqlalchemy as sa

from authsvc import audit
from authsvc.album_labels import is_album_label
from authsvc.albums.core import Archive
from authsvc.albums.values import LabelOp
from authsvc.albums.values import _uid_of
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumStudy
from authsvc.models import PendingLabel
from authsvc.models import utcnow
from authsvc.orthanc import OrthancClient

log = logging.getLogger(__name__)


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


def apply_pending(archive: Archive, ids: Iterable[int]) -> set[str]:
    """Apply queued label changes now (after the commit); return the study ids done."""
    return _apply(archive, list(ids))


def _backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(2 ** min(attempts, 12), 3600))


def _apply(archive: Archive, ids: Sequence[int]) -> set[str]:
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
            if _apply_one(archive, row):
                done.add(row.study_id)
        db.session.commit()
    return done


def _apply_one(archive: Archive, row: PendingLabel) -> bool:
    """Make one label change in Orthanc; update or delete the row (no commit)."""
    client = archive.servers.get(row.server_id)
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


def _retry_a_few(archive: Archive, limit: int = 10) -> None:
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
            _apply(archive, ids)
    except Exception:  # noqa: BLE001 - best effort by design, logged
        db.session.rollback()
        log.warning("opportunistic label retry failed", exc_info=True)


def retry_pending_labels(
    archive: Archive, *, limit: int = 500, due_only: bool = True
) -> RetryReport:
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
        done = _apply(archive, [pending_id])
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


def reconcile(archive: Archive, *, repair: bool = True) -> ReconcileReport:
    """Compare ``album_study`` and pending changes with Orthanc's labels; repair if asked.

    * pending label changes are retried first (all of them, due or not);
    * a recorded study without its album's label gets it back (``missing-label``);
    * a study carrying an album's label without a record is adopted (``unrecorded-label``):
      only Orthanc admins can label studies outside authsvc, so the label is taken as intent;
    * a recorded study that no longer exists in Orthanc is forgotten (``study-gone``);
    * a label shaped like an album label with no album behind it is removed from every study
      carrying it (``orphan-label``): it grants access to nobody authsvc knows.
    """
    report = ReconcileReport()
    if repair:
        report.retried = retry_pending_labels(archive, limit=100_000, due_only=False)
    prefix = archive.label_prefix
    registry = archive.servers
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
