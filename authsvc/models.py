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
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import Text
from sqlalchemy import TypeDecorator
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


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    """An API key: only the SHA-256 of its secret is stored (see authsvc.api_keys).

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
