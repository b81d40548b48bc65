"""Shared fixtures: a fresh app per test on SQLite or a real PostgreSQL, clients, runners.

DB-touching tests use ``db_app``, parametrised over both backends; each test gets its own
SQLite file or its own PostgreSQL schema built by ``authsvc init-db`` (from schema.sql), so
tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask.testing import FlaskCliRunner

from authsvc import logs
from authsvc.app import create_app
from authsvc.credentials.api_keys import generate_api_key
from authsvc.database import init_db
from authsvc.extensions import db
from authsvc.models import ApiKey

# Throw-away values, named as such (Warehouse's habit): they must never look real.
INSECURE_SECRET_KEY = "insecure-test-secret-key-0123456789abcdef0123456789"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AUTHSVC_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("AUTHSVC_") and not name.startswith("AUTHSVC_TEST"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL server (the CI's, the developer's, or a private cluster)."""
    if os.environ.get("AUTHSVC_TEST_DATABASE_URL"):
        return os.environ["AUTHSVC_TEST_DATABASE_URL"]
    from tests.processes import postgres_url as find_postgres

    return find_postgres()


def api_key_row(subject: str, username: str, *, roles: list[str], name: str) -> tuple[ApiKey, str]:
    """A new user API key of ``username``, made by its owner: the unsaved row and its plaintext.

    Suites that need a caller with an API key add this row themselves, so the key exists
    without going through the JSON API they are not testing.
    """
    generated = generate_api_key()
    row = ApiKey(
        id=generated.key_id,
        secret_hash=generated.secret_hash,
        name=name,
        kind="user",
        owner_subject=subject,
        owner_username=username,
        roles=roles,
        created_by=f"user:{subject}",
    )
    return row, generated.plaintext


def base_config(tmp_path: Any, **extra: Any) -> dict[str, Any]:
    """The settings every test app starts from."""
    config: dict[str, Any] = {
        "env": "testing",
        "data_dir": str(tmp_path / "data"),
        "secret_key": INSECURE_SECRET_KEY,
        "log_level": "debug",
    }
    config.update(extra)
    return config


@pytest.fixture
def log_stream() -> io.StringIO:
    """Everything authsvc logs during the test, through its real (redacting) handler."""
    return io.StringIO()


def _make_app(config: dict[str, Any], log_stream: io.StringIO) -> Flask:
    app = create_app(config)
    # Re-point authsvc's own handler at the buffer so tests can read what would be logged.
    logs.configure(app.extensions["authsvc"].settings.log_level, "text", stream=log_stream)
    with app.app_context():
        init_db(db.engine)
    return app


@contextlib.contextmanager
def running_app(config: dict[str, Any], log_stream: io.StringIO) -> Iterator[Flask]:
    """An app built by ``_make_app`` whose session and connections are closed on leaving.

    Fixtures that build their own settings (or enter a requests mock first) use it, so that no
    test, passed or failed, leaves a SQLite handle or a connection to its dropped PostgreSQL
    schema behind.
    """
    app = _make_app(config, log_stream)
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def extra_config() -> dict[str, Any]:
    """Settings a test module adds to ``app``/``db_app`` (override this fixture in the module)."""
    return {}


@pytest.fixture
def app(tmp_path: Any, log_stream: io.StringIO, extra_config: dict[str, Any]) -> Iterator[Flask]:
    """A fresh app on its own SQLite file."""
    with running_app(base_config(tmp_path, **extra_config), log_stream) as app:
        yield app


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A private, empty PostgreSQL schema for one test; its SQLAlchemy URL is yielded."""
    name = "t_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(_psycopg(postgres_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{_psycopg(postgres_url)}{sep}options=-csearch_path%3D{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


def _psycopg(url: str) -> str:
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_app(
    request: pytest.FixtureRequest,
    tmp_path: Any,
    log_stream: io.StringIO,
    extra_config: dict[str, Any],
) -> Iterator[Flask]:
    """A fresh app on SQLite, then on a real PostgreSQL (the test runs once for each)."""
    config = base_config(tmp_path, **extra_config)
    if request.param == "postgresql":
        config["database_url"] = request.getfixturevalue("pg_schema")
    with running_app(config, log_stream) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of ``app``."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner of ``app``."""
    return app.test_cli_runner()
