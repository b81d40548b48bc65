"""authsvc.views: the HTTP edge, the only package that touches ``request``, ``g`` or ``session``.

Views are thin: parse the request, load data, ask ``authsvc.policy``, act, serialise.
"""

from __future__ import annotations

from flask import Flask

from authsvc.views import admin
from authsvc.views import album_upload
from authsvc.views import albums_api
from authsvc.views import credentials
from authsvc.views import dicomweb
from authsvc.views import gate
from authsvc.views import metrics
from authsvc.views import openapi
from authsvc.views import ops
from authsvc.views import plugin
from authsvc.views import read_tokens
from authsvc.views import requests as request_hooks
from authsvc.views import uploads


def register_blueprints(app: Flask) -> None:
    """Register every blueprint and the per-request hooks."""
    request_hooks.init_app(app)
    app.register_blueprint(ops.bp)
    admin.init_app(app, app.extensions["authsvc"].settings)
    app.register_blueprint(album_upload.bp)
    app.register_blueprint(plugin.bp)
    app.register_blueprint(credentials.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(albums_api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(gate.bp)
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(read_tokens.bp)
    app.register_blueprint(uploads.bp)
