"""The album use-cases (authsvc.albums) on SQLite and PostgreSQL, with Orthanc faked.

The HTTP layer is tested in test_albums_api.py; here each rule of the service is driven
directly: labels in Orthanc, the outbox for failed label changes, invitations, the last-owner
and visibility rules, reconcile, and the profile seam.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests_mock as rm
import sqlalchemy as sa
from flask import Flask

from authsvc import albums
from authsvc.albums import Caller
from authsvc.albums import labels as pending_labels
from authsvc.errors import Conflict
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import PreconditionFailed
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.models import AlbumMember
from authsvc.models import AlbumStudy
from authsvc.models import AuditEvent
from authsvc.models import PendingLabel
from authsvc.models import utcnow
from authsvc.policy import Actor
from authsvc.services import services
from tests.fake_orthanc import URL
from tests.fake_orthanc import FakeOrthanc

pytestmark = pytest.mark.functional

READER = frozenset({"view"})


def caller(
    sub: str,
    *,
    admin: bool = False,
    groups: frozenset[str] = frozenset(),
    email: str | None = None,
    labels: frozenset[str] = frozenset(),
    permissions: frozenset[str] = READER,
) -> Caller:
    return Caller(
        actor=Actor(subject=sub, is_global_admin=admin, permissions=permissions),
        groups=groups,
        email=email,
        labels=labels,
    )


ALICE = caller("alice")
BOB = caller("bob")
CAROL = caller("carol")
ADMIN = caller("root", admin=True)


@pytest.fixture
def orthanc() -> Iterator[FakeOrthanc]:
    with rm.Mocker() as mock:
        yield FakeOrthanc(mock)


@pytest.fixture
def ctx(db_app: Flask, orthanc: FakeOrthanc) -> Iterator[Flask]:
    # The fake Orthanc is configured as the default server; retries off for speed.
    db_app.extensions["authsvc"].orthanc._clients.clear()
    from authsvc.orthanc import OrthancClient
    from authsvc.orthanc import OrthancServer

    db_app.extensions["authsvc"].orthanc._clients["main"] = OrthancClient(
        OrthancServer(id="main", url=URL, retries=0), backoff=0
    )
    with db_app.app_context():
        yield db_app
        db.session.remove()


def audit_actions(outcome: str | None = None) -> list[str]:
    query = sa.select(AuditEvent.action).order_by(AuditEvent.id)
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    return list(db.session.execute(query).scalars())


def make_album(owner: Caller = ALICE, name: str = "Knee MRI") -> str:
    return albums.create_album(services().archive, owner, name, "").album.id


def member_id(album_id: str, principal: str) -> int:
    return db.session.execute(
        sa.select(AlbumMember.id).where(
            AlbumMember.album_id == album_id, AlbumMember.principal == principal
        )
    ).scalar_one()


# --- albums ------------------------------------------------------------------------------------


def test_create_gives_owner_a_generated_label_and_audits(ctx: Flask) -> None:
    view = albums.create_album(services().archive, ALICE, "  Knee MRI ☃  ", "for the study group")
    assert view.role == "owner" and view.member_count == 1
    assert view.album.name == "Knee MRI ☃"
    assert view.album.label.startswith("album-") and "knee" not in view.album.label
    assert view.album.server_id == "main"
    assert len(view.album.id) >= 16
    assert audit_actions() == ["album:create"]


def test_labels_and_ids_are_unique(ctx: Flask) -> None:
    made = [albums.create_album(services().archive, ALICE, "same name").album for _ in range(5)]
    assert len({a.label for a in made}) == 5 and len({a.id for a in made}) == 5


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 3}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "ok", "description": "d" * 4001}, "description"),
        ({"name": "ok", "description": ["x"]}, "description"),
        ({"name": "ok", "server_id": "nope"}, "server_id"),
    ],
)
def test_create_rejects_bad_fields(ctx: Flask, fields: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        albums.create_album(services().archive, ALICE, **fields)
    assert [d["field"] for d in err.value.details] == [bad]


def test_anonymous_cannot_create(ctx: Flask) -> None:
    with pytest.raises(Forbidden):
        albums.create_album(services().archive, caller(""), "x")
    assert audit_actions("denied") == ["album:create"]


def test_non_members_get_404_and_the_probe_is_audited(ctx: Flask) -> None:
    album_id = make_album()
    with pytest.raises(NotFound):
        albums.get_album(BOB, album_id)
    with pytest.raises(NotFound):
        albums.get_album(BOB, "does-not-exist")
    assert audit_actions("denied") == ["album:view"]
    assert albums.get_album(ADMIN, album_id).role is None


def test_list_mine_through_user_group_and_email(ctx: Flask) -> None:
    a1 = make_album(name="b-one")
    a2 = make_album(name="a-two")
    make_album(name="c-not-bob")
    albums.invite_member(ALICE, a1, "user", "bob", "viewer")
    albums.invite_member(ALICE, a2, "group", "/radiology", "contributor")
    bob = caller("bob", groups=frozenset({"radiology"}))
    page = albums.list_albums(bob)
    assert [(v.album.name, v.role) for v in page.items] == [
        ("a-two", "contributor"),
        ("b-one", "viewer"),
    ]
    assert page.total == 2
    assert albums.list_albums(ADMIN).total == 0
    assert albums.list_albums(ADMIN, everything=True).total == 3
    assert albums.list_albums(BOB, everything=True).total == 1  # not an admin: own only
    assert albums.list_albums(bob, offset=1, limit=1).items[0].album.name == "b-one"


def test_rename_needs_owner_and_current_version(ctx: Flask) -> None:
    album_id = make_album()
    albums.invite_member(ALICE, album_id, "user", "bob", "manager")
    with pytest.raises(Forbidden):
        albums.update_album(BOB, album_id, name="mine now")
    view = albums.update_album(ALICE, album_id, name="Renamed", expected_version=1)
    assert view.album.version == 2 and view.album.name == "Renamed"
    with pytest.raises(PreconditionFailed):
        albums.update_album(ALICE, album_id, name="stale", expected_version=1, precondition=True)
    with pytest.raises(Conflict):
        albums.update_album(ALICE, album_id, description="stale", expected_version=1)
    with pytest.raises(ValidationFailed):
        albums.update_album(ALICE, album_id)
    assert albums.get_album(ALICE, album_id).album.name == "Renamed"


# --- members -----------------------------------------------------------------------------------


def test_invite_rules(ctx: Flask) -> None:
    album_id = make_album()
    albums.invite_member(ALICE, album_id, "user", "bob", "manager")
    albums.invite_member(ALICE, album_id, "user", "carol", "viewer")
    # Managers invite, but never owners; viewers invite nobody (403: they know the album).
    albums.invite_member(BOB, album_id, "email", "Dan@Example.org", "contributor")
    with pytest.raises(Forbidden):
        albums.invite_member(BOB, album_id, "user", "eve", "owner")
    with pytest.raises(Forbidden):
        albums.invite_member(CAROL, album_id, "user", "eve", "viewer")
    with pytest.raises(Conflict):
        albums.invite_member(ALICE, album_id, "email", "dan@example.org", "viewer")
    with pytest.raises(ValidationFailed) as err:
        albums.invite_member(ALICE, album_id, "robot", "", "king")
    assert {d["field"] for d in err.value.details} == {"kind", "role"}
    with pytest.raises(ValidationFailed):
        albums.invite_member(ALICE, album_id, "email", "not-an-address", "viewer")
    members = albums.list_members(CAROL, album_id)
    assert [(m.principal_kind, m.principal, m.role) for m in members.items] == [
        ("user", "alice", "owner"),
        ("user", "bob", "manager"),
        ("email", "dan@example.org", "contributor"),
        ("user", "carol", "viewer"),
    ]


def test_last_owner_cannot_leave_be_removed_or_demoted(ctx: Flask) -> None:
    album_id = make_album()
    alice_row = member_id(album_id, "alice")
    for attempt in (
        lambda: albums.leave_album(ALICE, album_id),
        lambda: albums.remove_member(ALICE, album_id, alice_row),
        lambda: albums.change_member_role(ALICE, album_id, alice_row, "manager"),
        lambda: albums.remove_member(ADMIN, album_id, alice_row),
    ):
        with pytest.raises(Forbidden, match="at least one owner"):
            attempt()
    albums.invite_member(ALICE, album_id, "user", "bob", "owner")
    albums.leave_album(ALICE, album_id)
    assert albums.album_role(ALICE, album_id) is None
    assert albums.album_role(BOB, album_id) == "owner"


def test_managers_cannot_touch_owners(ctx: Flask) -> None:
    album_id = make_album()
    albums.invite_member(ALICE, album_id, "user", "bob", "manager")
    albums.invite_member(ALICE, album_id, "user", "carol", "viewer")
    alice_row, carol_row = member_id(album_id, "alice"), member_id(album_id, "carol")
    with pytest.raises(Forbidden):
        albums.remove_member(BOB, album_id, alice_row)
    with pytest.raises(Forbidden):
        albums.change_member_role(BOB, album_id, carol_row, "owner")
    albums.change_member_role(BOB, album_id, carol_row, "contributor")
    with pytest.raises(NotFound):
        albums.change_member_role(BOB, album_id, 999999, "viewer")
    with pytest.raises(NotFound):
        albums.remove_member(BOB, album_id, "abc")
    albums.remove_member(BOB, album_id, carol_row)
    assert albums.album_role(CAROL, album_id) is None
    assert "album:member:remove" in audit_actions("success")


def test_leaving_through_a_group_is_refused_with_a_reason(ctx: Flask) -> None:
    album_id = make_album()
    albums.invite_member(ALICE, album_id, "group", "lab", "viewer")
    with pytest.raises(Forbidden, match="group"):
        albums.leave_album(caller("gus", groups=frozenset({"/lab"})), album_id)
    with pytest.raises(NotFound):
        albums.leave_album(BOB, album_id)


def test_email_invitation_binds_on_first_verified_login(ctx: Flask) -> None:
    album_id = make_album()
    other = make_album(name="other")
    albums.invite_member(ALICE, album_id, "email", "dan@example.org", "contributor")
    albums.invite_member(ALICE, other, "email", "dan@example.org", "manager")
    albums.invite_member(ALICE, other, "user", "dan", "viewer")
    labels, perms = albums.album_grants("dan", (), "dan@example.org")
    assert len(labels) == 2 and perms == albums.ALBUM_MEMBER_PERMISSIONS
    db.session.rollback()
    rows = db.session.execute(
        sa.select(AlbumMember.album_id, AlbumMember.principal_kind, AlbumMember.role).where(
            AlbumMember.principal.in_(["dan", "dan@example.org"])
        )
    ).all()
    assert sorted(rows) == sorted([(album_id, "user", "contributor"), (other, "user", "manager")])
    assert audit_actions().count("album:invitation:bind") == 2
    # Bound: the grant now comes from the user row, without the e-mail.
    assert len(albums.album_grants("dan")[0]) == 2


def test_profile_grants_never_include_edit_labels(ctx: Flask) -> None:
    album_id = make_album()
    labels, perms = albums.album_grants("alice")
    assert labels == {albums.get_album(ALICE, album_id).album.label}
    assert "edit-labels" not in perms and perms <= {"view", "download"}
    assert albums.album_grants("nobody") == (frozenset(), frozenset())
    assert albums.album_grants("alice", server_id="other") == (frozenset(), frozenset())


# --- studies -----------------------------------------------------------------------------------


def test_add_and_remove_studies_put_and_take_the_label(ctx: Flask, orthanc: FakeOrthanc) -> None:
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    s1 = orthanc.add_study("1.2.3.1")
    s2 = orthanc.add_study("1.2.3.2")
    results = albums.add_studies(
        services().archive, ADMIN, album_id, [s1.id, "1.2.3.2", "1.2.3.999"]
    )
    assert [(r.status, r.label) for r in results] == [
        ("added", "applied"),
        ("added", "applied"),
        ("not-found", None),
    ]
    assert label in orthanc.labels_of(s1) and label in orthanc.labels_of(s2)
    again = albums.add_studies(services().archive, ADMIN, album_id, [s1.id])
    assert again[0].status == "already-present"
    page = albums.list_studies(services().archive, ADMIN, album_id, limit=1)
    assert page.total == 2 and len(page.items) == 1
    item = page.items[0]
    assert item["modalities"] == ["CT", "SR"] and item["instance_count"] == 3
    assert item["patient_name"] == "Doe^Jane" and item["study_instance_uid"].startswith("1.2.3.")
    removed = albums.remove_studies(services().archive, ADMIN, album_id, ["1.2.3.1", s2.id, "9.9"])
    assert [r.status for r in removed] == ["removed", "removed", "not-in-album"]
    assert label not in orthanc.labels_of(s1) and label not in orthanc.labels_of(s2)
    assert db.session.execute(sa.select(sa.func.count()).select_from(PendingLabel)).scalar() == 0


def test_nobody_adds_a_study_they_cannot_already_see(ctx: Flask, orthanc: FakeOrthanc) -> None:
    mine = make_album(owner=BOB, name="bob's")
    secret_album = make_album(owner=CAROL, name="carol's")
    carol_label = albums.get_album(CAROL, secret_album).album.label
    hidden = orthanc.add_study("1.9.1", labels={carol_label})
    team = orthanc.add_study("1.9.2", labels={"teamA"})
    unlabelled = orthanc.add_study("1.9.3")
    # Bob sees nothing of Carol's album: the study is reported as not found.
    assert albums.add_studies(services().archive, BOB, mine, [hidden.id])[0].status == "not-found"
    assert (
        albums.add_studies(services().archive, BOB, mine, [unlabelled.id])[0].status == "not-found"
    )
    assert carol_label in orthanc.labels_of(hidden) and len(orthanc.labels_of(hidden)) == 1
    # A role label with a read permission makes a study visible; without "view" it does not.
    bob_team = caller("bob", labels=frozenset({"teamA"}))
    assert albums.add_studies(services().archive, bob_team, mine, [team.id])[0].status == "added"
    blind = caller("bob", labels=frozenset({"teamA"}), permissions=frozenset())
    assert (
        albums.add_studies(services().archive, blind, mine, ["1.9.2"])[0].status
        == "already-present"
    )
    # Once Bob is a viewer of Carol's album he sees its studies and may copy them into his.
    albums.invite_member(CAROL, secret_album, "user", "bob", "viewer")
    assert albums.add_studies(services().archive, BOB, mine, [hidden.id])[0].status == "added"
    # ...but as a mere viewer he cannot add into Carol's album.
    with pytest.raises(Forbidden):
        albums.add_studies(services().archive, BOB, secret_album, [team.id])
    assert "album:study:add" in audit_actions("denied")


def test_study_roles(ctx: Flask, orthanc: FakeOrthanc) -> None:
    album_id = make_album(owner=ADMIN)
    albums.invite_member(ADMIN, album_id, "user", "bob", "contributor")
    study = orthanc.add_study("1.5.1")
    with pytest.raises(NotFound):
        albums.list_studies(services().archive, CAROL, album_id)
    with pytest.raises(NotFound):
        albums.add_studies(services().archive, CAROL, album_id, [study.id])
    # Bob sees the study only once it is in the album; as contributor he cannot remove it.
    albums.add_studies(services().archive, ADMIN, album_id, [study.id])
    assert (
        albums.add_studies(services().archive, BOB, album_id, [study.id])[0].status
        == "already-present"
    )
    with pytest.raises(Forbidden):
        albums.remove_studies(services().archive, BOB, album_id, [study.id])


@pytest.mark.parametrize(
    "refs", [[], "1.2.3", [""], ["not a uid"], [1], ["1.2." + "3" * 70], ["1.2"] * 1001, None]
)
def test_study_lists_are_validated(ctx: Flask, refs: Any) -> None:
    album_id = make_album(owner=ADMIN)
    with pytest.raises(ValidationFailed):
        albums.add_studies(services().archive, ADMIN, album_id, refs)
    with pytest.raises(ValidationFailed):
        albums.remove_studies(services().archive, ADMIN, album_id, refs)


def test_orthanc_outage_leaves_a_pending_label_that_a_retry_applies(
    ctx: Flask, orthanc: FakeOrthanc
) -> None:
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    study = orthanc.add_study("1.6.1")
    albums.add_studies(services().archive, ADMIN, album_id, [study.id])
    # Removal while Orthanc is down: the DB change holds, the label change is pending.
    orthanc.down = True
    assert (
        albums.remove_studies(services().archive, ADMIN, album_id, [study.id])[0].label == "pending"
    )
    row = db.session.execute(sa.select(PendingLabel)).scalar_one()
    assert (row.op, row.attempts, row.study_id) == ("remove", 1, study.id)
    assert "unreachable" in (row.last_error or "")
    assert label in orthanc.labels_of(study)
    report = albums.retry_pending_labels(services().archive, due_only=False)
    assert (report.applied, report.failed, report.remaining) == (0, 1, 1)
    orthanc.down = False
    assert (
        albums.retry_pending_labels(services().archive, due_only=True).applied == 0
    )  # not due yet (backoff)
    report = albums.retry_pending_labels(services().archive, due_only=False)
    assert (report.applied, report.remaining) == (1, 0)
    assert label not in orthanc.labels_of(study)


def test_delete_album_removes_its_label_everywhere(ctx: Flask, orthanc: FakeOrthanc) -> None:
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    s1, s2 = orthanc.add_study("1.7.1"), orthanc.add_study("1.7.2", labels={label, "keep"})
    albums.add_studies(services().archive, ADMIN, album_id, [s1.id])
    albums.invite_member(ADMIN, album_id, "user", "bob", "manager")
    with pytest.raises(Forbidden):
        albums.delete_album(services().archive, BOB, album_id)
    assert albums.delete_album(services().archive, ADMIN, album_id) == 2
    assert orthanc.labels_of(s1) == set() and orthanc.labels_of(s2) == {"keep"}
    assert s1.id in orthanc.studies  # the studies stay
    with pytest.raises(NotFound):
        albums.get_album(ADMIN, album_id)
    assert db.session.execute(sa.select(sa.func.count()).select_from(AlbumMember)).scalar() == 0
    assert albums.album_grants("bob") == (frozenset(), frozenset())


def test_reconcile_reports_and_repairs_drift(ctx: Flask, orthanc: FakeOrthanc) -> None:
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    kept, stripped, foreign = (orthanc.add_study(f"1.8.{i}") for i in range(3))
    albums.add_studies(services().archive, ADMIN, album_id, [kept.id, stripped.id])
    gone = orthanc.add_study("1.8.9")
    albums.add_studies(services().archive, ADMIN, album_id, [gone.id])
    orthanc.studies[stripped.id].labels.discard(label)  # removed behind authsvc's back
    del orthanc.studies[gone.id]  # deleted from Orthanc
    foreign.labels.add(label)  # labelled by an Orthanc admin
    orphan = "album-" + "a" * 26
    kept.labels.add(orphan)  # a label of an album that does not exist

    dry = albums.reconcile(services().archive, repair=False)
    assert sorted(d.kind for d in dry.drifts) == [
        "missing-label",
        "missing-label",
        "orphan-label",
        "unrecorded-label",
    ]
    assert not any(d.repaired for d in dry.drifts) and not dry.clean
    assert label not in orthanc.labels_of(stripped)

    report = albums.reconcile(services().archive, repair=True)
    kinds = sorted((d.kind, d.study_id) for d in report.drifts)
    assert ("study-gone", gone.id) in kinds and ("missing-label", stripped.id) in kinds
    assert all(d.repaired for d in report.drifts)
    assert label in orthanc.labels_of(stripped)
    assert orphan not in orthanc.labels_of(kept)
    recorded = set(
        db.session.execute(
            sa.select(AlbumStudy.study_id).where(AlbumStudy.album_id == album_id)
        ).scalars()
    )
    assert recorded == {kept.id, stripped.id, foreign.id}
    assert albums.reconcile(services().archive, repair=True).clean
    assert "album:reconcile" in audit_actions()


def test_reconcile_retries_pending_labels(ctx: Flask, orthanc: FakeOrthanc) -> None:
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    study = orthanc.add_study("1.4.1")
    # What the uploads feature does after storing a study while Orthanc refuses the label.
    db.session.add(
        AlbumStudy(album_id=album_id, study_id=study.id, added_by="test", added_at=utcnow())
    )
    albums.queue_label("main", study.id, label, "add", album_id=album_id)
    db.session.commit()
    orthanc.down = True
    report = albums.reconcile(services().archive, repair=True)
    assert report.retried.failed == 1 and not report.clean
    assert [d.kind for d in report.drifts] == ["pending"]
    orthanc.down = False
    report = albums.reconcile(services().archive, repair=True)
    assert report.retried.applied == 1 and report.clean
    assert label in orthanc.labels_of(study)


def test_the_plugin_profile_lists_album_labels_through_the_authn_seam(ctx: Flask) -> None:
    from authsvc.identity import ANONYMOUS
    from authsvc.identity import Identity
    from authsvc.identity import IdentityKind

    album_id = make_album()
    label = albums.get_album(ALICE, album_id).album.label
    albums.invite_member(ALICE, album_id, "group", "/lab", "viewer")
    albums.invite_member(ALICE, album_id, "email", "eve@example.org", "viewer")

    def person(sub: str, **kw: Any) -> Identity:
        return Identity(kind=IdentityKind.USER, subject=sub, **kw)

    assert services().authenticator.profile(person("alice")).labels_list() == [label]
    assert "view" in services().authenticator.profile(person("alice")).permissions
    assert services().authenticator.profile(
        person("gus", groups=frozenset({"/lab"}))
    ).labels_list() == [label]
    # An unverified e-mail binds nothing and sees nothing.
    unverified = person("eve", email="eve@example.org", email_verified=False)
    assert services().authenticator.profile(unverified).labels_list() == []
    verified = person("eve", email="EVE@example.org", email_verified=True)
    assert services().authenticator.profile(verified).labels_list() == [label]
    assert services().authenticator.profile(person("eve")).labels_list() == [
        label
    ]  # bound to the user now
    assert services().authenticator.profile(person("mallory")).labels_list() == []
    assert services().authenticator.profile(ANONYMOUS).labels_list() == []
    # Membership removed: the next profile no longer carries the label.
    albums.remove_member(ALICE, album_id, member_id(album_id, "lab"))
    assert (
        services().authenticator.profile(person("gus", groups=frozenset({"lab"}))).labels_list()
        == []
    )


def test_reconcile_command_reports_repairs_and_sets_the_exit_status(
    ctx: Flask, orthanc: FakeOrthanc
) -> None:
    from authsvc.commands import reconcile_command

    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    study = orthanc.add_study("1.3.9")
    albums.add_studies(services().archive, ADMIN, album_id, [study.id])
    db.session.remove()
    runner = ctx.test_cli_runner()
    clean = runner.invoke(reconcile_command, [])
    assert clean.exit_code == 0 and "0 difference(s)" in clean.output
    study.labels.discard(label)
    dry = runner.invoke(reconcile_command, ["--dry-run"])
    assert dry.exit_code == 1
    assert f"missing-label: study {study.id}" in dry.output and "NOT repaired" in dry.output
    assert label not in orthanc.labels_of(study)
    fixed = runner.invoke(reconcile_command, [])
    assert fixed.exit_code == 0 and "1 repaired" in fixed.output
    assert label in orthanc.labels_of(study)
    orthanc.down = True
    down = runner.invoke(reconcile_command, [])
    assert down.exit_code == 1 and "unreachable" in down.output


def test_member_rows_repeat_the_album_label_even_when_not_given(ctx: Flask) -> None:
    album_id = make_album()
    label = albums.get_album(ALICE, album_id).album.label
    db.session.add(
        AlbumMember(
            album_id=album_id,
            principal_kind="user",
            principal="zed",
            role="viewer",
            added_by="test",
            added_at=utcnow(),
        )
    )
    db.session.commit()
    stored = db.session.execute(
        sa.select(AlbumMember.album_label).where(AlbumMember.principal == "zed")
    ).scalar_one()
    assert stored == label
    assert albums.album_grants("zed") == ({label}, albums.ALBUM_MEMBER_PERMISSIONS)


def test_a_later_album_write_retries_due_pending_labels(ctx: Flask, orthanc: FakeOrthanc) -> None:
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    first, second = orthanc.add_study("1.11.1"), orthanc.add_study("1.11.2")
    albums.add_studies(services().archive, ADMIN, album_id, [first.id])
    orthanc.down = True
    albums.remove_studies(services().archive, ADMIN, album_id, [first.id])
    orthanc.down = False
    row = db.session.execute(sa.select(PendingLabel)).scalar_one()
    row.next_attempt_at = utcnow()  # its backoff is over
    db.session.commit()
    albums.add_studies(services().archive, ADMIN, album_id, [second.id])
    assert db.session.execute(sa.select(sa.func.count()).select_from(PendingLabel)).scalar() == 0
    assert label not in orthanc.labels_of(first) and label in orthanc.labels_of(second)


@pytest.mark.parametrize("applied", ["before-orthanc-answers", "after-orthanc-answers"])
def test_reconcile_never_undoes_a_concurrent_removal(
    ctx: Flask, orthanc: FakeOrthanc, monkeypatch: pytest.MonkeyPatch, applied: str
) -> None:
    """A user removes a study while reconcile compares; its label change lands in between."""
    album_id = make_album(owner=ADMIN)
    label = albums.get_album(ADMIN, album_id).album.label
    study = orthanc.add_study("1.12.1")
    albums.add_studies(services().archive, ADMIN, album_id, [study.id])
    client = ctx.extensions["authsvc"].orthanc.get("main")
    real_find, real_recorded = client.find_studies, pending_labels._recorded
    fired: list[str] = []

    def recorded_after_a_removal(album: str) -> set[str]:
        if album == album_id and not fired:
            fired.append("removed")
            if applied == "before-orthanc-answers":
                albums.remove_studies(services().archive, ADMIN, album_id, [study.id])
            else:  # committed, but Orthanc has not applied the label removal yet
                orthanc.down = True
                albums.remove_studies(services().archive, ADMIN, album_id, [study.id])
                orthanc.down = False
        return real_recorded(album)

    def find_then_apply(**kwargs: Any) -> list[Any]:
        answer = real_find(**kwargs)
        if kwargs.get("labels") == [label] and applied == "after-orthanc-answers":
            fired.append("applied")
            albums.retry_pending_labels(services().archive, due_only=False)
        return answer

    monkeypatch.setattr(pending_labels, "_recorded", recorded_after_a_removal)
    monkeypatch.setattr(client, "find_studies", find_then_apply)
    report = albums.reconcile(services().archive, repair=True)
    assert fired[0] == "removed"
    assert [d for d in report.drifts if d.album_id == album_id] == []
    assert label not in orthanc.labels_of(study)
    recorded = db.session.execute(
        sa.select(AlbumStudy).where(AlbumStudy.album_id == album_id)
    ).all()
    assert recorded == []
