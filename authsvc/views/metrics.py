"""``GET /metrics``: decision counters of this worker process, in Prometheus text format."""

from __future__ import annotations

from flask import Blueprint
from flask import Response

from authsvc.services import services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Return the decision counters (counts only: nothing secret, nothing per user)."""
    return Response(
        services().decisions.render(),
        mimetype="text/plain",
        content_type="text/plain; version=0.0.4",
    )
