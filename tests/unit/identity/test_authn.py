"""Unit tests for authsvc.identity.authn: credentials -> identity -> profile -> actor (no DB)."""

from __future__ import annotations

from typing import Any

import pytest

from authsvc.errors import IdentityProviderUnavailable
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.errors import Unauthenticated
from authsvc.identity import ANONYMOUS
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity import KeycloakVerifier
from authsvc.identity.authn import Authenticator
from authsvc.identity.authn import Credentials
from authsvc.identity.roles import RoleGrant
from authsvc.identity.roles import RolesConfig
from tests import oidc

pytestmark = pytest.mark.unit


ROLES = RolesConfig(
    roles={
        "doctor": RoleGrant(frozenset({"view", "download"}), frozenset({"cardio"})),
        "viewer": RoleGrant(frozenset({"view"}), frozenset({"radio"})),
        "admin": RoleGrant(frozenset({"all"}), frozenset({"*"})),
        "auditor": RoleGrant(frozenset({"view"}), frozenset({"*"})),
        "public": RoleGrant(frozenset({"view"}), frozenset({"public"})),
        "boss": RoleGrant(frozenset({"view"}), frozenset({"x"})),
    },
    group_roles={"/radiology": frozenset({"viewer"})},
)


class Provider:
    """Serves the fake provider's documents; can be taken down."""

    def __init__(self) -> None:
        self.down = False

    def __call__(self, url: str) -> Any:
        if self.down:
            raise ConnectionError("refused")
        if url == oidc.DISCOVERY_URL:
            return {"issuer": oidc.ISSUER, "jwks_uri": oidc.JWKS_URL}
        if url == oidc.JWKS_URL:
            return {"keys": [oidc.signing_key().as_dict(private=False)]}
        raise AssertionError(url)


@pytest.fixture
def provider() -> Provider:
    return Provider()


def make_authn(provider: Provider | None = None, **kwargs: Any) -> Authenticator:
    verifier = None
    if provider is not None:
        verifier = KeycloakVerifier(oidc.ISSUER, client_id=oidc.CLIENT_ID, fetch_json=provider)
    return Authenticator(verifier=verifier, roles=lambda: ROLES, **kwargs)


def user(**kwargs: Any) -> Identity:
    return Identity(kind=IdentityKind.USER, subject="sub-1", username="u", **kwargs)


# --- authenticate ------------------------------------------------------------------------------


def test_no_credentials_is_anonymous(provider: Provider) -> None:
    identity = make_authn(provider).authenticate(Credentials())
    assert identity.is_anonymous
    assert identity.realm_roles == frozenset()


def test_blank_credentials_are_anonymous(provider: Provider) -> None:
    assert make_authn(provider).authenticate(Credentials(bearer="  ", api_key="")).is_anonymous


def test_bearer_jwt_becomes_identity(provider: Provider) -> None:
    token = oidc.make_token(
        "alice", realm_roles=("doctor",), client_roles=("viewer",), groups=("/radiology",)
    )
    identity = make_authn(provider).authenticate(Credentials(bearer=token))
    assert identity.kind is IdentityKind.USER
    assert identity.username == "alice"
    assert identity.realm_roles == {"doctor"}
    assert identity.client_roles == {"viewer"}
    assert identity.groups == {"/radiology"}


def test_forged_jwt_is_refused(provider: Provider) -> None:
    token = oidc.make_token("alice", key=oidc.foreign_key())
    with pytest.raises(TokenInvalid):
        make_authn(provider).authenticate(Credentials(bearer=token))


def test_expired_jwt_is_refused(provider: Provider) -> None:
    token = oidc.make_token("alice", lifetime=-3600)
    with pytest.raises(TokenExpired):
        make_authn(provider).authenticate(Credentials(bearer=token))


def test_provider_down_fails_closed(provider: Provider) -> None:
    provider.down = True
    with pytest.raises(IdentityProviderUnavailable):
        make_authn(provider).authenticate(Credentials(bearer=oidc.make_token()))


def test_bearer_without_oidc_configured_is_refused() -> None:
    with pytest.raises(Unauthenticated, match="no OIDC provider"):
        make_authn(None).authenticate(Credentials(bearer=oidc.make_token()))


def test_both_credentials_at_once_are_refused(provider: Provider) -> None:
    with pytest.raises(Unauthenticated, match="not both"):
        make_authn(provider).authenticate(
            Credentials(bearer=oidc.make_token(), api_key="ask_0123456789abcdef_" + "a" * 43)
        )


@pytest.mark.parametrize("text", ["ask_nothex_x", "ask_", "garbage"])
def test_malformed_api_key_is_refused_without_database(provider: Provider, text: str) -> None:
    # Parsing happens before any lookup, so no app context (and no DB) is needed to refuse it.
    with pytest.raises(TokenInvalid):
        make_authn(provider).authenticate(Credentials(api_key=text))


def test_bearer_with_api_key_prefix_goes_to_api_keys(provider: Provider) -> None:
    # "ask_..." in the Authorization header is an API key, not a JWT (no provider call made).
    provider.down = True
    with pytest.raises(TokenInvalid, match="API key"):
        make_authn(provider).authenticate(Credentials(bearer="ask_malformed"))


# --- profile -----------------------------------------------------------------------------------


def test_profile_unions_realm_client_and_group_roles() -> None:
    identity = user(
        realm_roles=frozenset({"doctor", "offline_access"}),
        client_roles=frozenset({"boss"}),
        groups=frozenset({"radiology"}),
    )
    profile = make_authn().profile(identity)
    assert profile.permissions == {"view", "download"}
    assert profile.authorized_labels == {"cardio", "x", "radio"}
    assert profile.roles == {"doctor", "boss", "viewer"}


def test_anonymous_profile_grants_nothing_by_default() -> None:
    profile = make_authn().profile(ANONYMOUS)
    assert profile.permissions == frozenset()
    assert profile.authorized_labels == frozenset()


def test_anonymous_profile_is_configurable() -> None:
    profile = make_authn(anonymous_roles=("public",)).profile(ANONYMOUS)
    assert profile.permissions == {"view"}
    assert profile.labels_list() == ["public"]


def test_album_grants_seam_adds_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real seam reads the database (tests/functional/albums/test_albums_service.py covers it).
    calls: list[Identity] = []

    def grants(identity: Identity) -> tuple[frozenset[str], frozenset[str]]:
        calls.append(identity)
        return frozenset({"album-1"}), frozenset({"view"})

    a = make_authn(album_grants=grants)
    profile = a.profile(user())
    assert profile.labels_list() == ["album-1"]
    assert profile.permissions == {"view"}
    # Without albums (the policy actor), and never for anonymous callers.
    assert a.profile(user(), with_albums=False).authorized_labels == frozenset()
    a.profile(ANONYMOUS)
    assert len(calls) == 1


# --- actor -------------------------------------------------------------------------------------


def test_actor_of_plain_user() -> None:
    actor = make_authn().actor(user(realm_roles=frozenset({"doctor"})))
    assert actor.subject == "sub-1"
    assert actor.is_authenticated
    assert not actor.is_global_admin
    assert not actor.sees_all_studies
    assert actor.permissions == {"view", "download"}


def test_all_permission_makes_global_admin() -> None:
    actor = make_authn().actor(user(realm_roles=frozenset({"admin"})))
    assert actor.is_global_admin
    assert actor.sees_all_studies


def test_configured_admin_role_makes_global_admin_even_outside_roles_config() -> None:
    a = make_authn(admin_roles=("realm-admin", "viewer"))
    assert a.actor(user(realm_roles=frozenset({"realm-admin"}))).is_global_admin
    # Group-mapped roles count too.
    assert a.actor(user(groups=frozenset({"/radiology"}))).is_global_admin
    assert not a.actor(user(realm_roles=frozenset({"doctor"}))).is_global_admin


def test_star_labels_see_all_studies_without_admin() -> None:
    actor = make_authn().actor(user(realm_roles=frozenset({"auditor"})))
    assert actor.sees_all_studies
    assert not actor.is_global_admin


def test_anonymous_actor_is_never_admin() -> None:
    actor = make_authn(anonymous_roles=("admin",), admin_roles=("admin",)).actor(ANONYMOUS)
    assert not actor.is_authenticated
    assert not actor.is_global_admin
    assert actor.permissions == {"all"}


def test_actor_ignores_album_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_authn(album_grants=lambda identity: (frozenset({"a"}), frozenset({"view"})))
    assert a.actor(user()).permissions == frozenset()


# --- roles an API key may hold ------------------------------------------------------------------


def test_key_roles_held_are_the_identitys_own_roles_only() -> None:
    a = make_authn(admin_roles=("realm-admin",))
    identity = user(
        realm_roles=frozenset({"doctor", "realm-admin", "offline_access"}),
        groups=frozenset({"/radiology"}),
    )
    # Configured roles it holds (directly or through a group) and the admin role it holds;
    # never a Keycloak role the configuration does not know, never someone else's role.
    assert a.key_roles_held(identity) == {"doctor", "viewer", "realm-admin"}
    assert a.key_roles_held(user(realm_roles=frozenset({"viewer"}))) == {"viewer"}


def test_assignable_roles_are_configured_plus_admin_roles() -> None:
    a = make_authn(admin_roles=("realm-admin",))
    assert a.assignable_roles() == set(ROLES.roles) | {"realm-admin"}
