"""schema.sql, the models and the migrations describe one schema.

A real PostgreSQL database is built from schema.sql (as `authsvc init-db` does) and compared
with the SQLAlchemy metadata: tables, columns, types, nullability, primary keys, unique
constraints, foreign keys and indexes. A difference fails with the exact mismatch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from authsvc import database
from authsvc.extensions import db

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[1]


def _type(type_: Any) -> str:
    """Compare types as PostgreSQL spells them, ignoring harmless synonyms."""
    text = str(type_.compile(dialect=postgresql.dialect())).upper()
    return {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ", "VARCHAR": "TEXT"}.get(text, text)


def _describe_db(conn: sa.Connection) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    out: dict[str, Any] = {}
    for table in inspector.get_table_names():
        out[table] = {
            "columns": {
                c["name"]: (_type(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            },
            "pk": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
            "fks": sorted(
                (
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    (f.get("options") or {}).get("ondelete"),
                )
                for f in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
                # PostgreSQL backs each UNIQUE constraint with an index; it is compared as a
                # constraint above, not twice.
                if not i.get("duplicates_constraint")
            ),
        }
    return out


def _describe_models() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in db.metadata.sorted_tables:
        out[table.name] = {
            "columns": {
                c.name: (_type(c.type.dialect_impl(postgresql.dialect())), bool(c.nullable))
                for c in table.columns
            },
            "pk": sorted(c.name for c in table.primary_key.columns),
            "unique": sorted(
                tuple(c.name for c in u.columns)
                for u in table.constraints
                if isinstance(u, sa.UniqueConstraint)
            ),
            "fks": sorted(
                (
                    tuple(c.name for c in fk.columns),
                    fk.referred_table.name,
                    tuple(e.column.name for e in fk.elements),
                    fk.ondelete,
                )
                for fk in table.foreign_key_constraints
            ),
            "indexes": sorted(
                (i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes
            ),
        }
    return out


def test_schema_sql_agrees_with_the_models(postgres_url: str, pg_schema: str) -> None:
    engine = sa.create_engine(pg_schema)
    try:
        assert database.init_db(engine) == f"created schema version {database.head_version()}"
        with engine.connect() as conn:
            actual = _describe_db(conn)
            assert database.current_version(conn) == database.head_version()
    finally:
        engine.dispose()
    expected = _describe_models()
    assert sorted(actual) == sorted(expected)
    for table in expected:
        assert actual[table] == expected[table], table


def test_init_db_is_idempotent(pg_schema: str) -> None:
    engine = sa.create_engine(pg_schema)
    try:
        database.init_db(engine)
        assert "up to date" in database.init_db(engine)
    finally:
        engine.dispose()


def test_sqlite_schema_from_models_has_the_same_tables(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    database.init_db(engine)
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == set(db.metadata.tables)
        assert database.current_version(conn) == database.head_version()


def test_schema_version_matches_the_newest_migration() -> None:
    numbers = [number for number, _name, _sql in database.migrations()]
    assert numbers == sorted(set(numbers)), "migration numbers must be unique"
    assert database.head_version() == (numbers[-1] if numbers else 1)
    if numbers:
        assert numbers[0] == 2 and numbers == list(range(2, numbers[-1] + 1)), "no gaps"


def test_top_level_schema_sql_is_the_packaged_one() -> None:
    assert (ROOT / "schema.sql").read_text() == database.schema_sql()
    assert re.search(r"^CREATE TABLE audit_event", database.schema_sql(), re.M)
