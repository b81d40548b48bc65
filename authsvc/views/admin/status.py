"""The status page: database, Orthanc servers and identity provider (administrators)."""

from __future__ import annotations

from flask import render_template

from authsvc.views import ops
from authsvc.views.admin._blueprint import admin_only
from authsvc.views.admin._blueprint import bp


@bp.get("/status")
@admin_only
def status() -> str:
    """Database, Orthanc servers and identity provider, as /readyz checks them."""
    checks = ops.dependency_checks()
    return render_template(
        "admin/status.html", checks=checks, ready=all(c["ok"] for c in checks.values())
    )
