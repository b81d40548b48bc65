"""authsvc.identity: who is calling — identities, tokens, API keys, roles, users, admin sessions.

The package's public values are re-exported here (``from authsvc.identity import Identity``):

* :mod:`~authsvc.identity.values` — :class:`Identity`, :data:`ANONYMOUS`, :class:`IdentityKind`,
  :func:`claims_to_identity`, :func:`normalize_group` (pure);
* :mod:`~authsvc.identity.verifier` — :class:`KeycloakVerifier` and its :class:`VerifiedToken`,
  the Keycloak access-token rules (JWKS, ``iss``, ``aud``/``azp``, ``exp``/``nbf``);
* :mod:`~authsvc.identity.authn` — credentials -> identity -> profile -> policy actor
  (``Authenticator``, ``ApiKeyCache``, ``ProfileCache``);
* :mod:`~authsvc.identity.roles` and :mod:`~authsvc.identity.roles_store` — the roles
  configuration, the one function that turns roles into a profile, and its stored history;
* :mod:`~authsvc.identity.users` — the Keycloak users authsvc has seen;
* :mod:`~authsvc.identity.admin_sessions` — server-side sessions of the admin pages.
"""

from __future__ import annotations

from authsvc.identity.values import ANONYMOUS
from authsvc.identity.values import Identity
from authsvc.identity.values import IdentityKind
from authsvc.identity.values import claims_to_identity
from authsvc.identity.values import normalize_group
from authsvc.identity.verifier import DEFAULT_ALGORITHMS
from authsvc.identity.verifier import SUPPORTED_ALGORITHMS
from authsvc.identity.verifier import KeycloakVerifier
from authsvc.identity.verifier import VerifiedToken

__all__ = [
    "ANONYMOUS",
    "DEFAULT_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "Identity",
    "IdentityKind",
    "KeycloakVerifier",
    "VerifiedToken",
    "claims_to_identity",
    "normalize_group",
]
