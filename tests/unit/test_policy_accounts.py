"""The account rules of authsvc.policy (API keys, share tokens, roles), as a full matrix."""

from __future__ import annotations

import pytest

from authsvc.policy import ACCOUNT_RULES
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import Target
from authsvc.policy import decide

pytestmark = pytest.mark.unit

ANONYMOUS = Actor(subject="")
USER = Actor(subject="u1", permissions=frozenset({"view"}))
STAR_USER = Actor(subject="u2", permissions=frozenset({"all"}), sees_all_studies=True)
ADMIN = Actor(subject="a1", is_global_admin=True)

OWN = Target(token_issued_by_actor=True)
OTHERS = Target()

# (action, user on own, user on others') -> expected for a plain authenticated user.
EXPECTED_FOR_USER = {
    Action.ADMIN_PAGES_ADMINISTER: (False, False),
    Action.API_KEY_CREATE: (True, True),
    Action.API_KEY_CREATE_SERVICE: (False, False),
    Action.API_KEY_LIST: (True, True),
    Action.API_KEY_LIST_ALL: (False, False),
    Action.API_KEY_REVOKE: (True, False),
    Action.ROLES_EDIT: (False, False),
    Action.ROLES_VIEW: (False, False),
    Action.SHARE_TOKEN_LIST: (True, True),
    Action.SHARE_TOKEN_LIST_ALL: (False, False),
    Action.SHARE_TOKEN_REVOKE: (True, False),
    Action.USER_DISABLE: (False, False),
}


def test_table_is_covered() -> None:
    assert set(EXPECTED_FOR_USER) == set(ACCOUNT_RULES)


@pytest.mark.parametrize("action", sorted(ACCOUNT_RULES))
@pytest.mark.parametrize("target", [OWN, OTHERS], ids=["own", "others"])
def test_anonymous_never(action: Action, target: Target) -> None:
    decision = decide(ANONYMOUS, action, target=target)
    assert not decision
    assert decision.reason == "authentication required"


@pytest.mark.parametrize("action", sorted(ACCOUNT_RULES))
@pytest.mark.parametrize("target", [OWN, OTHERS], ids=["own", "others"])
def test_admin_always(action: Action, target: Target) -> None:
    assert decide(ADMIN, action, target=target)


@pytest.mark.parametrize("actor", [USER, STAR_USER], ids=["user", "all-permission-not-admin"])
@pytest.mark.parametrize("action", sorted(ACCOUNT_RULES))
def test_users(actor: Actor, action: Action) -> None:
    own, others = EXPECTED_FOR_USER[action]
    assert bool(decide(actor, action, target=OWN)) is own
    decision = decide(actor, action, target=OTHERS)
    assert bool(decision) is others
    if not others and ACCOUNT_RULES[action].owner_only:
        assert decision.conceal  # type: ignore[attr-defined]


KEY_USER = Actor(subject="u1", via_api_key=True)
KEY_ADMIN = Actor(subject="a1", is_global_admin=True, via_api_key=True)


@pytest.mark.parametrize("actor", [KEY_USER, KEY_ADMIN], ids=["user", "admin"])
def test_api_keys_do_not_mint_api_keys(actor: Actor) -> None:
    for action in (Action.API_KEY_CREATE, Action.API_KEY_CREATE_SERVICE):
        decision = decide(actor, action, target=OWN)
        assert not decision and "API keys" in decision.reason
    # Everything else works with a key as with a sign-in.
    assert decide(actor, Action.API_KEY_LIST)
    assert decide(actor, Action.API_KEY_REVOKE, target=OWN)
