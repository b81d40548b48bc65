"""authsvc.cli: the ``authsvc`` command — serve, init-db, migrate, check-config, config-doc.

A configuration error prints one line naming the key and exits with status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask import Flask
from flask.cli import with_appcontext

from authsvc.errors import ConfigError


def _fail_on_config_error(func: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"authsvc: configuration error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database schema (or upgrade it to the newest version)."""
    from authsvc import database
    from authsvc.extensions import db

    click.echo(database.init_db(db.engine))


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Apply pending schema migrations."""
    from authsvc import database
    from authsvc.extensions import db

    click.echo(database.migrate(db.engine))


def init_app(app: Flask) -> None:
    """Register the commands that need an app (also reachable through ``flask --app authsvc``)."""
    app.cli.add_command(init_db_command)
    app.cli.add_command(migrate_command)


@click.group()
def main() -> None:
    """authsvc: authorization service for Orthanc."""


def _app() -> Flask:
    from authsvc import create_app

    return create_app()


@main.command("init-db")
@_fail_on_config_error
def main_init_db() -> None:
    """Create the database schema (or upgrade it to the newest version)."""
    from authsvc import database
    from authsvc.extensions import db

    with _app().app_context():
        click.echo(database.init_db(db.engine))


@main.command("migrate")
@_fail_on_config_error
def main_migrate() -> None:
    """Apply pending schema migrations."""
    from authsvc import database
    from authsvc.extensions import db

    with _app().app_context():
        click.echo(database.migrate(db.engine))


@main.command("check-config")
@_fail_on_config_error
def main_check_config() -> None:
    """Load and validate the configuration; print 'ok' or the one bad key."""
    from authsvc.config import load_settings

    settings = load_settings()
    click.echo(f"configuration ok (env={settings.env.value})")


@main.command("config-doc")
@click.option("--format", "fmt", type=click.Choice(["markdown", "toml"]), default="markdown")
def main_config_doc(fmt: str) -> None:
    """Print the configuration reference (Markdown table, or the example TOML file)."""
    from authsvc.config import example_toml
    from authsvc.config import markdown_table

    click.echo(markdown_table() if fmt == "markdown" else example_toml(), nl=False)


@main.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@_fail_on_config_error
def main_serve(gunicorn_args: tuple[str, ...]) -> None:
    """Serve with gunicorn (settings from AUTHSVC_BIND, AUTHSVC_WORKERS, AUTHSVC_THREADS)."""
    from authsvc.config import load_settings

    load_settings()  # fail here with one line, before gunicorn starts workers
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    argv = [gunicorn, "-c", "python:authsvc.gunicorn_conf", *gunicorn_args, "authsvc:create_app()"]
    os.execv(gunicorn, argv)  # noqa: S606 - replaces this process with gunicorn, fixed argv
