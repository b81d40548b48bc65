"""policy.decide_credential_backing: a credential is worth what its maker could do now."""

from __future__ import annotations

import pytest

from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import CredentialKind
from authsvc.policy import Maker
from authsvc.policy import decide_credential_backing

pytestmark = pytest.mark.unit

USER = Actor("maker-sub")
ADMIN = Actor("admin-sub", is_global_admin=True)
ROLES: list[AlbumRole | None] = [None, *AlbumRole]

# The least album role that may make each album credential (the issuing rules).
LEAST = {
    CredentialKind.UPLOAD_TOKEN: AlbumRole.CONTRIBUTOR,
    CredentialKind.ALBUM_READ_TOKEN: AlbumRole.MANAGER,
}


@pytest.mark.parametrize("kind", list(LEAST))
@pytest.mark.parametrize("role", ROLES)
def test_album_credentials_need_the_role_that_makes_them(
    kind: CredentialKind, role: AlbumRole | None
) -> None:
    decision = decide_credential_backing(
        kind, Maker(actor=USER, album_exists=True, album_role=role)
    )
    expected = role is not None and role.at_least(LEAST[kind])
    assert bool(decision) is expected
    if not expected:
        assert (
            decision.reason == f"its maker is no longer a {LEAST[kind]} (or higher) of this album"
        )


@pytest.mark.parametrize("kind", list(LEAST))
@pytest.mark.parametrize("role", ROLES)
def test_a_deleted_album_ends_its_tokens_whoever_made_them(
    kind: CredentialKind, role: AlbumRole | None
) -> None:
    for actor in (USER, ADMIN):
        maker = Maker(actor=actor, album_exists=False, album_role=role)
        decision = decide_credential_backing(kind, maker)
        assert not decision
        assert decision.reason == "its album was deleted"


@pytest.mark.parametrize("kind", list(LEAST))
def test_an_admins_tokens_stand_while_the_maker_is_admin(kind: CredentialKind) -> None:
    assert decide_credential_backing(kind, Maker(actor=ADMIN, album_exists=True))
    assert not decide_credential_backing(kind, Maker(actor=Actor("admin-sub"), album_exists=True))


@pytest.mark.parametrize("kind", list(CredentialKind))
def test_a_disabled_maker_backs_nothing(kind: CredentialKind) -> None:
    maker = Maker(
        actor=ADMIN,
        disabled=True,
        album_exists=True,
        album_role=AlbumRole.OWNER,
        permissions=frozenset({"all"}),
        studies_visible=True,
    )
    decision = decide_credential_backing(kind, maker, token_type="stone-viewer-publication")
    assert not decision
    owner = "owner" if kind is CredentialKind.API_KEY else "maker"
    assert decision.reason == f"its {owner} is disabled"


@pytest.mark.parametrize("kind", list(CredentialKind))
def test_an_unknown_maker_backs_nothing(kind: CredentialKind) -> None:
    maker = Maker(actor=Actor(""), album_exists=True, album_role=AlbumRole.OWNER)
    decision = decide_credential_backing(kind, maker, token_type="viewer-instant-link")
    assert not decision
    assert decision.reason == "its maker is unknown"


def test_an_api_key_stands_while_its_owner_is_not_disabled() -> None:
    assert decide_credential_backing(CredentialKind.API_KEY, Maker(actor=USER))


@pytest.mark.parametrize("permissions", [frozenset(), frozenset({"view"}), frozenset({"share"})])
@pytest.mark.parametrize("visible", [False, True])
def test_a_share_link_needs_the_type_permission_and_the_study(
    permissions: frozenset[str], visible: bool
) -> None:
    maker = Maker(actor=USER, permissions=permissions, studies_visible=visible)
    decision = decide_credential_backing(
        CredentialKind.SHARE_LINK, maker, token_type="stone-viewer-publication"
    )
    assert bool(decision) is ("share" in permissions and visible)
    if not decision:
        assert decision.reason.startswith("its maker may no longer make it (")


def test_an_admin_shares_what_the_admin_sees() -> None:
    seen = Maker(actor=ADMIN, studies_visible=True)
    unseen = Maker(actor=ADMIN, studies_visible=False)
    kind = CredentialKind.SHARE_LINK
    assert decide_credential_backing(kind, seen, token_type="ohif-viewer-publication")
    assert not decide_credential_backing(kind, unseen, token_type="ohif-viewer-publication")


def test_a_share_link_of_an_unknown_type_is_not_backed() -> None:
    maker = Maker(actor=ADMIN, permissions=frozenset({"all"}), studies_visible=True)
    assert not decide_credential_backing(CredentialKind.SHARE_LINK, maker, token_type="nope")
