"""audit.record writes in the caller's transaction: committed together, rolled back together."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from authsvc import audit
from authsvc.extensions import db
from authsvc.models import AuditEvent

pytestmark = pytest.mark.functional


def test_record_commits_with_the_change(db_app: Flask) -> None:
    with db_app.app_context():
        audit.record(
            audit.AuditAction.roles_update,
            "user:alice",
            "roles",
            audit.Outcome.success,
            {"roles": ["doctor"], "note": "ünïcode ok"},
        )
        db.session.commit()
        rows = db.session.scalars(sa.select(AuditEvent)).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.action, row.actor, row.subject, row.outcome) == (
            "roles:update",
            "user:alice",
            "roles",
            "success",
        )
        assert row.detail == {"roles": ["doctor"], "note": "ünïcode ok"}
        assert row.occurred_at.tzinfo is not None


def test_record_rolls_back_with_the_change(db_app: Flask) -> None:
    with db_app.app_context():
        audit.record("album:create", "user:bob", "album:1", "success")
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 0


def test_record_carries_the_request_id(db_app: Flask) -> None:
    @db_app.post("/_test/audited")
    def audited() -> dict[str, bool]:
        audit.record("album:create", "user:bob", "album:1", "success")
        db.session.commit()
        return {"ok": True}

    db_app.test_client().post("/_test/audited", headers={"X-Request-ID": "rid-audit-1"})
    with db_app.app_context():
        row = db.session.scalars(sa.select(AuditEvent)).one()
        assert row.request_id == "rid-audit-1"
