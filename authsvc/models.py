"""authsvc.models: one SQLAlchemy model per ``schema.sql`` table.

``schema.sql`` is the PostgreSQL DDL and the source of truth in production;
``tests/test_schema.py`` builds a real PostgreSQL database from it and compares it with the
metadata below (tables, columns, types, nullability, keys, indexes), so the two cannot drift.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import BigInteger
from sqlalchemy import DateTime
from sqlalchemy import Dialect
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import Text
from sqlalchemy import TypeDecorator
from sqlalchemy import UniqueConstraint
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from authsvc.extensions import db


def utcnow() -> dt.datetime:
    """Return the current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL keeps the zone (TIMESTAMPTZ); SQLite keeps naive text, so values read back from
    it are tagged UTC here. Naive datetimes are refused on write: they are always a bug.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")
# BIGINT identity on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class SchemaVersion(db.Model):  # type: ignore[name-defined,misc]
    """The applied schema version (one row per applied migration)."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AuditEvent(db.Model):  # type: ignore[name-defined,misc]
    """An append-only audit row, written in the same transaction as the change it records."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_occurred_at", "occurred_at"),
        Index("ix_audit_event_actor", "actor"),
        Index("ix_audit_event_action", "action"),
        Index("ix_audit_event_subject", "subject"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    request_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False, default=dict)


class AdminSession(db.Model):  # type: ignore[name-defined,misc]
    """A signed-in browser session of the admin pages (see :mod:`authsvc.identity.admin_sessions`).

    ``id`` is the SHA-256 of the random session id the cookie carries, so the table alone opens
    no session. ``identity`` is the :class:`~authsvc.identity.Identity` the verified access
    token gave at sign-in; ``id_token`` is kept for the provider's logout (``id_token_hint``).
    """

    __tablename__ = "admin_session"
    __table_args__ = (Index("ix_admin_session_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, nullable=False)
    identity: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    id_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class KnownUser(db.Model):  # type: ignore[name-defined,misc]
    """Someone authsvc has seen: username -> subject, a name to show, and their standing.

    ``identity`` is the last :class:`~authsvc.identity.Identity` seen (admin sign-in, plugin
    profile, or making a credential): the roles and groups the credentials this person made
    are checked against (see :mod:`authsvc.credentials.lifecycle`). ``disabled_at`` set: an admin
    disabled
    the person in authsvc; their sign-in and every credential they made stop.
    """

    __tablename__ = "known_user"
    __table_args__ = (Index("ix_known_user_username", "username"),)

    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    username: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    email: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    identity: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_by: Mapped[str | None] = mapped_column(Text, nullable=True)


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    """An API key: only the SHA-256 of its secret is stored (see authsvc.credentials.api_keys).

    ``kind`` is ``user`` (acts as ``owner_subject``, the Keycloak ``sub`` of its creator) or
    ``service`` (a service account an admin created; ``owner_subject`` is ``api-key:<id>``).
    ``roles`` are the role names the key holds: for a user key, the roles its owner had when
    creating it (or a chosen subset); for a service key, the roles the admin chose.
    """

    __tablename__ = "api_key"
    __table_args__ = (Index("ix_api_key_owner_subject", "owner_subject"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    secret_hash: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    owner_subject: Mapped[str] = mapped_column(Text, nullable=False)
    owner_username: Mapped[str] = mapped_column(Text, nullable=False)
    roles: Mapped[list[str]] = mapped_column(JSONDoc, nullable=False, default=list)
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Album(db.Model):  # type: ignore[name-defined,misc]
    """A named collection of studies, materialised as one Orthanc label that authsvc owns.

    ``id`` is a random URL-safe public id (never sequential: ids appear in URLs and must not
    be guessable or countable). ``label`` is generated by :mod:`authsvc.album_labels`, unique
    and immutable; it is never derived from the user-chosen ``name``. ``version`` grows on every
    change of the album row and backs ETag/If-Match (optimistic concurrency).
    """

    __tablename__ = "album"
    __table_args__ = (UniqueConstraint("label", name="uq_album_label"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    label: Mapped[str] = mapped_column(Text, nullable=False)
    server_id: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)


def _album_label_of(context: Any) -> str:
    """Default of ``album_member.album_label``: the label of the row's album."""
    album_id = context.get_current_parameters()["album_id"]
    label: str = context.connection.execute(
        select(Album.label).where(Album.id == album_id)
    ).scalar_one()
    return label


class AlbumMember(db.Model):  # type: ignore[name-defined,misc]
    """One principal's role in one album.

    ``principal_kind`` is ``user`` (``principal`` = Keycloak ``sub``), ``group`` (a Keycloak
    group path without leading slash) or ``email`` (a lower-cased address: an invitation that
    becomes a ``user`` row when that user first appears with a verified e-mail).
    ``album_label`` repeats the album's (immutable) label so that profile composition is one
    index-only range scan per principal on ``ix_album_member_principal``, with no join: a user
    in 1,000 albums costs about a millisecond. It is filled from the album when not given.
    """

    __tablename__ = "album_member"
    __table_args__ = (
        UniqueConstraint(
            "album_id", "principal_kind", "principal", name="uq_album_member_principal"
        ),
        Index(
            "ix_album_member_principal",
            "principal_kind",
            "principal",
            "album_id",
            "album_label",
            "role",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    album_id: Mapped[str] = mapped_column(
        Text, ForeignKey("album.id", ondelete="CASCADE"), nullable=False
    )
    album_label: Mapped[str] = mapped_column(Text, nullable=False, default=_album_label_of)
    principal_kind: Mapped[str] = mapped_column(Text, nullable=False)
    principal: Mapped[str] = mapped_column(Text, nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    added_by: Mapped[str] = mapped_column(Text, nullable=False)
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AlbumStudy(db.Model):  # type: ignore[name-defined,misc]
    """A study authsvc put into an album: what the album's label *should* be on in Orthanc.

    Orthanc's labels are what the plugin enforces; these rows are authsvc's record of intent,
    which ``authsvc reconcile`` compares with Orthanc to find and repair drift.
    """

    __tablename__ = "album_study"
    __table_args__ = (
        UniqueConstraint("album_id", "study_id", name="uq_album_study"),
        Index("ix_album_study_study_id", "study_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    album_id: Mapped[str] = mapped_column(
        Text, ForeignKey("album.id", ondelete="CASCADE"), nullable=False
    )
    study_id: Mapped[str] = mapped_column(Text, nullable=False)
    study_instance_uid: Mapped[str | None] = mapped_column(Text, nullable=True)
    added_by: Mapped[str] = mapped_column(Text, nullable=False)
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class PendingLabel(db.Model):  # type: ignore[name-defined,misc]
    """A label change Orthanc has not confirmed yet, kept until a retry succeeds.

    Written in the same transaction as the change that needs it (album study add/remove,
    album deletion, upload labelling), so a crash or an Orthanc outage loses nothing. One row
    per (server, study, label): a newer operation replaces an older one. ``label`` is stored
    (not only ``album_id``) because removals must still run after the album is deleted.
    """

    __tablename__ = "pending_label"
    __table_args__ = (
        UniqueConstraint("server_id", "study_id", "label", name="uq_pending_label"),
        Index("ix_pending_label_next_attempt_at", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    album_id: Mapped[str | None] = mapped_column(
        Text, ForeignKey("album.id", ondelete="SET NULL"), nullable=True
    )
    server_id: Mapped[str] = mapped_column(Text, nullable=False)
    study_id: Mapped[str] = mapped_column(Text, nullable=False)
    label: Mapped[str] = mapped_column(Text, nullable=False)
    op: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, nullable=False, default=utcnow
    )


class _AlbumTokenRecord:
    """The columns an upload token's and an album read token's rows share.

    Both are sealed tokens for one album (:mod:`authsvc.credentials.album_tokens`) whose row
    holds what the token cannot: who made it, when it was last used, and its revocation.
    """

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    album_id: Mapped[str] = mapped_column(
        Text, ForeignKey("album.id", ondelete="CASCADE"), nullable=False
    )
    server_id: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UploadToken(_AlbumTokenRecord, db.Model):  # type: ignore[name-defined,misc]
    """The record of one upload token; the sealed token itself is shown once, never stored.

    The token names this row's ``id`` (its ``jti``): revocation, expiry as issued, and use
    counting are decided here. ``use_count`` only changes through one atomic
    ``UPDATE ... WHERE use_count < max_uses`` (see :mod:`authsvc.credentials.upload_token_records`).
    """

    __tablename__ = "upload_token"
    __table_args__ = (Index("ix_upload_token_album_id", "album_id", "created_at"),)

    use_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")


class AlbumReadToken(_AlbumTokenRecord, db.Model):  # type: ignore[name-defined,misc]
    """The record of one album read token (shown once, never stored): what can be revoked."""

    __tablename__ = "album_read_token"
    __table_args__ = (Index("ix_album_read_token_album_id", "album_id", "created_at"),)

    note: Mapped[str] = mapped_column(Text, nullable=False, default="")


class RolesConfigDoc(db.Model):  # type: ignore[name-defined,misc]
    """The current roles configuration: one row (id 1), the plugin's ``/settings/roles`` JSON.

    ``version`` grows by one on every change and backs optimistic concurrency (a change
    names the version it started from; a stale one is refused with 409).
    """

    __tablename__ = "roles_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_by: Mapped[str] = mapped_column(Text, nullable=False)


class RolesConfigHistory(db.Model):  # type: ignore[name-defined,misc]
    """Every version the roles configuration ever had: who changed it, when, and how."""

    __tablename__ = "roles_config_history"
    __table_args__ = (UniqueConstraint("version", name="uq_roles_config_history_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    changed_by: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)


class ShareToken(db.Model):  # type: ignore[name-defined,misc]
    """A share token authsvc issued (viewer publication, instant link, inbox link).

    The token itself is never stored: it is sealed and carries its own claims. This row is
    what makes it listable and revocable (``id`` is the token's ``jti``).
    """

    __tablename__ = "share_token"
    __table_args__ = (
        Index("ix_share_token_created_by", "created_by"),
        Index("ix_share_token_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    token_type: Mapped[str] = mapped_column(Text, nullable=False)
    resources: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, nullable=False)
    server_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    request_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(Text, nullable=True)
