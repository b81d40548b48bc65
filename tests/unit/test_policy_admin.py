"""The admin decision of authsvc.policy: who is a global administrator, as a full matrix."""

from __future__ import annotations

import itertools

import pytest

from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import decide
from authsvc.policy import is_global_admin
from authsvc.policy import sees_every_study

pytestmark = pytest.mark.unit

ADMIN_ROLES = frozenset({"authsvc-admin"})
PERMISSIONS = {
    "none": frozenset(),
    "view": frozenset({"view"}),
    "all": frozenset({"all"}),
}
ROLES = {
    "none": frozenset(),
    "doctor": frozenset({"doctor"}),
    "admin-role": frozenset({"authsvc-admin", "doctor"}),
}


@pytest.mark.parametrize(
    ("authenticated", "perms", "roles"),
    list(itertools.product([True, False], PERMISSIONS, ROLES)),
)
def test_global_admin_matrix(authenticated: bool, perms: str, roles: str) -> None:
    expected = authenticated and (perms == "all" or roles == "admin-role")
    decided = is_global_admin(
        authenticated=authenticated,
        permissions=PERMISSIONS[perms],
        role_names=ROLES[roles],
        admin_roles=ADMIN_ROLES,
    )
    assert decided is expected


def test_no_admin_roles_configured_leaves_only_the_all_permission() -> None:
    def admin(perms: frozenset[str]) -> bool:
        return is_global_admin(
            authenticated=True,
            permissions=perms,
            role_names=frozenset({"authsvc-admin"}),
            admin_roles=frozenset(),
        )

    assert not admin(frozenset({"view"}))
    assert admin(frozenset({"all"}))


@pytest.mark.parametrize(
    ("actor", "allowed"),
    [
        (Actor(subject=""), False),
        (Actor(subject="u1", permissions=frozenset({"view"})), False),
        (Actor(subject="u2", permissions=frozenset({"all"}), sees_all_studies=True), False),
        (Actor(subject="a1", is_global_admin=True), True),
        (Actor(subject="a1", is_global_admin=True, via_api_key=True), True),
    ],
    ids=["anonymous", "user", "all-permission-not-admin", "admin", "admin-with-key"],
)
def test_administrators_pages(actor: Actor, allowed: bool) -> None:
    assert bool(decide(actor, Action.ADMIN_PAGES_ADMINISTER)) is allowed


@pytest.mark.parametrize(
    ("actor", "labels", "expected"),
    [
        (Actor(subject="a1", is_global_admin=True), frozenset(), True),
        (Actor(subject="u1", sees_all_studies=True), frozenset(), True),
        (Actor(subject="u1", permissions=frozenset({"view"})), frozenset({"*"}), True),
        (Actor(subject="u1", permissions=frozenset({"all"})), frozenset({"*"}), True),
        (Actor(subject="u1", permissions=frozenset({"upload"})), frozenset({"*"}), False),
        (Actor(subject="u1", permissions=frozenset({"view"})), frozenset({"ct"}), False),
        (Actor(subject="u1"), frozenset(), False),
    ],
    ids=["admin", "star-config", "star-view", "star-all", "star-no-view", "labels", "nothing"],
)
def test_sees_every_study(actor: Actor, labels: frozenset[str], expected: bool) -> None:
    assert sees_every_study(actor, labels) is expected
