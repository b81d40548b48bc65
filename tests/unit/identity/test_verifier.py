"""Unit tests for authsvc.identity (verifier, values): one test per JWT rule, test-made keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc import jwt
from joserfc.jwk import ECKey
from joserfc.jwk import OctKey
from joserfc.jwk import RSAKey

from authsvc.errors import ConfigError
from authsvc.errors import IdentityProviderUnavailable
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.identity import ANONYMOUS
from authsvc.identity import DEFAULT_ALGORITHMS
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity import KeycloakVerifier
from authsvc.identity import claims_to_identity
from authsvc.identity import normalize_group

pytestmark = pytest.mark.unit

ISSUER = "https://idp.test/realms/orthanc"
DISCOVERY_URL = ISSUER + "/.well-known/openid-configuration"
JWKS_URL = ISSUER + "/protocol/openid-connect/certs"
CLIENT = "orthanc"
NOW = 1_700_000_000.0
DROP = object()  # marks a claim to leave out


# --- keys (generated once per module: RSA generation is slow) --------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS256", "use": "sig"})


@pytest.fixture(scope="module")
def rsa_key_no_alg() -> RSAKey:
    # A JWK without "alg": usable with every RSA algorithm we allow.
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-any", "use": "sig"})


@pytest.fixture(scope="module")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS256"})


@pytest.fixture(scope="module")
def rotated_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "alg": "RS256", "use": "sig"})


@pytest.fixture(scope="module")
def ec256_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-256", "alg": "ES256", "use": "sig"})


@pytest.fixture(scope="module")
def ec384_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ec-384", "alg": "ES384", "use": "sig"})


@pytest.fixture(scope="module")
def enc_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-enc", "alg": "RSA-OAEP", "use": "enc"})


@pytest.fixture(scope="module")
def public_keys(
    rsa_key: RSAKey, rsa_key_no_alg: RSAKey, ec256_key: ECKey, ec384_key: ECKey
) -> list[dict[str, Any]]:
    return [k.as_dict(private=False) for k in (rsa_key, rsa_key_no_alg, ec256_key, ec384_key)]


# --- a fake provider and clock ---------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """Serves discovery and JWKS documents; counts calls; can be taken down."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.discovery: Any = {"issuer": ISSUER, "jwks_uri": JWKS_URL}
        self.jwks: Any = {"keys": keys}
        self.down = False
        self.calls: list[str] = []

    def __call__(self, url: str) -> Any:
        self.calls.append(url)
        if self.down:
            raise ConnectionError("connection refused")
        if url == DISCOVERY_URL:
            return self.discovery
        if url == JWKS_URL:
            return self.jwks
        raise AssertionError(f"unexpected URL {url}")

    def count(self, url: str) -> int:
        return self.calls.count(url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider(public_keys: list[dict[str, Any]]) -> FakeProvider:
    return FakeProvider(list(public_keys))


@pytest.fixture
def make_verifier(provider: FakeProvider, clock: FakeClock) -> Callable[..., KeycloakVerifier]:
    def make(**options: Any) -> KeycloakVerifier:
        options.setdefault("client_id", CLIENT)
        options.setdefault("fetch_json", provider)
        options.setdefault("clock", clock)
        return KeycloakVerifier(ISSUER, **options)

    return make


@pytest.fixture
def verifier(make_verifier: Callable[..., KeycloakVerifier]) -> KeycloakVerifier:
    return make_verifier()


# --- token helpers ---------------------------------------------------------------------------


def assert_verdict(verifier: KeycloakVerifier, token: str, accepted: bool, reason: str) -> None:
    """The token verifies as jane, or it is refused as TokenInvalid naming ``reason``."""
    if accepted:
        assert verifier.verify(token).username == "jane"
    else:
        with pytest.raises(TokenInvalid, match=reason):
            verifier.verify(token)


def claims(**overrides: Any) -> dict[str, Any]:
    """Keycloak-shaped access-token claims, valid at NOW; DROP removes a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "3cd50e87-a0e6-40a4-bebf-3eab0cb7b6c0",
        "aud": ["account"],
        "azp": CLIENT,
        "typ": "Bearer",
        "exp": int(NOW) + 300,
        "iat": int(NOW) - 10,
        "preferred_username": "jane",
        "name": "Jane Doe",
        "email": "jane@example.org",
        "email_verified": True,
        "realm_access": {"roles": ["default-roles-orthanc", "offline_access", "doctor-role"]},
        "resource_access": {CLIENT: {"roles": ["uploader"]}, "account": {"roles": ["x"]}},
        "groups": ["/radiology"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def sign(key: Any, alg: str = "RS256", kid: Any = DROP, **claim_overrides: Any) -> str:
    """Return a JWT signed by ``key`` (kid defaults to the key's own)."""
    header: dict[str, Any] = {"alg": alg}
    kid = key.kid if kid is DROP else kid
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, claims(**claim_overrides), key, algorithms=[alg])


def without_alg(key: Any) -> Any:
    """The same private key without its JWK "alg", so it can sign with any algorithm."""
    data = {k: v for k, v in key.as_dict(private=True).items() if k not in ("alg", "use")}
    return type(key).import_key(data)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    """Build a compact JWS from raw parts (for shapes libraries refuse to produce)."""
    h = b64(json.dumps(header).encode())
    p = b64(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    return f"{h}.{p}.{b64(signature)}"


def hs256_token(secret: bytes, kid: str = "rsa-1") -> str:
    """An HS256 token computed by hand (joserfc rightly refuses to do this with a PEM)."""
    header = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


# --- the happy path --------------------------------------------------------------------------


def test_valid_keycloak_token_gives_identity(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    identity = verifier.verify(sign(rsa_key))
    assert identity == Identity(
        kind=IdentityKind.USER,
        subject="3cd50e87-a0e6-40a4-bebf-3eab0cb7b6c0",
        username="jane",
        name="Jane Doe",
        email="jane@example.org",
        email_verified=True,
        realm_roles=frozenset({"default-roles-orthanc", "offline_access", "doctor-role"}),
        client_roles=frozenset({"uploader"}),
        groups=frozenset({"/radiology"}),
    )


def test_verify_token_reports_expiry(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    verified = verifier.verify_token(sign(rsa_key, exp=int(NOW) + 42))
    assert verified.expires_at == NOW + 42
    assert verified.identity.username == "jane"


@pytest.mark.parametrize(
    ("key_fixture", "alg"),
    [
        ("rsa_key", "RS256"),
        ("rsa_key_no_alg", "RS384"),
        ("rsa_key_no_alg", "RS512"),
        ("rsa_key_no_alg", "PS256"),
        ("ec256_key", "ES256"),
        ("ec384_key", "ES384"),
    ],
)
def test_every_default_algorithm_verifies(
    verifier: KeycloakVerifier, request: pytest.FixtureRequest, key_fixture: str, alg: str
) -> None:
    key = request.getfixturevalue(key_fixture)
    assert verifier.verify(sign(key, alg=alg)).username == "jane"


def test_default_algorithms_are_asymmetric_only() -> None:
    assert set(DEFAULT_ALGORITHMS) == {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384"}


def test_construction_does_no_io(provider: FakeProvider, make_verifier: Callable[..., Any]) -> None:
    make_verifier()
    assert provider.calls == []


def test_discovery_and_jwks_fetched_once(
    verifier: KeycloakVerifier, provider: FakeProvider, rsa_key: RSAKey, ec256_key: ECKey
) -> None:
    verifier.verify(sign(rsa_key, sub="a"))
    verifier.verify(sign(ec256_key, alg="ES256", sub="b"))
    assert provider.calls == [DISCOVERY_URL, JWKS_URL]


def test_jwks_url_skips_discovery(
    make_verifier: Callable[..., KeycloakVerifier], provider: FakeProvider, rsa_key: RSAKey
) -> None:
    verifier = make_verifier(jwks_url=JWKS_URL)
    verifier.verify(sign(rsa_key))
    assert provider.calls == [JWKS_URL]


def test_discovery_url_override(
    make_verifier: Callable[..., KeycloakVerifier], provider: FakeProvider, rsa_key: RSAKey
) -> None:
    internal = "http://keycloak:8080/realms/orthanc/.well-known/openid-configuration"

    def fetch(url: str) -> Any:
        return provider(DISCOVERY_URL if url == internal else url)

    verifier = make_verifier(discovery_url=internal, fetch_json=fetch)
    assert verifier.verify(sign(rsa_key)).username == "jane"


# --- algorithm rules -------------------------------------------------------------------------


def test_algorithm_outside_configured_list_refused(
    make_verifier: Callable[..., KeycloakVerifier], provider: FakeProvider, rsa_key_no_alg: RSAKey
) -> None:
    verifier = make_verifier(algorithms=["RS256"])
    with pytest.raises(TokenInvalid, match="algorithm"):
        verifier.verify(sign(rsa_key_no_alg, alg="RS512"))
    assert provider.calls == []  # refused before any key lookup


@pytest.mark.parametrize("as_what", ["pem", "jwk-json", "modulus"])
def test_hmac_signed_with_public_key_refused(
    verifier: KeycloakVerifier, provider: FakeProvider, rsa_key: RSAKey, as_what: str
) -> None:
    # The classic algorithm-confusion forgery: the attacker knows the public key (it is in the
    # JWKS) and uses it as an HMAC secret, hoping the verifier feeds the same bytes to HMAC.
    public = rsa_key.as_dict(private=False)
    secret = {
        "pem": rsa_key.as_pem(private=False),
        "jwk-json": json.dumps(public).encode(),
        "modulus": str(public["n"]).encode(),
    }[as_what]
    with pytest.raises(TokenInvalid, match="algorithm"):
        verifier.verify(hs256_token(secret))
    assert provider.calls == []


def test_hmac_token_refused_even_when_jwks_has_an_oct_key(
    make_verifier: Callable[..., KeycloakVerifier], provider: FakeProvider
) -> None:
    oct_key = OctKey.generate_key(256, parameters={"kid": "oct-1", "alg": "HS256"})
    provider.jwks["keys"].append(oct_key.as_dict(private=True))
    verifier = make_verifier(algorithms=["RS256"])
    token = jwt.encode({"alg": "HS256", "kid": "oct-1"}, claims(), oct_key, algorithms=["HS256"])
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


@pytest.mark.parametrize("signature", [b"", b"anything"])
def test_alg_none_refused(verifier: KeycloakVerifier, signature: bytes) -> None:
    token = raw_token({"alg": "none", "kid": "rsa-1"}, claims(), signature)
    if not signature:
        token = token.rstrip(".") + "."
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


@pytest.mark.parametrize("alg", ["None", "NONE", "rs256", "HS512", "EdDSA", "", None, 256])
def test_odd_alg_values_refused(verifier: KeycloakVerifier, alg: Any) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(raw_token({"alg": alg, "kid": "rsa-1"}, claims()))


def test_tampered_payload_refused(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    header, _, signature = sign(rsa_key).split(".")
    forged = b64(json.dumps(claims(realm_access={"roles": ["admin-role"]})).encode())
    with pytest.raises(TokenInvalid, match="signature"):
        verifier.verify(f"{header}.{forged}.{signature}")


def test_signature_of_another_key_with_same_kid_refused(
    verifier: KeycloakVerifier, other_rsa_key: RSAKey
) -> None:
    with pytest.raises(TokenInvalid, match="signature"):
        verifier.verify(sign(other_rsa_key))


def test_alg_not_matching_key_type_refused(verifier: KeycloakVerifier, ec256_key: ECKey) -> None:
    # Signed with the EC key but naming the RSA key: a key of the wrong type for ES256.
    with pytest.raises(TokenInvalid, match="does not match"):
        verifier.verify(sign(ec256_key, alg="ES256", kid="rsa-1"))


def test_alg_not_matching_jwk_alg_refused(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    # The JWK says RS256; a PS256 token under that kid is refused even with a valid signature.
    with pytest.raises(TokenInvalid, match="does not match"):
        verifier.verify(sign(without_alg(rsa_key), alg="PS256"))


def test_es384_curve_mismatch_refused(verifier: KeycloakVerifier, ec256_key: ECKey) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(ec256_key, alg="ES256", kid="ec-384"))


@pytest.mark.parametrize("kid", [None, "", 7])
def test_token_without_usable_kid_refused(
    verifier: KeycloakVerifier, rsa_key: RSAKey, kid: Any
) -> None:
    token = (
        sign(rsa_key, kid=None)
        if kid is None
        else raw_token({"alg": "RS256", "kid": kid}, claims())
    )
    with pytest.raises(TokenInvalid, match="kid"):
        verifier.verify(token)


@pytest.mark.parametrize("extra", [{"crit": ["exp"]}, {"b64": False, "crit": ["b64"]}])
def test_critical_extensions_refused(
    verifier: KeycloakVerifier, rsa_key: RSAKey, extra: dict[str, Any]
) -> None:
    token = raw_token({"alg": "RS256", "kid": "rsa-1", **extra}, claims())
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


def test_unknown_header_parameters_tolerated(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    lenient = jws.JWSRegistry(algorithms=["RS256"], strict_check_header=False)
    token = jwt.encode(
        {"alg": "RS256", "kid": "rsa-1", "x-vendor": "1"}, claims(), rsa_key, registry=lenient
    )
    assert verifier.verify(token).username == "jane"


def test_jku_header_is_never_followed(
    verifier: KeycloakVerifier, provider: FakeProvider, other_rsa_key: RSAKey
) -> None:
    token = jwt.encode(
        {"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.test/jwks"},
        claims(),
        other_rsa_key,
        algorithms=["RS256"],
    )
    with pytest.raises(TokenInvalid):
        verifier.verify(token)
    assert all("evil" not in url for url in provider.calls)


# --- malformed tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "!!!.???.***",
        "eyJhbGciOiJSUzI1NiJ9",
        "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "é.é.é",
        "x" * 200_000,
    ],
)
def test_malformed_tokens_refused(verifier: KeycloakVerifier, token: str) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (["alg", "RS256"], claims()),
        ({"kid": "rsa-1"}, claims()),
        ("RS256", claims()),
        ({"alg": "RS256", "kid": "rsa-1"}, b"not json"),
    ],
)
def test_malformed_parts_refused(verifier: KeycloakVerifier, header: Any, payload: Any) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(raw_token(header, payload))


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"null", b'{"exp": NaN}'])
def test_signed_non_object_claims_refused(
    verifier: KeycloakVerifier, rsa_key: RSAKey, payload: bytes
) -> None:
    token = jws.serialize_compact({"alg": "RS256", "kid": "rsa-1"}, payload, rsa_key)
    with pytest.raises(TokenInvalid, match="claims"):
        verifier.verify(token)


def test_non_string_token_refused(verifier: KeycloakVerifier) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(None)  # type: ignore[arg-type]


def test_errors_never_echo_the_token(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    for token in (sign(rsa_key, iss="https://evil.test"), sign(rsa_key, exp=1), "x.y.z"):
        with pytest.raises(TokenInvalid) as info:
            verifier.verify(token)
        assert token not in str(info.value)
        assert token not in json.dumps(info.value.to_dict())


# --- issuer, audience, token type ------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [ISSUER + "/", "https://idp.test/realms/other", "http://idp.test/realms/orthanc", DROP, 1],
)
def test_wrong_issuer_refused(verifier: KeycloakVerifier, rsa_key: RSAKey, iss: Any) -> None:
    with pytest.raises(TokenInvalid, match="issuer"):
        verifier.verify(sign(rsa_key, iss=iss))


@pytest.mark.parametrize(
    ("aud", "azp", "accepted"),
    [
        # Keycloak puts "account" in every client's tokens: alone it proves nothing.
        (["account"], "other-client", False),
        ("account", "other-client", False),
        (["account"], DROP, False),
        (["account"], CLIENT, True),  # ... but with azp naming our client it is ours
        (CLIENT, "other-client", True),
        (["broker", CLIENT], "other-client", True),
        (["broker"], CLIENT, True),  # azp is our client
        (DROP, CLIENT, True),
        (["broker"], "other-client", False),
        ("broker", DROP, False),
        (DROP, DROP, False),
        (42, "other-client", False),
        ([42, None], "other-client", False),
        ({"account": True}, "other-client", False),
    ],
)
def test_audience_rule(
    verifier: KeycloakVerifier, rsa_key: RSAKey, aud: Any, azp: Any, accepted: bool
) -> None:
    token = sign(rsa_key, aud=aud, azp=azp)
    assert_verdict(verifier, token, accepted, "audience")


@pytest.mark.parametrize(
    ("trusted", "aud", "azp", "accepted"),
    [
        (["portal"], ["account"], "portal", True),
        (["portal"], "account", "portal", True),
        (["portal"], ["account"], "other-client", False),
        (["portal"], ["account"], ["portal"], False),  # azp must be one string
        (["portal"], ["broker"], "portal", False),  # trust widens `account` only
        (["portal"], DROP, "portal", False),
        (["*"], ["account"], "anything", True),  # the old rule, only on request
        (["*"], ["broker"], "anything", False),
        ([], ["account"], "portal", False),
    ],
)
def test_account_audience_needs_a_trusted_client(
    make_verifier: Callable[..., KeycloakVerifier],
    rsa_key: RSAKey,
    trusted: list[str],
    aud: Any,
    azp: Any,
    accepted: bool,
) -> None:
    verifier = make_verifier(trusted_clients=trusted)
    token = sign(rsa_key, aud=aud, azp=azp)
    assert_verdict(verifier, token, accepted, "audience")


def test_account_not_configured_means_no_trust(
    make_verifier: Callable[..., KeycloakVerifier], rsa_key: RSAKey
) -> None:
    verifier = make_verifier(audiences=["authsvc"], trusted_clients=["portal"])
    with pytest.raises(TokenInvalid, match="audience"):
        verifier.verify(sign(rsa_key, aud="account", azp="portal"))


def test_configured_audiences_replace_defaults(
    make_verifier: Callable[..., KeycloakVerifier], rsa_key: RSAKey
) -> None:
    verifier = make_verifier(audiences=["authsvc"], accept_azp=False)
    assert verifier.verify(sign(rsa_key, aud="authsvc")).username == "jane"
    with pytest.raises(TokenInvalid, match="audience"):
        verifier.verify(sign(rsa_key, aud="account", sub="other"))
    with pytest.raises(TokenInvalid, match="audience"):
        verifier.verify(sign(rsa_key, aud="broker", azp=CLIENT, sub="third"))


@pytest.mark.parametrize(
    ("typ", "accepted"),
    [
        ("Bearer", True),
        ("bearer", True),
        (DROP, True),
        ("ID", False),
        ("Refresh", False),
        (1, False),
    ],
)
def test_token_type_rule(
    verifier: KeycloakVerifier, rsa_key: RSAKey, typ: Any, accepted: bool
) -> None:
    token = sign(rsa_key, typ=typ)
    assert_verdict(verifier, token, accepted, "access token")


def test_token_type_check_can_be_disabled(
    make_verifier: Callable[..., KeycloakVerifier], rsa_key: RSAKey
) -> None:
    verifier = make_verifier(token_types=None)
    assert verifier.verify(sign(rsa_key, typ="ID")).username == "jane"


# --- time: exp, nbf, leeway ------------------------------------------------------------------


@pytest.mark.parametrize("exp", [DROP, None, "1700000300", True, [1], {"at": 1}])
def test_missing_or_garbage_exp_is_invalid_not_expired(
    verifier: KeycloakVerifier, rsa_key: RSAKey, exp: Any
) -> None:
    with pytest.raises(TokenInvalid, match="exp") as info:
        verifier.verify(sign(rsa_key, exp=exp))
    assert not isinstance(info.value, TokenExpired)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "1e999"])
def test_non_finite_exp_refused(verifier: KeycloakVerifier, rsa_key: RSAKey, constant: str) -> None:
    # An "exp" of Infinity would never expire; NaN compares false with everything.
    payload = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {constant}').encode()
    token = jws.serialize_compact({"alg": "RS256", "kid": rsa_key.kid}, payload, rsa_key)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert not isinstance(info.value, TokenExpired)


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [
        (+300, "ok"),
        (+1, "ok"),
        (0, "ok"),
        (-29, "ok"),  # inside the default 30 s leeway
        (-30, "ok"),
        (-31, "expired"),
        (-86_400, "expired"),
    ],
)
def test_exp_with_leeway(
    verifier: KeycloakVerifier, rsa_key: RSAKey, offset: int, outcome: str
) -> None:
    token = sign(rsa_key, exp=int(NOW) + offset)
    if outcome == "ok":
        assert verifier.verify(token).username == "jane"
    else:
        with pytest.raises(TokenExpired):
            verifier.verify(token)


def test_leeway_is_configurable(
    make_verifier: Callable[..., KeycloakVerifier], rsa_key: RSAKey
) -> None:
    verifier = make_verifier(leeway=0)
    with pytest.raises(TokenExpired):
        verifier.verify(sign(rsa_key, exp=int(NOW) - 1))


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [(-100, "ok"), (0, "ok"), (+30, "ok"), (+31, "expired"), (+3600, "expired")],
)
def test_nbf_with_leeway(
    verifier: KeycloakVerifier, rsa_key: RSAKey, offset: int, outcome: str
) -> None:
    token = sign(rsa_key, nbf=int(NOW) + offset)
    if outcome == "ok":
        assert verifier.verify(token).username == "jane"
    else:
        with pytest.raises(TokenExpired, match="not valid yet"):
            verifier.verify(token)


@pytest.mark.parametrize("nbf", ["soon", True, {"t": 1}])
def test_garbage_nbf_invalid(verifier: KeycloakVerifier, rsa_key: RSAKey, nbf: Any) -> None:
    with pytest.raises(TokenInvalid, match="nbf"):
        verifier.verify(sign(rsa_key, nbf=nbf))


def test_expired_and_forged_is_invalid_not_expired(
    verifier: KeycloakVerifier, other_rsa_key: RSAKey
) -> None:
    # "Expired" is only ever said about authentic tokens.
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(sign(other_rsa_key, exp=1))
    assert not isinstance(info.value, TokenExpired)


# --- key fetching: unknown kid, rate limit, provider down ------------------------------------


def test_unknown_kid_refetches_once_then_refuses(
    verifier: KeycloakVerifier,
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
    rotated_key: RSAKey,
) -> None:
    verifier.verify(sign(rsa_key))
    assert provider.count(JWKS_URL) == 1
    clock.now += 60
    with pytest.raises(TokenInvalid, match="unknown key"):
        verifier.verify(sign(rotated_key))
    assert provider.count(JWKS_URL) == 2


def test_unknown_kid_right_after_a_fetch_does_not_refetch(
    verifier: KeycloakVerifier, provider: FakeProvider, rotated_key: RSAKey
) -> None:
    # The JWKS was just fetched for this very token: fetching it again cannot help.
    with pytest.raises(TokenInvalid, match="unknown key"):
        verifier.verify(sign(rotated_key))
    assert provider.calls == [DISCOVERY_URL, JWKS_URL]


def test_unknown_kid_refetch_is_rate_limited(
    verifier: KeycloakVerifier,
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
    rotated_key: RSAKey,
) -> None:
    verifier.verify(sign(rsa_key))
    clock.now += 10
    for i in range(50):
        with pytest.raises(TokenInvalid, match="unknown key"):
            verifier.verify(sign(rotated_key, kid=f"bogus-{i}"))
    assert provider.count(JWKS_URL) == 2  # the first verification + one refetch
    clock.now += 9.9
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(rotated_key, kid="bogus-late"))
    assert provider.count(JWKS_URL) == 2
    clock.now += 0.2  # 10 s after the refetch
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(rotated_key, kid="bogus-later"))
    assert provider.count(JWKS_URL) == 3


def test_refetch_interval_is_configurable(
    make_verifier: Callable[..., KeycloakVerifier],
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
    rotated_key: RSAKey,
) -> None:
    verifier = make_verifier(refetch_interval=60)
    verifier.verify(sign(rsa_key))
    clock.now += 30
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(rotated_key))
    assert provider.count(JWKS_URL) == 1


def test_key_rotation_is_picked_up(
    verifier: KeycloakVerifier,
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
    rotated_key: RSAKey,
) -> None:
    verifier.verify(sign(rsa_key))
    provider.jwks["keys"].append(rotated_key.as_dict(private=False))
    clock.now += 11
    assert verifier.verify(sign(rotated_key)).username == "jane"
    assert verifier.verify(sign(rsa_key, sub="still-valid")).subject == "still-valid"


def test_provider_down_at_first_use_fails_closed(
    verifier: KeycloakVerifier, provider: FakeProvider, rsa_key: RSAKey
) -> None:
    provider.down = True
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(sign(rsa_key))


def test_provider_down_is_not_retried_on_every_request(
    verifier: KeycloakVerifier, provider: FakeProvider, clock: FakeClock, rsa_key: RSAKey
) -> None:
    provider.down = True
    for _ in range(20):
        with pytest.raises(IdentityProviderUnavailable):
            verifier.verify(sign(rsa_key))
    assert len(provider.calls) == 1
    provider.down = False
    clock.now += 10
    assert verifier.verify(sign(rsa_key)).username == "jane"  # recovers by itself


def test_provider_down_during_unknown_kid_refetch(
    verifier: KeycloakVerifier,
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
    rotated_key: RSAKey,
) -> None:
    verifier.verify(sign(rsa_key))
    provider.down = True
    clock.now += 11
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(sign(rotated_key))
    # Known keys keep working while the provider is away.
    assert verifier.verify(sign(rsa_key, sub="known")).subject == "known"


@pytest.mark.parametrize(
    "discovery",
    [{}, {"jwks_uri": 5}, {"jwks_uri": "ftp://idp.test/certs"}, {"jwks_uri": ""}, [], "html"],
)
def test_bad_discovery_document_means_unavailable(
    verifier: KeycloakVerifier, provider: FakeProvider, rsa_key: RSAKey, discovery: Any
) -> None:
    provider.discovery = discovery
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(sign(rsa_key))


@pytest.mark.parametrize("jwks", [{}, {"keys": "x"}, [], None, "<html>"])
def test_bad_jwks_means_unavailable(
    verifier: KeycloakVerifier, provider: FakeProvider, rsa_key: RSAKey, jwks: Any
) -> None:
    provider.jwks = jwks
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(sign(rsa_key))


def test_jwks_failure_triggers_rediscovery(
    verifier: KeycloakVerifier, provider: FakeProvider, clock: FakeClock, rsa_key: RSAKey
) -> None:
    def failing_jwks(url: str) -> Any:
        if url == JWKS_URL:
            raise TimeoutError("slow")
        return provider(url)

    verifier._fetch_json = failing_jwks  # discovery works, the JWKS fetch times out
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(sign(rsa_key))
    verifier._fetch_json = provider
    clock.now += 10
    verifier.verify(sign(rsa_key))
    # The second attempt discovered the JWKS location again before fetching it.
    assert provider.calls == [DISCOVERY_URL, DISCOVERY_URL, JWKS_URL]


def test_unusable_jwks_entries_are_skipped(
    verifier: KeycloakVerifier,
    provider: FakeProvider,
    rsa_key: RSAKey,
    enc_key: RSAKey,
) -> None:
    oct_key = OctKey.generate_key(256, parameters={"kid": "oct-1"})
    provider.jwks["keys"] = [
        "garbage",
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},  # no kid
        {"kty": "XYZ", "kid": "weird"},
        enc_key.as_dict(private=False),
        oct_key.as_dict(private=True),
        rsa_key.as_dict(private=False),
    ]
    assert verifier.verify(sign(rsa_key)).username == "jane"
    with pytest.raises(TokenInvalid):  # the encryption key never verifies signatures
        verifier.verify(sign(without_alg(enc_key), alg="RS256"))


def test_stale_jwks_refreshed_after_max_age(
    make_verifier: Callable[..., KeycloakVerifier],
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
) -> None:
    verifier = make_verifier(jwks_max_age=600, cache_size=0)
    verifier.verify(sign(rsa_key))
    clock.now += 601
    verifier.verify(sign(rsa_key, exp=int(clock.now) + 60))
    assert provider.count(JWKS_URL) == 2


def test_stale_jwks_kept_when_refresh_fails(
    make_verifier: Callable[..., KeycloakVerifier],
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
) -> None:
    verifier = make_verifier(jwks_max_age=600, cache_size=0)
    verifier.verify(sign(rsa_key))
    provider.down = True
    clock.now += 601
    assert verifier.verify(sign(rsa_key, exp=int(clock.now) + 60)).username == "jane"


def test_withdrawn_key_stops_verifying(
    make_verifier: Callable[..., KeycloakVerifier],
    provider: FakeProvider,
    clock: FakeClock,
    rsa_key: RSAKey,
    rotated_key: RSAKey,
) -> None:
    verifier = make_verifier(cache_ttl=300)
    old_token = sign(rsa_key)
    verifier.verify(old_token)
    # The provider withdraws rsa-1 (e.g. compromised) and publishes rsa-2.
    provider.jwks["keys"] = [rotated_key.as_dict(private=False)]
    clock.now += 11
    verifier.verify(sign(rotated_key))
    with pytest.raises(TokenInvalid):  # not served from the cache any more
        verifier.verify(old_token)


# --- the verified-token cache ----------------------------------------------------------------


def test_cache_serves_repeated_token(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    token = sign(rsa_key)
    first = verifier.verify_token(token)
    assert verifier.verify_token(token) is first


def test_cache_entry_expires_after_ttl(
    make_verifier: Callable[..., KeycloakVerifier], clock: FakeClock, rsa_key: RSAKey
) -> None:
    verifier = make_verifier(cache_ttl=5)
    token = sign(rsa_key)
    first = verifier.verify_token(token)
    clock.now += 4.9
    assert verifier.verify_token(token) is first
    clock.now += 0.1
    again = verifier.verify_token(token)
    assert again is not first and again == first


def test_cache_never_serves_expired_token(
    make_verifier: Callable[..., KeycloakVerifier], clock: FakeClock, rsa_key: RSAKey
) -> None:
    verifier = make_verifier(cache_ttl=3600, leeway=0)
    token = sign(rsa_key, exp=int(NOW) + 20)
    verifier.verify(token)
    clock.now = NOW + 20.5
    with pytest.raises(TokenExpired):
        verifier.verify(token)


def test_cache_entry_ends_at_exp_even_with_leeway(
    make_verifier: Callable[..., KeycloakVerifier], clock: FakeClock, rsa_key: RSAKey
) -> None:
    verifier = make_verifier(cache_ttl=3600)
    token = sign(rsa_key, exp=int(NOW) + 20)
    first = verifier.verify_token(token)
    clock.now = NOW + 25  # past exp, inside the leeway: re-verified, not served from cache
    assert verifier.verify_token(token) is not first
    clock.now = NOW + 51
    with pytest.raises(TokenExpired):
        verifier.verify_token(token)


def test_token_inside_leeway_is_not_cached(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, exp=int(NOW) - 10)
    first = verifier.verify_token(token)
    assert verifier.verify_token(token) is not first


def test_cache_is_bounded(make_verifier: Callable[..., KeycloakVerifier], rsa_key: RSAKey) -> None:
    verifier = make_verifier(cache_size=2)
    tokens = [sign(rsa_key, sub=f"user-{i}") for i in range(3)]
    results = [verifier.verify_token(t) for t in tokens]
    assert verifier.verify_token(tokens[2]) is results[2]
    assert verifier.verify_token(tokens[1]) is results[1]
    assert verifier.verify_token(tokens[0]) is not results[0]  # evicted (least recently used)
    assert len(verifier._cache) == 2


def test_cache_can_be_disabled(
    make_verifier: Callable[..., KeycloakVerifier], rsa_key: RSAKey
) -> None:
    verifier = make_verifier(cache_size=0)
    token = sign(rsa_key)
    assert verifier.verify_token(token) is not verifier.verify_token(token)


def test_clear_cache(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    token = sign(rsa_key)
    first = verifier.verify_token(token)
    verifier.clear_cache()
    assert verifier.verify_token(token) is not first


def test_failures_are_not_cached(
    verifier: KeycloakVerifier, provider: FakeProvider, clock: FakeClock, rsa_key: RSAKey
) -> None:
    provider.down = True
    token = sign(rsa_key)
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(token)
    provider.down = False
    clock.now += 10
    assert verifier.verify(token).username == "jane"


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"algorithms": ["HS256"]},
        {"algorithms": ["RS256", "none"]},
        {"algorithms": ["EdDSA"]},
        {"algorithms": []},
        {"leeway": -1},
        {"refetch_interval": float("nan")},
        {"jwks_max_age": -5},
        {"cache_ttl": -1},
        {"cache_size": -1},
        {"jwks_url": "file:///etc/passwd"},
        {"discovery_url": "keycloak:8080"},
    ],
)
def test_bad_configuration_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        KeycloakVerifier(ISSUER, client_id=CLIENT, fetch_json=lambda url: {}, **options)


@pytest.mark.parametrize("issuer", ["", "idp.test/realms/x", "ftp://idp.test"])
def test_bad_issuer_refused(issuer: str) -> None:
    with pytest.raises(ConfigError):
        KeycloakVerifier(issuer, client_id=CLIENT, fetch_json=lambda url: {})


def test_issuer_trailing_slash_only_affects_discovery(
    provider: FakeProvider, clock: FakeClock, rsa_key: RSAKey
) -> None:
    verifier = KeycloakVerifier(ISSUER + "/", client_id=CLIENT, fetch_json=provider, clock=clock)
    with pytest.raises(TokenInvalid, match="issuer"):  # iss is compared exactly
        verifier.verify(sign(rsa_key))
    assert provider.calls[0] == DISCOVERY_URL


# --- claims_to_identity ----------------------------------------------------------------------


def test_claims_user() -> None:
    identity = claims_to_identity(claims(), CLIENT)
    assert identity.kind is IdentityKind.USER
    assert identity.client_roles == {"uploader"}
    assert identity.is_anonymous is False


def test_claims_client_roles_follow_client_id() -> None:
    assert claims_to_identity(claims(), "account").client_roles == {"x"}
    assert claims_to_identity(claims(), "unknown").client_roles == frozenset()
    assert claims_to_identity(claims(), None).client_roles == frozenset()


@pytest.mark.parametrize(
    "extra",
    [
        {"preferred_username": "service-account-forwarder", "client_id": "forwarder"},
        {"preferred_username": "service-account-forwarder", "clientId": "forwarder"},
        {"preferred_username": "service-account-forwarder"},
        {"preferred_username": "bot", "client_id": "forwarder"},
    ],
)
def test_claims_service_account(extra: dict[str, Any]) -> None:
    identity = claims_to_identity(
        claims(name=DROP, email=DROP, email_verified=DROP, groups=DROP, **extra), CLIENT
    )
    assert identity.kind is IdentityKind.SERVICE
    assert identity.username == extra["preferred_username"]
    expected_name = extra.get("client_id") or extra.get("clientId") or identity.username
    assert identity.name == expected_name


def test_claims_minimal_token() -> None:
    identity = claims_to_identity({"sub": "abc"}, CLIENT)
    assert identity == Identity(kind=IdentityKind.USER, subject="abc", username="abc")
    assert identity.email is None and identity.email_verified is False
    assert identity.realm_roles == identity.client_roles == identity.groups == frozenset()


def test_claims_name_falls_back_to_preferred_username() -> None:
    assert claims_to_identity(claims(name=DROP), CLIENT).name == "jane"
    assert claims_to_identity(claims(name=""), CLIENT).name == "jane"
    assert claims_to_identity(claims(name=None), CLIENT).name == "jane"


@pytest.mark.parametrize(
    ("email", "verified", "expected"),
    [
        ("jane@example.org", True, True),
        ("jane@example.org", False, False),
        ("jane@example.org", "true", False),  # only a JSON true counts
        ("jane@example.org", 1, False),
        ("jane@example.org", DROP, False),
        (DROP, True, False),  # nothing to be verified
        (42, True, False),
    ],
)
def test_claims_email_verified(email: Any, verified: Any, expected: bool) -> None:
    assert (
        claims_to_identity(claims(email=email, email_verified=verified), CLIENT).email_verified
        is expected
    )


@pytest.mark.parametrize(
    ("realm_access", "expected"),
    [
        (None, set()),
        ("admin-role", set()),
        (["admin-role"], set()),
        ({"roles": "admin-role"}, set()),  # a string is not iterated into characters
        ({"roles": None}, set()),
        ({"roles": {"admin-role": True}}, set()),
        ({"roles": [1, None, "", ["x"], "ok", "ok"]}, {"ok"}),
        ({}, set()),
    ],
)
def test_claims_garbage_realm_roles(realm_access: Any, expected: set[str]) -> None:
    assert claims_to_identity(claims(realm_access=realm_access), CLIENT).realm_roles == expected


@pytest.mark.parametrize(
    "resource_access",
    [None, "x", [CLIENT], {CLIENT: "uploader"}, {CLIENT: {"roles": "uploader"}}, {CLIENT: None}],
)
def test_claims_garbage_client_roles(resource_access: Any) -> None:
    identity = claims_to_identity(claims(resource_access=resource_access), CLIENT)
    assert identity.client_roles == frozenset()


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("/radiology", set()),
        ({"/radiology": 1}, set()),
        (["/radiology", "team", 3, None, ""], {"/radiology", "team"}),
        (None, set()),
    ],
)
def test_claims_groups(groups: Any, expected: set[str]) -> None:
    assert claims_to_identity(claims(groups=groups), CLIENT).groups == expected


@pytest.mark.parametrize("sub", [DROP, None, "", 42, ["a"]])
def test_claims_without_subject_refused(sub: Any) -> None:
    with pytest.raises(TokenInvalid, match="subject"):
        claims_to_identity(claims(sub=sub), CLIENT)


def test_verify_refuses_token_without_subject(verifier: KeycloakVerifier, rsa_key: RSAKey) -> None:
    with pytest.raises(TokenInvalid, match="subject"):
        verifier.verify(sign(rsa_key, sub=DROP))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_claim_names = st.sampled_from(
    [
        "sub",
        "preferred_username",
        "name",
        "email",
        "email_verified",
        "realm_access",
        "resource_access",
        "groups",
        "client_id",
        "clientId",
        CLIENT,
        "roles",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_claim_names | st.text(max_size=6), _json, max_size=12))
def test_claims_never_crash(raw: dict[str, Any]) -> None:
    try:
        identity = claims_to_identity(raw, CLIENT)
    except TokenInvalid:
        assert not (isinstance(raw.get("sub"), str) and raw["sub"])
        return
    assert identity.subject == raw["sub"]
    for value in (identity.realm_roles, identity.client_roles, identity.groups):
        assert isinstance(value, frozenset)
        assert all(isinstance(item, str) and item for item in value)
    assert isinstance(identity.name, str) and isinstance(identity.username, str)
    assert isinstance(identity.email_verified, bool)


# --- Identity, groups, ANONYMOUS -------------------------------------------------------------


def test_anonymous_constant() -> None:
    assert ANONYMOUS.kind is IdentityKind.ANONYMOUS
    assert ANONYMOUS.is_anonymous
    assert ANONYMOUS.name == "Anonymous"
    assert ANONYMOUS.subject == "" and ANONYMOUS.realm_roles == frozenset()


def test_identity_is_frozen() -> None:
    with pytest.raises(AttributeError):
        ANONYMOUS.subject = "root"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("groups", "query", "expected"),
    [
        ({"/radiology"}, "radiology", True),
        ({"/radiology"}, "/radiology", True),
        ({"radiology"}, "/radiology", True),
        ({"/dept/radiology"}, "radiology", False),
        ({"/dept/radiology"}, "dept/radiology", True),
        ({"/radiology"}, "radio", False),
        (set(), "radiology", False),
    ],
)
def test_in_group_tolerates_leading_slash(groups: set[str], query: str, expected: bool) -> None:
    identity = Identity(kind=IdentityKind.USER, subject="s", groups=frozenset(groups))
    assert identity.in_group(query) is expected


def test_group_names_and_normalize_group() -> None:
    identity = Identity(kind=IdentityKind.USER, subject="s", groups=frozenset({"/a", "b", "/c/d"}))
    assert identity.group_names == {"a", "b", "c/d"}
    assert identity.groups == {"/a", "b", "/c/d"}  # kept as given
    assert normalize_group("//x") == "x"


def test_identity_kinds_vocabulary() -> None:
    assert {k.value for k in IdentityKind} == {"user", "service", "api_key", "anonymous"}
