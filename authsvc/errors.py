"""authsvc.errors: the one error hierarchy of the service.

Every failure that reaches a caller is an :class:`AuthsvcError` subclass. Each class declares
the stable machine-readable ``code`` and the HTTP ``status``; :func:`register_error_handlers`
in ``authsvc.views.errors`` serialises them in one place (JSON for API callers, HTML for pages).

Messages must never contain secrets (tokens, passwords, API keys): they are shown to callers
and written to logs. Third-party exceptions are translated into these at the boundary with
``raise ... from exc`` so callers never catch library exceptions.
"""

from __future__ import annotations

from typing import Any


class AuthsvcError(Exception):
    """Base of every error authsvc reports to a caller."""

    code: str = "internal-error"
    status: int = 500
    message: str = "An internal error occurred."

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
    """The request is malformed (400)."""

    code = "bad-request"
    status = 400
    message = "The request is malformed."


class InvalidJSON(BadRequest):
    """The body is not valid JSON (400)."""

    code = "invalid-json"
    message = "The request body is not valid JSON."


class ValidationFailed(AuthsvcError):
    """The request is well-formed but its fields are invalid (422); details list each field."""

    code = "validation-failed"
    status = 422
    message = "Some fields are invalid."


class Unauthenticated(AuthsvcError):
    """No credentials, or credentials that cannot be verified (401)."""

    code = "unauthenticated"
    status = 401
    message = "Authentication is required."


class Forbidden(AuthsvcError):
    """The caller is known but the policy says no (403)."""

    code = "forbidden"
    status = 403
    message = "You are not allowed to do this."


class NotFound(AuthsvcError):
    """The resource does not exist, or the caller may not know that it does (404)."""

    code = "not-found"
    status = 404
    message = "Not found."


class Conflict(AuthsvcError):
    """The change conflicts with the current state, e.g. a stale version (409)."""

    code = "conflict"
    status = 409
    message = "The resource was changed by someone else; reload and try again."


class PreconditionFailed(Conflict):
    """An If-Match precondition did not hold (412)."""

    code = "precondition-failed"
    status = 412
    message = "The resource version does not match If-Match."


class PayloadTooLarge(AuthsvcError):
    """The body exceeds a configured limit (413)."""

    code = "payload-too-large"
    status = 413
    message = "The request body is too large."


class UnsupportedMediaType(AuthsvcError):
    """The body's content type is not one this endpoint accepts (415)."""

    code = "unsupported-media-type"
    status = 415
    message = "Unsupported content type."


# --- token errors (translated from crypto / JWT libraries) -------------------------------


class TokenInvalid(Unauthenticated):
    """A token is malformed, tampered with, of the wrong kind, or signed by an unknown key."""

    code = "token-invalid"
    message = "The token is invalid."


class TokenExpired(TokenInvalid):
    """A token was valid but its lifetime is over (or has not begun)."""

    code = "token-expired"
    message = "The token has expired."


class TokenRevoked(TokenInvalid):
    """A token was revoked or has used up its allowed uses."""

    code = "token-revoked"
    message = "The token has been revoked."


class CredentialSuspended(TokenRevoked):
    """A credential is authentic but its maker no longer backs it (lost the role, disabled)."""

    code = "credential-suspended"
    message = "The credential no longer works: its maker lost the rights it needs."


# --- 5xx: a dependency failed --------------------------------------------------------------


class DependencyUnavailable(AuthsvcError):
    """A dependency (database, Orthanc, OIDC provider) cannot be reached (503)."""

    code = "dependency-unavailable"
    status = 503
    message = "A service authsvc depends on is unavailable; try again later."


class OrthancUnavailable(DependencyUnavailable):
    """Orthanc cannot be reached or timed out (503)."""

    code = "orthanc-unavailable"
    message = "Orthanc is unavailable; try again later."


class OrthancError(AuthsvcError):
    """Orthanc answered, but with an error the caller should know about (502)."""

    code = "orthanc-error"
    status = 502
    message = "Orthanc refused the request."

    def __init__(
        self, message: str | None = None, *, details: Any = None, orthanc_status: int | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.orthanc_status = orthanc_status


class IdentityProviderUnavailable(DependencyUnavailable):
    """The OIDC provider (Keycloak) cannot be reached (503)."""

    code = "oidc-unavailable"
    message = "The identity provider is unavailable; try again later."


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key. Stops start-up."""


class ShareTokenExpired(TokenExpired):
    """An authentic share token outside its lifetime; ``token_type`` feeds the decode answer."""

    def __init__(
        self, message: str | None = None, *, token_type: str | None = None, details: Any = None
    ) -> None:
        super().__init__(message, details=details)
        # Not secret: the plugin's decode answer reports the type of an expired link.
        self.token_type = token_type
