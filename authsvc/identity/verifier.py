"""authsvc.identity.verifier: how a Keycloak access token becomes an :class:`Identity`.

:class:`KeycloakVerifier` checks a Keycloak (or any OIDC provider's) access token against the
provider's JWKS with explicit rules: a fixed list of asymmetric algorithms, exact ``iss``, an
accepted ``aud`` (or ``azp``), a required numeric ``exp``, ``nbf`` when present, and a small
leeway for clock skew. JOSE work is done with ``joserfc``; the verified claims become an
identity through :func:`~authsvc.identity.values.claims_to_identity`.

No Flask, no database, no network: the caller injects ``fetch_json(url)`` (the app passes a
``requests``-based one with timeouts) and a clock. Construction does no I/O, so the service
starts even when Keycloak is down; keys are fetched on first use and the service fails closed
(:class:`~authsvc.errors.IdentityProviderUnavailable`) while it cannot get them.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType
from typing import Any
from typing import TypeGuard

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jwk import JWKRegistry
from joserfc.jwk import OKPKey
from joserfc.jwk import RSAKey

from authsvc.errors import ConfigError
from authsvc.errors import IdentityProviderUnavailable
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.identity.values import Identity
from authsvc.identity.values import claims_to_identity

__all__ = [
    "DEFAULT_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "KeycloakVerifier",
    "VerifiedToken",
]


# --- token verification ----------------------------------------------------------------------

#: Algorithms accepted by default: Keycloak's asymmetric signature algorithms.
# Keycloak's audience for its own account console; present in the tokens of every client.
ACCOUNT_AUDIENCE = "account"
# In ``trusted_clients``: accept ``account``-only tokens of any client (the old, unsafe rule).
ANY_CLIENT = "*"
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")

# Every algorithm a deployment may enable. Deliberately no "none" and no HMAC: an HS256 token
# "signed" with the provider's *public* key (found in the JWKS) would otherwise verify.
# "EdDSA" is left out because joserfc deprecates it (RFC 9864) in favour of "Ed25519".
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519"}
)

_KEY_CLASSES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RS": RSAKey,
    "PS": RSAKey,
    "ES": ECKey,
    "Ed": OKPKey,
}


def _key_class_for(alg: str) -> type[RSAKey] | type[ECKey] | type[OKPKey]:
    """Return the joserfc key class an algorithm needs ("RS256" -> RSAKey)."""
    return _KEY_CLASSES[alg[:2]]


@dataclass(frozen=True)
class VerifiedToken:
    """The result of a successful verification: who, and until when the token is valid."""

    identity: Identity
    expires_at: float


@dataclass(frozen=True)
class _JwksSnapshot:
    """An immutable view of the provider's signing keys, replaced as a whole on refresh."""

    keys: Mapping[str, RSAKey | ECKey | OKPKey]
    fetched_at: float


@dataclass
class _CacheEntry:
    verified: VerifiedToken
    valid_until: float


@dataclass
class _FetchState:
    jwks_uri: str | None
    snapshot: _JwksSnapshot | None = None
    last_attempt: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _is_number(value: Any) -> TypeGuard[int | float]:
    """Return True for a finite JSON number (bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class KeycloakVerifier:
    """Verify Keycloak access tokens against the realm's JWKS and map them to identities.

    ``issuer`` is the exact ``iss`` value tokens carry (e.g.
    ``https://idp.example/realms/orthanc``). Keys are found through
    ``<discovery_url or issuer/.well-known/openid-configuration>``'s ``jwks_uri``, or directly at
    ``jwks_url`` when given (useful when the public issuer URL is not reachable from the
    service, e.g. ``iss`` is public but Keycloak is reached as ``http://keycloak:8080``).

    Audience: a token is accepted if its ``aud`` contains one of ``audiences`` (default:
    ``client_id`` and ``account``), or if ``accept_azp`` and its ``azp`` equals ``client_id``.
    ``account`` is special: Keycloak puts it into the tokens of *every* client of the realm
    (whenever the user holds the default ``account`` client roles), so on its own it says
    nothing about who the token was minted for. It is kept for compatibility with
    orthanc-auth-service, but a token whose only accepted audience is ``account`` passes only
    if its ``azp`` (the client it was issued to) is ``client_id`` or one of
    ``trusted_clients``; ``"*"`` there restores the old "any client" rule (refused in
    production by the settings). If ``token_types`` is set, a token carrying a Keycloak ``typ``
    claim must have one of those values (``Bearer`` by default), so ID tokens and refresh
    tokens are not accepted as access tokens.

    Key fetching: nothing happens at construction. The JWKS is fetched on first use and cached;
    a token with an unknown ``kid`` triggers one refetch, but fetches happen at most once per
    ``refetch_interval`` seconds (so a flood of made-up kids cannot hammer Keycloak, and a dead
    Keycloak is not retried on every request). Keys older than ``jwks_max_age`` are refreshed on
    the next use; if that refresh fails the current keys stay in use.

    Verified tokens are cached in-process (``cache_size`` entries, 0 disables) keyed by a
    SHA-256 of the token, each entry valid until the token's ``exp`` or ``cache_ttl`` seconds,
    whichever comes first, so an expired token is never served from the cache.
    """

    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        fetch_json: Callable[[str], Any],
        audiences: Iterable[str] | None = None,
        accept_azp: bool = True,
        trusted_clients: Iterable[str] = (),
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        discovery_url: str | None = None,
        jwks_url: str | None = None,
        refetch_interval: float = 10.0,
        jwks_max_age: float = 3600.0,
        token_types: Iterable[str] | None = ("Bearer",),
        cache_size: int = 1024,
        cache_ttl: float = 30.0,
    ) -> None:
        """Check and store the configuration; does no I/O.

        :raise ConfigError: an option is invalid (unknown or symmetric algorithm, bad URL...).
        """
        if not _is_http_url(issuer):
            raise ConfigError("OIDC issuer must be an http(s) URL.")
        for name, url in (("discovery URL", discovery_url), ("JWKS URL", jwks_url)):
            if url is not None and not _is_http_url(url):
                raise ConfigError(f"OIDC {name} must be an http(s) URL.")
        self._algorithms = frozenset(algorithms)
        if not self._algorithms:
            raise ConfigError("At least one JWT algorithm must be allowed.")
        unsupported = self._algorithms - SUPPORTED_ALGORITHMS
        if unsupported:
            raise ConfigError(
                f"Unsupported JWT algorithm(s) {sorted(unsupported)}; "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)}."
            )
        numbers = {
            "leeway": leeway,
            "refetch interval": refetch_interval,
            "JWKS max age": jwks_max_age,
            "cache TTL": cache_ttl,
        }
        for label, number in numbers.items():
            if not _is_number(number) or number < 0:
                raise ConfigError(f"OIDC {label} must be a non-negative number.")
        if cache_size < 0:
            raise ConfigError("OIDC token cache size must be >= 0.")

        self.issuer = issuer
        self.client_id = client_id
        self._fetch_json = fetch_json
        self._clock = clock
        accepted = frozenset(audiences if audiences is not None else (client_id, "account"))
        # ``account`` names no client (see the class docstring): it never suffices alone.
        self._audiences = accepted - {"", ACCOUNT_AUDIENCE}
        self._account_compat = ACCOUNT_AUDIENCE in accepted
        trusted = frozenset(trusted_clients) - {""}
        self._any_client = ANY_CLIENT in trusted
        self._trusted_clients = trusted - {ANY_CLIENT}
        self._accept_azp = accept_azp and bool(client_id)
        self._leeway = float(leeway)
        self._discovery_url = (
            discovery_url or issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        self._configured_jwks_url = jwks_url
        self._refetch_interval = float(refetch_interval)
        self._jwks_max_age = float(jwks_max_age)
        self._token_types = (
            None if token_types is None else frozenset(t.lower() for t in token_types)
        )
        self._cache_size = cache_size
        self._cache_ttl = float(cache_ttl)
        self._cache: OrderedDict[bytes, _CacheEntry] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._state = _FetchState(jwks_uri=jwks_url)
        # One registry, built once: only our algorithms, tolerant of unknown header names
        # (providers add harmless ones) but still refusing unknown "crit" extensions.
        self._registry = jws.JWSRegistry(
            algorithms=sorted(self._algorithms), strict_check_header=False
        )

    # -- public API --------------------------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """Verify an access token and return its identity.

        :raise TokenInvalid: malformed, bad signature, algorithm not allowed, wrong iss/aud,
            missing exp, unknown key, or not an access token.
        :raise TokenExpired: ``exp`` passed or ``nbf`` not reached (beyond the leeway).
        :raise IdentityProviderUnavailable: the keys are needed but cannot be fetched.
        """
        return self.verify_token(token).identity

    def verify_token(self, token: str) -> VerifiedToken:
        """Verify an access token; return its identity and expiry (see :meth:`verify`)."""
        if not isinstance(token, str) or not token:
            raise TokenInvalid()
        now = self._clock()
        cache_key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache_get(cache_key, now)
        if cached is not None:
            return cached

        payload = self._check_signature(token)
        claims = self._parse_claims(payload)
        expires_at = self._check_claims(claims, now)
        verified = VerifiedToken(claims_to_identity(claims, self.client_id), expires_at)
        self._cache_put(cache_key, verified, now)
        return verified

    def clear_cache(self) -> None:
        """Forget every cached verification result."""
        with self._cache_lock:
            self._cache.clear()

    # -- signature -----------------------------------------------------------------------------

    def _check_signature(self, token: str) -> bytes:
        """Parse the compact JWS, pick our key by ``kid``, verify it; return the payload."""
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except (JoseError, ValueError, TypeError, AttributeError, UnicodeError) as exc:
            raise TokenInvalid("The token is not a well-formed JWT.") from exc
        if not isinstance(header, Mapping):
            raise TokenInvalid("The token header is not a JSON object.")
        alg = header.get("alg")
        # Checked before any key lookup or fetch: "none", HS256 (incl. the classic
        # "HMAC with the provider's public key" forgery) and anything unlisted stop here.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenInvalid("The token's signature algorithm is not allowed.")
        if "crit" in header or "b64" in header:
            raise TokenInvalid("The token uses JWS extensions this service does not support.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            # Keycloak always names the key; guessing among several keys invites confusion.
            raise TokenInvalid("The token does not name its signing key (kid).")

        key = self._key_for(kid)
        if not isinstance(key, _key_class_for(alg)) or key.alg not in (None, alg):
            raise TokenInvalid("The token's algorithm does not match its signing key.")
        try:
            valid = jws.validate_compact(obj, key, registry=self._registry)
        except (JoseError, ValueError, TypeError) as exc:
            raise TokenInvalid("The token's signature is invalid.") from exc
        if not valid or obj.payload is None:
            raise TokenInvalid("The token's signature is invalid.")
        return obj.payload

    # -- claims --------------------------------------------------------------------------------

    @staticmethod
    def _parse_claims(payload: bytes) -> dict[str, Any]:
        """Decode the JSON claims set; reject non-objects and NaN/Infinity constants."""
        try:
            claims = json.loads(payload, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenInvalid("The token's claims are not valid JSON.") from exc
        if not isinstance(claims, dict):
            raise TokenInvalid("The token's claims are not a JSON object.")
        return claims

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> float:
        """Apply the iss/aud/typ/exp/nbf rules; return ``exp``."""
        if claims.get("iss") != self.issuer:
            raise TokenInvalid("The token was issued by another issuer.")
        if not self._audience_ok(claims):
            raise TokenInvalid("The token is not meant for this service (audience).")
        if self._token_types is not None and "typ" in claims:
            typ = claims["typ"]
            if not isinstance(typ, str) or typ.lower() not in self._token_types:
                raise TokenInvalid("The token is not an access token.")

        exp = claims.get("exp")
        if not _is_number(exp):
            raise TokenInvalid("The token has no valid expiry (exp).")
        nbf = claims.get("nbf")
        if nbf is not None and not _is_number(nbf):
            raise TokenInvalid("The token has an invalid not-before (nbf).")
        if now > exp + self._leeway:
            raise TokenExpired()
        if nbf is not None and now < nbf - self._leeway:
            raise TokenExpired("The token is not valid yet.")
        return float(exp)

    def _audience_ok(self, claims: Mapping[str, Any]) -> bool:
        """Return True if the token was meant for us (see the class docstring)."""
        aud = claims.get("aud")
        if isinstance(aud, str):
            named = {aud}
        elif isinstance(aud, list):
            named = {a for a in aud if isinstance(a, str)}
        else:
            named = set()
        if named & self._audiences:
            return True
        azp = claims.get("azp")
        if not isinstance(azp, str) or not azp:
            return False
        if self._accept_azp and azp == self.client_id:
            return True
        if self._account_compat and ACCOUNT_AUDIENCE in named:
            return self._any_client or azp in self._trusted_clients or azp == self.client_id
        return False

    # -- keys ----------------------------------------------------------------------------------

    def _key_for(self, kid: str) -> RSAKey | ECKey | OKPKey:
        """Return our key named ``kid``, fetching the JWKS if needed (rate-limited)."""
        state = self._state
        snapshot = state.snapshot
        now = self._clock()
        if snapshot is None:
            # No keys at all yet: fetching is required; fail closed if we cannot.
            snapshot = self._refresh(now, required=True)
        elif now - snapshot.fetched_at > self._jwks_max_age and self._may_fetch(now):
            snapshot = self._refresh(now, required=False)
        key = snapshot.keys.get(kid)
        if key is not None:
            return key
        # Unknown kid: Keycloak may have rotated its keys. Refetch once, but never more often
        # than refetch_interval, whatever the number of distinct bogus kids we are sent.
        if self._may_fetch(now):
            snapshot = self._refresh(now, required=True)
            key = snapshot.keys.get(kid)
            if key is not None:
                return key
        raise TokenInvalid("The token is signed by an unknown key.")

    def _may_fetch(self, now: float) -> bool:
        """Return True if the rate limit allows a fetch now."""
        last = self._state.last_attempt
        return last is None or now - last >= self._refetch_interval

    def _refresh(self, now: float, *, required: bool) -> _JwksSnapshot:
        """Fetch the JWKS (discovering its URL if needed) and install it.

        With ``required``, failure raises IdentityProviderUnavailable; otherwise the current
        snapshot is kept and returned.
        """
        state = self._state
        with state.lock:
            if not self._may_fetch(now):
                # Another thread fetched (or failed to) while we waited for the lock, or a
                # recent failure is still backing us off: reuse what we have, no I/O.
                if state.snapshot is not None:
                    return state.snapshot
                raise IdentityProviderUnavailable()
            state.last_attempt = now
            try:
                keys = self._download_keys()
            except IdentityProviderUnavailable:
                if required or state.snapshot is None:
                    raise
                return state.snapshot
            previous = state.snapshot
            state.snapshot = _JwksSnapshot(keys=MappingProxyType(keys), fetched_at=now)
            if previous is not None and not set(previous.keys) <= set(keys):
                # A key was withdrawn (possibly compromised): drop results it vouched for.
                self.clear_cache()
            return state.snapshot

    def _download_keys(self) -> dict[str, RSAKey | ECKey | OKPKey]:
        """Fetch discovery (if needed) and the JWKS; return usable signing keys by kid."""
        state = self._state
        if state.jwks_uri is None:
            discovery = self._fetch(self._discovery_url, "discovery document")
            jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, Mapping) else None
            if not isinstance(jwks_uri, str) or not _is_http_url(jwks_uri):
                raise IdentityProviderUnavailable(
                    "The identity provider's discovery document has no valid jwks_uri."
                )
            state.jwks_uri = jwks_uri
        try:
            jwks = self._fetch(state.jwks_uri, "JWKS")
        except IdentityProviderUnavailable:
            # Rediscover next time, in case the provider moved its JWKS.
            state.jwks_uri = self._configured_jwks_url
            raise
        raw_keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(raw_keys, list):
            raise IdentityProviderUnavailable("The identity provider's JWKS is malformed.")
        return _signing_keys(raw_keys)

    def _fetch(self, url: str, what: str) -> Any:
        """Call the injected fetcher; any failure means the provider is unavailable."""
        try:
            return self._fetch_json(url)
        except Exception as exc:  # whatever the fetcher raises, the provider is unreachable
            raise IdentityProviderUnavailable(
                f"Cannot fetch the identity provider's {what}."
            ) from exc

    # -- verified-token cache -----------------------------------------------------------------

    def _cache_get(self, cache_key: bytes, now: float) -> VerifiedToken | None:
        """Return a cached result that is still valid, dropping it if it is not."""
        if not self._cache_size:
            return None
        with self._cache_lock:
            entry = self._cache.get(cache_key)
            if entry is None:
                return None
            if now >= entry.valid_until:
                del self._cache[cache_key]
                return None
            self._cache.move_to_end(cache_key)
            return entry.verified

    def _cache_put(self, cache_key: bytes, verified: VerifiedToken, now: float) -> None:
        """Remember a verification until min(token exp, now + cache_ttl)."""
        valid_until = min(verified.expires_at, now + self._cache_ttl)
        if not self._cache_size or valid_until <= now:
            return
        with self._cache_lock:
            self._cache[cache_key] = _CacheEntry(verified, valid_until)
            self._cache.move_to_end(cache_key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _signing_keys(raw_keys: list[Any]) -> dict[str, RSAKey | ECKey | OKPKey]:
    """Import the JWKS entries usable to verify signatures; skip everything else."""
    keys: dict[str, RSAKey | ECKey | OKPKey] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict):
            continue
        kid = raw.get("kid")
        # Keycloak publishes encryption keys (use=enc, RSA-OAEP) next to signing keys; a
        # symmetric ("oct") key never belongs in a public JWKS and is refused outright.
        if not isinstance(kid, str) or not kid or raw.get("use", "sig") != "sig":
            continue
        if raw.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            key = JWKRegistry.import_key(raw)
        except (JoseError, ValueError, TypeError, KeyError):
            continue  # one broken entry must not take the valid ones down with it
        if isinstance(key, RSAKey | ECKey | OKPKey):
            keys[kid] = key
    return keys


def _reject_constant(name: str) -> Any:
    """json.loads hook: NaN and Infinity are not JSON and would defeat exp checks."""
    raise ValueError(f"non-standard JSON constant {name}")


def _is_http_url(url: Any) -> bool:
    """Return True for an absolute http(s) URL string."""
    return isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) > 8
