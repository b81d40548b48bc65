"""The audit trail page and its CSV export (administrators)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import sqlalchemy as sa
from flask import Response
from flask import render_template
from flask import request

from authsvc import audit
from authsvc.extensions import db
from authsvc.identity import admin_sessions
from authsvc.models import Album
from authsvc.views.admin._blueprint import admin_only
from authsvc.views.admin._blueprint import bp

AUDIT_PAGE_SIZE = 100
AUDIT_CSV_LIMIT = 50_000


def _audit_filters() -> tuple[audit.EventFilter, list[str]]:
    """Read the audit filters from the query string; bad dates are reported, not fatal."""
    problems: list[str] = []

    def day(name: str, *, end: bool) -> dt.datetime | None:
        text = (request.args.get(name) or "").strip()
        if not text:
            return None
        try:
            date = dt.date.fromisoformat(text)
        except ValueError:
            problems.append(f"“{text}” is not a date; use the date picker or YYYY-MM-DD.")
            return None
        start = dt.datetime.combine(date, dt.time.min, tzinfo=dt.UTC)
        return start + dt.timedelta(days=1) if end else start

    actor = (request.args.get("actor") or "").strip()[:200]
    # People are filtered by username: the trail names them by their (opaque) subject id.
    person = admin_sessions.find_user(actor) if actor else None
    filters = audit.EventFilter(
        actor=person.subject if person is not None else actor,
        subject=(request.args.get("album") or "").strip()[:200],
        action=(request.args.get("action") or "").strip()[:200],
        since=day("from", end=False),
        until=day("to", end=True),
    )
    return filters, problems


@bp.get("/audit")
@admin_only
def audit_trail() -> str:
    """The audit trail, newest first, with filters and a CSV export."""
    filters, problems = _audit_filters()
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    events, has_more = audit.search(
        filters, offset=(page - 1) * AUDIT_PAGE_SIZE, limit=AUDIT_PAGE_SIZE
    )
    subjects = {
        e.actor.split(":", 1)[1] for e in events if e.actor.startswith(("user:", "apikey-owner:"))
    }
    album_ids = {e.subject[6:] for e in events if e.subject and e.subject.startswith("album:")}
    album_names = {
        row.id: row.name
        for row in db.session.execute(
            sa.select(Album.id, Album.name).where(Album.id.in_(sorted(album_ids)))
        )
    }
    return render_template(
        "admin/audit.html",
        people=admin_sessions.known_users(sorted(subjects)),
        album_names=album_names,
        events=events,
        filters=filters,
        args=request.args,
        problems=problems,
        page=page,
        has_more=has_more,
        actions=sorted(a.value for a in audit.AuditAction),
        describe=audit.describe_detail,
    )


@bp.get("/audit.csv")
@admin_only
def audit_csv() -> Response:
    """The filtered audit trail as a CSV file (spreadsheet-safe)."""
    filters, _problems = _audit_filters()
    events, _more = audit.search(filters, offset=0, limit=AUDIT_CSV_LIMIT)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["time (UTC)", "action", "actor", "subject", "outcome", "request id", "detail"])
    for event in events:
        writer.writerow(
            [
                _csv_cell(event.occurred_at.strftime("%Y-%m-%d %H:%M:%S")),
                _csv_cell(event.action),
                _csv_cell(event.actor),
                _csv_cell(event.subject or ""),
                _csv_cell(event.outcome),
                _csv_cell(event.request_id or ""),
                _csv_cell(audit.describe_detail(event.detail)),
            ]
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="authsvc-audit-{stamp}.csv"'},
    )


def _csv_cell(value: str) -> str:
    """Neutralise spreadsheet formulas: a cell starting with = + - @ is prefixed with '."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
