"""authsvc: authorization for Orthanc — plugin callbacks, albums, upload tokens, nginx gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config → extensions → blueprints → error handlers → CLI. Nothing else."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    from authsvc import cli
    from authsvc import logs
    from authsvc import services
    from authsvc.config import load_settings
    from authsvc.database import ensure_sqlite_dir
    from authsvc.extensions import db
    from authsvc.views import register_blueprints
    from authsvc.views.errors import register_error_handlers

    settings = load_settings(config)
    logs.configure(settings.log_level, settings.log_format)

    app = Flask(__name__)
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
    cli.init_app(app)
    return app
