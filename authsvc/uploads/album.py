"""authsvc.uploads.album: the study sink that puts each uploaded study into one album, durably."""

from __future__ import annotations

import sqlalchemy as sa

from authsvc.albums import Archive
from authsvc.albums import LabelOp
from authsvc.albums import apply_pending
from authsvc.albums import queue_label
from authsvc.errors import DependencyUnavailable
from authsvc.errors import OrthancError
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumStudy
from authsvc.models import utcnow
from authsvc.uploads.outcomes import StudyOutcome
from authsvc.uploads.outcomes import StudySink


def album_sink(archive: Archive, album: Album, added_by: str) -> StudySink:
    """Return the sink that puts each uploaded study into ``album``, durably.

    For each new study: record it in ``album_study`` and queue the label change in
    ``pending_label`` (one transaction), commit, then apply the label in Orthanc through the
    albums module. If Orthanc fails now, the pending row stays and
    :func:`authsvc.albums.retry_pending_labels` (``authsvc reconcile``) applies it later.
    """

    client = archive.client(album.server_id)

    def put(study: StudyOutcome) -> None:
        try:
            study.study_instance_uid = client.study_instance_uid(study.study_id)
        except (OrthancError, DependencyUnavailable):
            study.study_instance_uid = None  # only descriptive; the label is what matters
        present = db.session.execute(
            sa.select(AlbumStudy.id).where(
                AlbumStudy.album_id == album.id, AlbumStudy.study_id == study.study_id
            )
        ).first()
        if present is None:
            try:
                with db.session.begin_nested():
                    db.session.add(
                        AlbumStudy(
                            album_id=album.id,
                            study_id=study.study_id,
                            study_instance_uid=study.study_instance_uid,
                            added_by=added_by,
                            added_at=utcnow(),
                        )
                    )
            except sa.exc.IntegrityError:
                pass  # a concurrent upload of the same study recorded it first
        pending = queue_label(
            album.server_id, study.study_id, album.label, LabelOp.ADD, album_id=album.id
        )
        pending_id = pending.id
        db.session.commit()
        study.in_album = study.study_id in apply_pending(archive, [pending_id])

    return put
