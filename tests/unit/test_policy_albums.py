"""The album rules of authsvc.policy as a full matrix: every album action × every album role
(none, viewer, contributor, manager, owner) × global admin or not, then each guard on its own.

The expected table below is written independently of policy.ALBUM_RULES (it restates the
table of docs/policy.md), so a change to the rules must change this file too.
"""

from __future__ import annotations

import itertools

import pytest

from authsvc.policy import ALBUM_RULES
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import Denied
from authsvc.policy import Target
from authsvc.policy import decide

pytestmark = pytest.mark.unit

V, C, M, OWN = AlbumRole.VIEWER, AlbumRole.CONTRIBUTOR, AlbumRole.MANAGER, AlbumRole.OWNER

#: Least album role per action (None: no membership needed).
LEAST_ROLE: dict[Action, AlbumRole | None] = {
    Action.ALBUM_CREATE: None,
    Action.ALBUM_VIEW: V,
    Action.ALBUM_STUDIES_LIST: V,
    Action.ALBUM_MEMBERS_LIST: V,
    Action.ALBUM_LEAVE: V,
    Action.ALBUM_UPLOAD: C,
    Action.ALBUM_STUDY_ADD: C,
    Action.ALBUM_UPLOAD_TOKEN_CREATE: C,
    Action.ALBUM_UPLOAD_TOKEN_LIST: C,
    Action.ALBUM_UPLOAD_TOKEN_REVOKE: C,
    Action.ALBUM_STUDY_REMOVE: M,
    Action.ALBUM_MEMBER_INVITE: M,
    Action.ALBUM_MEMBER_REMOVE: M,
    Action.ALBUM_MEMBER_ROLE_CHANGE: M,
    Action.ALBUM_SHARE_LINK_CREATE: M,
    Action.ALBUM_SHARE_LINK_LIST: M,
    Action.ALBUM_SHARE_LINK_REVOKE: M,
    Action.ALBUM_READ_TOKEN_CREATE: M,
    Action.ALBUM_READ_TOKEN_LIST: M,
    Action.ALBUM_READ_TOKEN_REVOKE: M,
    Action.ALBUM_EDIT: OWN,
    Action.ALBUM_DELETE: OWN,
}

#: A target under which every guard passes (two owners, a viewer acted upon, a visible study…).
EASY = Target(
    owner_count=2,
    member_role=V,
    new_role=V,
    study_visible_to_actor=True,
    token_issued_by_actor=True,
)
ROLES: list[AlbumRole | None] = [None, V, C, M, OWN]


def test_the_table_covers_every_album_action() -> None:
    assert set(LEAST_ROLE) == set(ALBUM_RULES)
    assert {a for a in Action if a.value.startswith("album:")} == set(ALBUM_RULES)


@pytest.mark.parametrize(
    ("action", "role", "admin"),
    list(itertools.product(sorted(LEAST_ROLE), ROLES, [False, True])),
)
def test_role_matrix(action: Action, role: AlbumRole | None, admin: bool) -> None:
    actor = Actor(subject="someone", is_global_admin=admin)
    decision = decide(actor, action, album_role=role, target=EASY)
    least = LEAST_ROLE[action]
    if action is Action.ALBUM_LEAVE and role is None:
        expected = False  # nothing to leave, admins included
    elif admin or least is None:
        expected = True
    else:
        expected = role is not None and role.at_least(least)
    assert bool(decision) is expected, decision.reason
    if not expected:
        assert isinstance(decision, Denied)
        # Non-members are told nothing (404); members learn they lack the role (403).
        concealed = role is None and not admin and action is not Action.ALBUM_CREATE
        assert decision.conceal is concealed


def test_anonymous_callers_create_nothing() -> None:
    assert not decide(Actor(subject=""), Action.ALBUM_CREATE)
    assert decide(Actor(subject="u"), Action.ALBUM_CREATE)


@pytest.mark.parametrize("admin", [False, True])
def test_nobody_adds_a_study_they_cannot_see(admin: bool) -> None:
    actor = Actor(subject="u", is_global_admin=admin)
    hidden = Target(study_visible_to_actor=False)
    for role in (C, M, OWN):
        assert not decide(actor, Action.ALBUM_STUDY_ADD, album_role=role, target=hidden)


@pytest.mark.parametrize(
    ("authority", "new_role", "allowed"),
    [(M, V, True), (M, C, True), (M, M, True), (M, OWN, False), (OWN, OWN, True)],
)
def test_only_owners_make_owners(authority: AlbumRole, new_role: AlbumRole, allowed: bool) -> None:
    target = Target(new_role=new_role, member_role=V, owner_count=2)
    actor = Actor(subject="u")
    assert bool(decide(actor, Action.ALBUM_MEMBER_INVITE, album_role=authority, target=target)) is (
        allowed
    )
    assert bool(
        decide(actor, Action.ALBUM_MEMBER_ROLE_CHANGE, album_role=authority, target=target)
    ) is (allowed)


@pytest.mark.parametrize("action", [Action.ALBUM_MEMBER_REMOVE, Action.ALBUM_MEMBER_ROLE_CHANGE])
def test_managers_cannot_touch_owners(action: Action) -> None:
    target = Target(member_role=OWN, new_role=V, owner_count=3)
    assert not decide(Actor(subject="u"), action, album_role=M, target=target)
    assert decide(Actor(subject="u"), action, album_role=OWN, target=target)


@pytest.mark.parametrize("admin", [False, True])
def test_the_last_owner_stays(admin: bool) -> None:
    actor = Actor(subject="u", is_global_admin=admin)
    last = Target(member_role=OWN, new_role=M, owner_count=1)
    unknown = Target(member_role=OWN, new_role=M)
    for target in (last, unknown):
        assert not decide(actor, Action.ALBUM_MEMBER_REMOVE, album_role=OWN, target=target)
        assert not decide(actor, Action.ALBUM_MEMBER_ROLE_CHANGE, album_role=OWN, target=target)
        assert not decide(actor, Action.ALBUM_LEAVE, album_role=OWN, target=target)
    # Re-granting owner to the last owner is no demotion.
    same = Target(member_role=OWN, new_role=OWN, owner_count=1)
    assert decide(actor, Action.ALBUM_MEMBER_ROLE_CHANGE, album_role=OWN, target=same)
    # A non-owner leaves whatever the owner count.
    assert decide(actor, Action.ALBUM_LEAVE, album_role=V, target=Target(owner_count=1))


def test_member_actions_need_their_facts() -> None:
    actor = Actor(subject="u")
    assert not decide(actor, Action.ALBUM_MEMBER_INVITE, album_role=OWN, target=Target())
    assert not decide(actor, Action.ALBUM_MEMBER_REMOVE, album_role=OWN, target=Target())


@pytest.mark.parametrize(
    "action", [Action.ALBUM_UPLOAD_TOKEN_LIST, Action.ALBUM_UPLOAD_TOKEN_REVOKE]
)
def test_contributors_handle_only_their_own_upload_tokens(action: Action) -> None:
    others = Target(token_issued_by_actor=False)
    actor = Actor(subject="u")
    assert not decide(actor, action, album_role=C, target=others)
    assert decide(actor, action, album_role=C, target=EASY)
    assert decide(actor, action, album_role=M, target=others)


def test_unknown_actions_are_denied() -> None:
    assert not decide(Actor(subject="u", is_global_admin=True), "album:teleport")  # type: ignore[arg-type]
