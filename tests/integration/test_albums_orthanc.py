"""Albums against the real Orthanc and a real PostgreSQL.

Studies are generated DICOM (tests/dicom_factory.py) stored in the session's Orthanc; labels
are read back from Orthanc itself, and the profile is composed by the real authentication
seam. Concurrency is exercised with threads on PostgreSQL, where row locks really apply.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from authsvc import albums
from authsvc.albums import Caller
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.models import AlbumMember
from authsvc.policy import Actor
from authsvc.services import services
from tests import processes
from tests.conftest import _make_app
from tests.conftest import base_config
from tests.dicom_factory import make_study

READ = frozenset({"view"})


def person(sub: str, *, admin: bool = False) -> Caller:
    return Caller(actor=Actor(subject=sub, is_global_admin=admin, permissions=READ))


def identity(sub: str) -> Identity:
    return Identity(kind=IdentityKind.USER, subject=sub, username=sub)


@pytest.fixture
def app(
    orthanc: processes.OrthancService, pg_schema: str, tmp_path: Any, log_stream: io.StringIO
) -> Iterator[Flask]:
    config = base_config(
        tmp_path,
        database_url=pg_schema,
        orthanc_url=orthanc.url,
        orthanc_server_id="it",
        # A fresh prefix per test: reconcile must not touch labels other tests put in Orthanc.
        album_label_prefix="it" + uuid.uuid4().hex[:8] + "-",
    )
    app = _make_app(config, log_stream)
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


def store_study(orthanc: processes.OrthancService, **kwargs: Any) -> tuple[str, str]:
    """Store a generated study; return (Orthanc id, StudyInstanceUID)."""
    uid = "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:30]
    study_id = ""
    for instance in make_study(study_instance_uid=uid, **kwargs):
        answer = requests.post(f"{orthanc.url}/instances", data=instance, timeout=30)
        answer.raise_for_status()
        study_id = answer.json()["ParentStudy"]
    return study_id, uid


def labels(orthanc: processes.OrthancService, study_id: str) -> list[str]:
    response = requests.get(f"{orthanc.url}/studies/{study_id}/labels", timeout=10)
    response.raise_for_status()
    found: list[str] = response.json()
    return found


ADMIN = person("it-admin", admin=True)


def test_album_lifecycle(app: Flask, orthanc: processes.OrthancService) -> None:
    study_id, uid = store_study(orthanc, n_series=2, n_instances=3, modality="MR")
    view = albums.create_album(services().archive, ADMIN, "Knee MRI — cohort 1")
    album_id, label = view.album.id, view.album.label
    assert view.album.server_id == "it"

    added = albums.add_studies(services().archive, ADMIN, album_id, [uid])
    assert [(r.status, r.study_id, r.label) for r in added] == [("added", study_id, "applied")]
    assert label in labels(orthanc, study_id)

    albums.invite_member(ADMIN, album_id, "user", "it-bob", "viewer")
    bob = services().authenticator.profile(identity("it-bob"))
    assert label in bob.authorized_labels and "view" in bob.permissions
    assert "edit-labels" not in bob.permissions
    carol = services().authenticator.profile(identity("it-carol"))
    assert label not in carol.authorized_labels

    page = albums.list_studies(services().archive, person("it-bob"), album_id)
    assert page.total == 1
    item = page.items[0]
    assert item["id"] == study_id and item["study_instance_uid"] == uid
    assert item["modalities"] == ["MR"] and item["instance_count"] == 6
    assert item["series_count"] == 2 and item["patient_name"] == "Test^Patient"

    removed = albums.remove_studies(services().archive, ADMIN, album_id, [study_id])
    assert [(r.status, r.label) for r in removed] == [("removed", "applied")]
    assert label not in labels(orthanc, study_id)
    assert albums.list_studies(services().archive, ADMIN, album_id).total == 0


def test_two_albums_two_users_see_nothing_of_each_other(
    app: Flask, orthanc: processes.OrthancService
) -> None:
    alice, bob = person("it-alice"), person("it-bob2")
    study_a, _ = store_study(orthanc)
    study_b, _ = store_study(orthanc)
    album_a = albums.create_album(services().archive, alice, "A").album
    album_b = albums.create_album(services().archive, bob, "B").album
    # Each owner puts a study in (they see it through the admin's help: the admin adds it).
    albums.add_studies(services().archive, ADMIN, album_a.id, [study_a])
    albums.add_studies(services().archive, ADMIN, album_b.id, [study_b])

    assert services().authenticator.profile(identity("it-alice")).authorized_labels == {
        album_a.label
    }
    assert services().authenticator.profile(identity("it-bob2")).authorized_labels == {
        album_b.label
    }
    # Bob cannot launder Alice's study into his album, nor read Alice's album.
    assert (
        albums.add_studies(services().archive, bob, album_b.id, [study_a])[0].status == "not-found"
    )
    assert labels(orthanc, study_a) == [album_a.label]
    with pytest.raises(NotFound):
        albums.list_studies(services().archive, bob, album_a.id)
    assert [s["id"] for s in albums.list_studies(services().archive, alice, album_a.id).items] == [
        study_a
    ]
    # Alice may copy her own album's study into a second album of hers.
    album_a2 = albums.create_album(services().archive, alice, "A2").album
    assert (
        albums.add_studies(services().archive, alice, album_a2.id, [study_a])[0].status == "added"
    )
    assert sorted(labels(orthanc, study_a)) == sorted([album_a.label, album_a2.label])


def test_reconcile_repairs_a_label_removed_behind_authsvcs_back(
    app: Flask, orthanc: processes.OrthancService
) -> None:
    study_id, _ = store_study(orthanc)
    album = albums.create_album(services().archive, ADMIN, "reconciled").album
    albums.add_studies(services().archive, ADMIN, album.id, [study_id])
    requests.delete(f"{orthanc.url}/studies/{study_id}/labels/{album.label}", timeout=10)
    assert album.label not in labels(orthanc, study_id)

    dry = albums.reconcile(services().archive, repair=False)
    mine = [d for d in dry.drifts if d.album_id == album.id]
    assert [(d.kind, d.study_id, d.repaired) for d in mine] == [("missing-label", study_id, False)]
    report = albums.reconcile(services().archive, repair=True)
    assert [(d.kind, d.repaired) for d in report.drifts if d.album_id == album.id] == [
        ("missing-label", True)
    ]
    assert album.label in labels(orthanc, study_id)
    # An album-shaped label with no album behind it is removed.
    orphan = album.label[:-26] + "a" * 26
    requests.put(f"{orthanc.url}/studies/{study_id}/labels/{orphan}", timeout=10)
    report = albums.reconcile(services().archive, repair=True)
    assert ("orphan-label", study_id, True) in [
        (d.kind, d.study_id, d.repaired) for d in report.drifts
    ]
    assert orphan not in labels(orthanc, study_id)
    assert albums.reconcile(services().archive, repair=True).clean


def test_delete_album_strips_its_label_and_keeps_the_studies(
    app: Flask, orthanc: processes.OrthancService
) -> None:
    study_id, _ = store_study(orthanc)
    album = albums.create_album(services().archive, ADMIN, "to delete").album
    albums.add_studies(services().archive, ADMIN, album.id, [study_id])
    assert albums.delete_album(services().archive, ADMIN, album.id) == 1
    assert album.label not in labels(orthanc, study_id)
    assert requests.get(f"{orthanc.url}/studies/{study_id}", timeout=10).status_code == 200


def _in_thread(app: Flask, work: Any, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        with app.app_context():
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                errors.append(exc)
            finally:
                db.session.remove()

    return threading.Thread(target=run)


def test_two_managers_editing_members_at_once_lose_nothing(app: Flask) -> None:
    owner = person("it-owner")
    album_id = albums.create_album(services().archive, owner, "busy").album.id
    albums.invite_member(owner, album_id, "user", "it-m1", "manager")
    albums.invite_member(owner, album_id, "user", "it-m2", "manager")
    db.session.remove()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def invites(manager: str) -> Any:
        def work() -> None:
            barrier.wait()
            for n in range(15):
                albums.invite_member(person(manager), album_id, "user", f"{manager}-u{n}", "viewer")

        return work

    threads = [_in_thread(app, invites(m), errors) for m in ("it-m1", "it-m2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    principals = set(
        db.session.execute(
            sa.select(AlbumMember.principal).where(AlbumMember.album_id == album_id)
        ).scalars()
    )
    assert len(principals) == 3 + 30
    assert {f"it-m{m}-u{n}" for m in (1, 2) for n in range(15)} <= principals


def test_two_owners_demoting_each_other_at_once_keep_an_owner(app: Flask) -> None:
    first, second = person("it-o1"), person("it-o2")
    album_id = albums.create_album(services().archive, first, "owners").album.id
    albums.invite_member(first, album_id, "user", "it-o2", "owner")
    rows = dict(
        db.session.execute(
            sa.select(AlbumMember.principal, AlbumMember.id).where(AlbumMember.album_id == album_id)
        ).all()
    )
    db.session.remove()
    for _ in range(3):
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def demote(actor: Caller, target: str, barrier: threading.Barrier = barrier) -> Any:
            def work() -> None:
                barrier.wait()
                albums.change_member_role(actor, album_id, rows[target], "viewer")

            return work

        threads = [
            _in_thread(app, demote(first, "it-o2"), errors),
            _in_thread(app, demote(second, "it-o1"), errors),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        owners = db.session.execute(
            sa.select(sa.func.count()).where(
                AlbumMember.album_id == album_id, AlbumMember.role == "owner"
            )
        ).scalar_one()
        db.session.remove()
        # Exactly one demotion wins; the other is refused (403), never both.
        assert owners == 1
        assert len(errors) == 1 and isinstance(errors[0], Forbidden)
        # Restore two owners for the next round.
        winner = first if albums.album_role(first, album_id) == "owner" else second
        loser = "it-o2" if winner is first else "it-o1"
        albums.change_member_role(winner, album_id, rows[loser], "owner")
        db.session.remove()
