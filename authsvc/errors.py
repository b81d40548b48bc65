"""authsvc.errors: the one error hierarchy of the service.

Every failure that reaches a caller is an :class:`AuthsvcError` subclass. Each class declares
the stable machine-readable ``code`` and the HTTP ``status``; :func:`register_error_handlers`
in ``authsvc.views.errors`` serialises them in one place (JSON for API callers, HTML for pages).

Messages must never contain secrets (tokens, passwords, API keys): they are shown to callers
and written to logs. Third-party exceptions are translated into these at the boundary with
``raise ... from exc`` so callers never catch library exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from typing import Final


class AuthsvcError(Exception):
    """Base of every error authsvc reports to a caller.

    ``code``, ``status`` and ``message`` come from :data:`ERROR_TABLE` for the classes of this
    module; a subclass elsewhere (the upload errors) sets the ones it changes itself.
    """

    code: str
    status: int
    message: str

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or type(self).message
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body for this error."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


# --- 4xx: the caller sent something we cannot accept -------------------------------------


class BadRequest(AuthsvcError):
    """The request is malformed."""


class InvalidJSON(BadRequest):
    """The body is not valid JSON."""


class ValidationFailed(AuthsvcError):
    """The request is well-formed but its fields are invalid; details list each field."""


class Unauthenticated(AuthsvcError):
    """No credentials, or credentials that cannot be verified."""


class Forbidden(AuthsvcError):
    """The caller is known but the policy says no."""


class NotFound(AuthsvcError):
    """The resource does not exist, or the caller may not know that it does."""


class Conflict(AuthsvcError):
    """The change conflicts with the current state, e.g. a stale version."""


class PreconditionFailed(Conflict):
    """An If-Match precondition did not hold."""


class PayloadTooLarge(AuthsvcError):
    """The body exceeds a configured limit."""


class UnsupportedMediaType(AuthsvcError):
    """The body's content type is not one this endpoint accepts."""


# --- token errors (translated from crypto / JWT libraries) -------------------------------


class TokenInvalid(Unauthenticated):
    """A token is malformed, tampered with, of the wrong kind, or signed by an unknown key."""


class TokenExpired(TokenInvalid):
    """A token was valid but its lifetime is over (or has not begun)."""


class TokenRevoked(TokenInvalid):
    """A token was revoked or has used up its allowed uses."""


class CredentialSuspended(TokenRevoked):
    """A credential is authentic but its maker no longer backs it (lost the role, disabled)."""


class ShareTokenExpired(TokenExpired):
    """An authentic share token outside its lifetime; ``token_type`` feeds the decode answer."""

    def __init__(
        self, message: str | None = None, *, token_type: str | None = None, details: Any = None
    ) -> None:
        super().__init__(message, details=details)
        # Not secret: the plugin's decode answer reports the type of an expired link.
        self.token_type = token_type


# --- 5xx: a dependency failed --------------------------------------------------------------


class DependencyUnavailable(AuthsvcError):
    """A dependency (database, Orthanc, OIDC provider) cannot be reached."""


class OrthancUnavailable(DependencyUnavailable):
    """Orthanc cannot be reached or timed out."""


class OrthancError(AuthsvcError):
    """Orthanc answered, but with an error the caller should know about."""

    def __init__(
        self, message: str | None = None, *, details: Any = None, orthanc_status: int | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.orthanc_status = orthanc_status


class IdentityProviderUnavailable(DependencyUnavailable):
    """The OIDC provider (Keycloak) cannot be reached."""


#: The error contract in one table: each class's stable ``code``, HTTP ``status`` and default
#: ``message``. A class not named here keeps its parent's (``ShareTokenExpired``).
ERROR_TABLE: Final[Mapping[type[AuthsvcError], tuple[str, int, str]]] = {
    AuthsvcError: ("internal-error", 500, "An internal error occurred."),
    BadRequest: ("bad-request", 400, "The request is malformed."),
    InvalidJSON: ("invalid-json", 400, "The request body is not valid JSON."),
    ValidationFailed: ("validation-failed", 422, "Some fields are invalid."),
    Unauthenticated: ("unauthenticated", 401, "Authentication is required."),
    Forbidden: ("forbidden", 403, "You are not allowed to do this."),
    NotFound: ("not-found", 404, "Not found."),
    Conflict: ("conflict", 409, "The resource was changed by someone else; reload and try again."),
    PreconditionFailed: (
        "precondition-failed",
        412,
        "The resource version does not match If-Match.",
    ),
    PayloadTooLarge: ("payload-too-large", 413, "The request body is too large."),
    UnsupportedMediaType: ("unsupported-media-type", 415, "Unsupported content type."),
    TokenInvalid: ("token-invalid", 401, "The token is invalid."),
    TokenExpired: ("token-expired", 401, "The token has expired."),
    TokenRevoked: ("token-revoked", 401, "The token has been revoked."),
    CredentialSuspended: (
        "credential-suspended",
        401,
        "The credential no longer works: its maker lost the rights it needs.",
    ),
    DependencyUnavailable: (
        "dependency-unavailable",
        503,
        "A service authsvc depends on is unavailable; try again later.",
    ),
    OrthancUnavailable: ("orthanc-unavailable", 503, "Orthanc is unavailable; try again later."),
    OrthancError: ("orthanc-error", 502, "Orthanc refused the request."),
    IdentityProviderUnavailable: (
        "oidc-unavailable",
        503,
        "The identity provider is unavailable; try again later.",
    ),
}


def _apply(table: Mapping[type[AuthsvcError], tuple[str, int, str]]) -> None:
    """Give each class its row, so ``raise NotFound()`` and ``NotFound.status`` read the table."""
    for error, (code, status, message) in table.items():
        error.code, error.status, error.message = code, status, message


_apply(ERROR_TABLE)


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key. Stops start-up."""
