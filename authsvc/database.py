"""authsvc.database: create and upgrade the schema, and check the database is reachable.

PostgreSQL (production) is built from ``schema.sql``, the DDL that is the source of truth.
SQLite (the embedded default) is built from the models' metadata, because SQLite does not speak
PostgreSQL's identity columns or JSONB; ``tests/test_schema.py`` proves both describe the same
schema. Either way the applied version is recorded in ``schema_version`` and later upgrades are
the numbered files in ``authsvc/migrations/`` (see docs/database.md).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from authsvc import models
from authsvc.errors import DependencyUnavailable
from authsvc.extensions import db

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def schema_sql() -> str:
    """Return the text of ``schema.sql`` shipped with the package."""
    return (resources.files("authsvc") / "schema.sql").read_text(encoding="utf-8")


def migrations() -> list[tuple[int, str, str]]:
    """Return ``(version, name, sql)`` of every migration file, in order."""
    found = []
    for entry in resources.files("authsvc.migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def head_version() -> int:
    """Return the version ``schema.sql`` describes (the newest one)."""
    match = re.search(
        r"INSERT INTO schema_version \(version, applied_at\) VALUES \((\d+), now\(\)\);",
        schema_sql(),
    )
    if match is None:  # pragma: no cover - guarded by tests/test_schema.py
        raise RuntimeError("schema.sql does not record its version")
    return int(match.group(1))


def split_statements(sql: str) -> list[str]:
    """Split a DDL script into statements (our files use no semicolons inside literals)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def current_version(conn: Connection) -> int | None:
    """Return the applied schema version, or None on an empty database."""
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    value = conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar()
    return int(value) if value is not None else None


def init_db(engine: Engine) -> str:
    """Create the schema on an empty database, or upgrade an existing one; say what was done."""
    with engine.begin() as conn:
        version = current_version(conn)
        if version is None:
            if conn.dialect.name == "postgresql":
                for statement in split_statements(schema_sql()):
                    conn.execute(sa.text(statement))
            else:
                db.metadata.create_all(conn)
                conn.execute(
                    sa.insert(models.SchemaVersion).values(
                        version=head_version(), applied_at=models.utcnow()
                    )
                )
            return f"created schema version {head_version()}"
    return migrate(engine)


def migrate(engine: Engine) -> str:
    """Apply every migration newer than the database, each in its own transaction."""
    applied = []
    for number, name, sql in migrations():
        with engine.begin() as conn:
            version = current_version(conn)
            if version is None:
                raise RuntimeError("the database has no schema; run `authsvc init-db` first")
            if number <= version:
                continue
            for statement in split_statements(sql):
                conn.execute(sa.text(statement))
            conn.execute(
                sa.insert(models.SchemaVersion).values(version=number, applied_at=models.utcnow())
            )
            applied.append(name)
    with engine.connect() as conn:
        version = current_version(conn)
    if applied:
        return f"applied {', '.join(applied)}; schema version {version}"
    return f"schema version {version} is up to date"


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file so a fresh checkout just works."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != "sqlite:///:memory:":
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def ping(engine: Engine) -> None:
    """Run a trivial query; raise DependencyUnavailable when the database cannot answer."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        raise DependencyUnavailable("The database is unreachable.") from exc
