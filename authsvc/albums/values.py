"""The album values (callers, views, pages, study results) and the checks on user input.

Pure data and validation: nothing here touches the database or Orthanc. A bad field is
collected in :class:`_Errors` and raised as one 422 naming every bad field.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from authsvc.errors import ValidationFailed
from authsvc.identity import Identity
from authsvc.identity import normalize_group
from authsvc.models import Album
from authsvc.policy import Actor
from authsvc.policy import AlbumRole

NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 4000
PRINCIPAL_MAX_LENGTH = 320
MAX_PAGE_SIZE = 500
MAX_BULK = 1000

_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}")


class PrincipalKind(StrEnum):
    """What an album member is."""

    USER = "user"
    GROUP = "group"
    EMAIL = "email"


class LabelOp(StrEnum):
    """A pending label operation."""

    ADD = "add"
    REMOVE = "remove"


# --- values ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who acts on albums: the policy actor plus the principals album membership matches.

    ``labels`` are the caller's role-config authorized labels (not album labels): they make
    studies visible for the "can already see it" rule. ``email`` is set only when verified.
    ``audit_name`` names the caller in audit rows (default ``user:<subject>``).
    """

    actor: Actor
    groups: frozenset[str] = frozenset()
    email: str | None = None
    labels: frozenset[str] = frozenset()
    audit_name: str = ""

    @property
    def subject(self) -> str:
        """Return the caller's subject ("" for anonymous)."""
        return self.actor.subject

    @property
    def name(self) -> str:
        """Return how audit rows name the caller."""
        return self.audit_name or f"user:{self.actor.subject}"


def caller_for(identity: Identity, actor: Actor, labels: Iterable[str] = ()) -> Caller:
    """Build a :class:`Caller` from an identity, its policy actor and its role labels."""
    email = identity.email.strip().lower() if identity.email and identity.email_verified else None
    kind = "apikey-owner" if identity.kind.value == "api_key" else "user"
    return Caller(
        actor=actor,
        groups=identity.group_names,
        email=email or None,
        labels=frozenset(labels),
        audit_name=f"{kind}:{identity.subject}" if identity.subject else "anonymous",
    )


@dataclasses.dataclass(frozen=True)
class AlbumView:
    """An album as one caller sees it."""

    album: Album
    role: AlbumRole | None
    member_count: int = 0
    study_count: int = 0


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a listing."""

    items: list[Any]
    total: int
    offset: int
    limit: int


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """What happened to one study of a bulk add/remove.

    ``status``: ``added``, ``already-present``, ``removed``, ``not-in-album``, ``not-found``
    (absent, or not visible to the caller: the two are indistinguishable on purpose), or
    ``invalid``. ``label``: ``applied`` or ``pending`` (Orthanc will get it on a retry).
    """

    ref: str
    status: str
    study_id: str | None = None
    study_instance_uid: str | None = None
    label: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# --- validation ---------------------------------------------------------------------------------


class _Errors:
    """Collects per-field problems and raises one 422 listing them all."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append({"field": field, "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(details=self.items)


def _has_control(text: str, allowed: str = "") -> bool:
    return any(unicodedata.category(c) in {"Cc", "Cf"} and c not in allowed for c in text)


def _clean_name(value: object, errors: _Errors, field: str = "name") -> str:
    if not isinstance(value, str):
        errors.add(field, "must be a string")
        return ""
    text = unicodedata.normalize("NFC", value.strip())
    if not text:
        errors.add(field, "must not be empty")
    elif len(text) > NAME_MAX_LENGTH:
        errors.add(field, f"must be at most {NAME_MAX_LENGTH} characters")
    elif _has_control(text):
        errors.add(field, "must not contain control characters")
    return text


def _clean_description(value: object, errors: _Errors) -> str:
    if not isinstance(value, str):
        errors.add("description", "must be a string")
        return ""
    text = unicodedata.normalize("NFC", value.strip())
    if len(text) > DESCRIPTION_MAX_LENGTH:
        errors.add("description", f"must be at most {DESCRIPTION_MAX_LENGTH} characters")
    elif _has_control(text, allowed="\n\t"):
        errors.add("description", "must not contain control characters other than newlines")
    return text


def _clean_role(value: object, errors: _Errors, field: str = "role") -> AlbumRole | None:
    try:
        return AlbumRole(value) if isinstance(value, str) else AlbumRole("")
    except ValueError:
        errors.add(field, f"must be one of {', '.join(r.value for r in AlbumRole)}")
        return None


def _clean_principal(kind: object, value: object, errors: _Errors) -> tuple[PrincipalKind, str]:
    """Validate and normalise a member principal (e-mails lower-cased, groups without '/')."""
    try:
        pkind = PrincipalKind(kind) if isinstance(kind, str) else PrincipalKind("")
    except ValueError:
        errors.add("kind", "must be one of user, group, email")
        return PrincipalKind.USER, ""
    if not isinstance(value, str) or not value.strip():
        errors.add("principal", "must be a non-empty string")
        return pkind, ""
    text = value.strip()
    if len(text) > PRINCIPAL_MAX_LENGTH or _has_control(text):
        errors.add("principal", f"must be at most {PRINCIPAL_MAX_LENGTH} printable characters")
        return pkind, ""
    if pkind is PrincipalKind.EMAIL:
        text = text.lower()
        if _EMAIL_RE.fullmatch(text) is None:
            errors.add("principal", "must be an e-mail address")
    elif pkind is PrincipalKind.GROUP:
        text = normalize_group(text)
        if not text:
            errors.add("principal", "must name a group")
    return pkind, text


def check_page(offset: object, limit: object, *, default_limit: int = 50) -> tuple[int, int]:
    """Validate pagination parameters; raise 422 naming the bad one."""
    errors = _Errors()
    values = []
    for field, value, default, low, high in (
        ("offset", offset, 0, 0, 10**9),
        ("limit", limit, default_limit, 1, MAX_PAGE_SIZE),
    ):
        if value is None or value == "":
            values.append(default)
            continue
        try:
            number = int(str(value), 10)
        except ValueError:
            errors.add(field, "must be an integer")
            values.append(default)
            continue
        if not low <= number <= high:
            errors.add(field, f"must be between {low} and {high}")
        values.append(number)
    errors.raise_if_any()
    return values[0], values[1]


def _uid_of(study: dict[str, Any]) -> str | None:
    tags = study.get("MainDicomTags") or {}
    uid = tags.get("StudyInstanceUID")
    return uid if isinstance(uid, str) else None
