"""authsvc.identity.values: who is calling, as one frozen value every other module receives.

* :class:`Identity` (user, service account, API-key owner or anonymous) and :data:`ANONYMOUS`;
* :func:`claims_to_identity`, the one place where verified JWT claims become an ``Identity``;
* :func:`normalize_group`, so ``/radiology`` and ``radiology`` name the same group.

Pure: no Flask, no database, no network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from authsvc.errors import TokenInvalid

__all__ = [
    "ANONYMOUS",
    "Identity",
    "IdentityKind",
    "claims_to_identity",
    "normalize_group",
]


class IdentityKind(StrEnum):
    """What kind of principal an :class:`Identity` is."""

    ANONYMOUS = "anonymous"
    API_KEY = "api_key"
    SERVICE = "service"
    USER = "user"


def normalize_group(path: str) -> str:
    """Return a group path without its leading slash(es): ``/radiology`` -> ``radiology``."""
    # Keycloak's group mapper sends "/parent/child" with "full group path" on and "child"
    # without it; configs are written either way. Comparing without the leading slash lets
    # "/radiology" and "radiology" name the same group, while "/a/b" stays distinct from "b".
    return path.lstrip("/")


@dataclass(frozen=True)
class Identity:
    """Who is calling. Built by :func:`claims_to_identity` (JWT) or by the caller (API keys)."""

    kind: IdentityKind
    subject: str
    username: str = ""
    name: str = ""
    email: str | None = None
    email_verified: bool = False
    realm_roles: frozenset[str] = frozenset()
    client_roles: frozenset[str] = frozenset()
    # Kept exactly as the token sent them (e.g. "/radiology"); compare with in_group().
    groups: frozenset[str] = frozenset()

    @property
    def is_anonymous(self) -> bool:
        """Return True for the anonymous identity (no credentials, or unusable ones)."""
        return self.kind is IdentityKind.ANONYMOUS

    @property
    def group_names(self) -> frozenset[str]:
        """Return the groups with leading slashes removed (see :func:`normalize_group`)."""
        return frozenset(normalize_group(g) for g in self.groups)

    def in_group(self, group: str) -> bool:
        """Return True if the identity belongs to ``group``, with or without leading slash."""
        wanted = normalize_group(group)
        return any(normalize_group(g) == wanted for g in self.groups)


#: The identity of a caller without (usable) credentials.
ANONYMOUS = Identity(kind=IdentityKind.ANONYMOUS, subject="", username="", name="Anonymous")


# --- claims -> Identity ----------------------------------------------------------------------

_SERVICE_ACCOUNT_PREFIX = "service-account-"


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    """Return the claim if it is a string, else "" (garbage types are treated as absent)."""
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def _string_set(value: Any) -> frozenset[str]:
    """Return the non-empty strings of a JSON list; anything else yields an empty set."""
    # A bare string is NOT iterated: "groups": "/radiology" must not become {"/", "r", ...}.
    if not isinstance(value, list | tuple):
        return frozenset()
    return frozenset(item for item in value if isinstance(item, str) and item)


def _roles_of(container: Any) -> frozenset[str]:
    """Return ``container["roles"]`` as a set of strings, tolerating any garbage shape."""
    if not isinstance(container, Mapping):
        return frozenset()
    return _string_set(container.get("roles"))


def claims_to_identity(claims: Mapping[str, Any], client_id: str | None) -> Identity:
    """Turn verified token claims into an :class:`Identity`; the only place this happens.

    ``client_id`` selects ``resource_access.<client_id>.roles`` as the client roles.
    Claims of the wrong type are treated as absent, never trusted and never a crash.

    :raise TokenInvalid: the token has no usable ``sub`` (memberships are keyed on it).
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenInvalid("The token has no subject.")

    preferred_username = _str_claim(claims, "preferred_username")
    # Keycloak service-account tokens carry "client_id" (older releases: "clientId") and a
    # preferred_username of "service-account-<client>"; user tokens carry neither.
    token_client = _str_claim(claims, "client_id") or _str_claim(claims, "clientId")
    is_service = bool(token_client) or preferred_username.startswith(_SERVICE_ACCOUNT_PREFIX)

    name = _str_claim(claims, "name")
    if not name:
        name = (token_client or preferred_username) if is_service else preferred_username

    email = _str_claim(claims, "email") or None
    resource_access = claims.get("resource_access")
    client_roles: frozenset[str] = frozenset()
    if client_id and isinstance(resource_access, Mapping):
        client_roles = _roles_of(resource_access.get(client_id))

    return Identity(
        kind=IdentityKind.SERVICE if is_service else IdentityKind.USER,
        subject=subject,
        username=preferred_username or subject,
        name=name,
        email=email,
        # Only a JSON true counts: "true", 1 or "yes" from an odd mapper do not verify anything.
        email_verified=email is not None and claims.get("email_verified") is True,
        realm_roles=_roles_of(claims.get("realm_access")),
        client_roles=client_roles,
        groups=_string_set(claims.get("groups")),
    )
