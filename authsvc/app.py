"""authsvc.app: the application factory, the one module that wires every part into a Flask app.

It sits above the HTTP edge (:mod:`authsvc.views`) and the app's commands
(:mod:`authsvc.commands`) and below the entry points (:mod:`authsvc.cli`, gunicorn's
``authsvc.app:create_app()``), so nothing it builds ever imports it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from authsvc import commands
from authsvc import logs
from authsvc import services
from authsvc.config import load_settings
from authsvc.database import ensure_sqlite_dir
from authsvc.extensions import db
from authsvc.views import register_blueprints
from authsvc.views.errors import register_error_handlers


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config → extensions → blueprints → error handlers → CLI. Nothing else."""
    settings = load_settings(config)
    logs.configure(settings.log_level, settings.log_format)

    # The package's name, not this module's: the app's name (its logger) and root path stay.
    app = Flask("authsvc")
    ensure_sqlite_dir(settings.sqlalchemy_url)
    app.config.from_mapping(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.sqlalchemy_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        TESTING=settings.env == "testing",
        JSON_SORT_KEYS=False,
    )
    if settings.proxy_count:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.proxy_count,
            x_proto=settings.proxy_count,
            x_host=settings.proxy_count,
            x_prefix=settings.proxy_count,
        )

    db.init_app(app)
    services.init_app(app, settings)
    register_blueprints(app)
    register_error_handlers(app)
    commands.init_app(app)
    return app
