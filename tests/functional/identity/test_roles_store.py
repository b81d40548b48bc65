"""authsvc.identity.roles_store: import on first use, versions, history, stale edits, bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from authsvc.app import create_app
from authsvc.errors import ConfigError
from authsvc.errors import Conflict
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.models import RolesConfigHistory
from authsvc.services import services
from tests.conftest import base_config

pytestmark = pytest.mark.functional

FILE = '{"roles": {"r": {"permissions": ["view"], "authorized_labels": ["a"]}}, /* c */}'


@pytest.fixture
def extra_config(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "permissions.json"
    path.write_text(FILE)
    return {"roles_file": str(path)}


def test_import_then_versions(db_app: Flask) -> None:
    with db_app.app_context():
        store = services().roles
        first = store.load()
        assert first.version == 1 and first.config.roles["r"].authorized_labels == {"a"}
        second = store.save(
            {"roles": {"r": {"permissions": ["all"]}}},
            actor="user:x",
            source="api",
            expected_version=1,
        )
        db.session.commit()
        assert second.version == 2
        # Someone else's edit from version 1 is stale now.
        with pytest.raises(Conflict):
            store.save({"roles": {}}, actor="user:y", source="api", expected_version=1)
        db.session.rollback()
        # An invalid document changes nothing.
        with pytest.raises(ValidationFailed):
            store.save({"roles": []}, actor="user:y", source="api", expected_version=2)
        db.session.rollback()
        assert store.load().version == 2
        history = db.session.scalars(
            sa.select(RolesConfigHistory).order_by(RolesConfigHistory.version)
        ).all()
        assert [(h.version, h.changed_by, h.source) for h in history] == [
            (1, "system", "import"),
            (2, "user:x", "api"),
        ]


def test_cache_is_dropped_after_a_local_save(db_app: Flask) -> None:
    with db_app.app_context():
        store = services().roles
        assert set(store.current().roles) == {"r"}
        # The plugin's profile cache goes too, so new roles reach profiles at once here.
        identity = Identity(kind=IdentityKind.USER, subject="u", realm_roles=frozenset({"r"}))
        authenticator = services().authenticator
        cache = services().profile_cache
        assert cache.get(identity, lambda: authenticator.profile(identity)).permissions == {"view"}
        store.save({"roles": {"s": {"permissions": []}}}, actor="plugin", source="plugin")
        db.session.commit()
        assert set(store.current().roles) == {"s"}
        assert cache.get(identity, lambda: authenticator.profile(identity)).permissions == set()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not a valid roles file"),
        ('{"roles": 1}', "not a valid"),
    ],
)
def test_bad_roles_file_stops_start_up(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "permissions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        create_app(base_config(tmp_path, roles_file=str(path)))
    assert "AUTHSVC_ROLES_FILE" in str(info.value)


def test_a_change_through_one_app_is_read_back_through_another_at_once(
    tmp_path: Path, extra_config: dict[str, Any]
) -> None:
    """Two workers (or instances) on one database: no stale GET after a PUT elsewhere."""
    from tests.plugin_client import PluginClient

    config = base_config(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        plugin_username="share-user",
        plugin_password="change-me",
        **extra_config,
    )
    first, second = create_app(config), create_app(config)
    with first.app_context():
        db.create_all()
    one, two = PluginClient(first.test_client()), PluginClient(second.test_client())
    try:
        # Both read (and cache) version 1 first, as busy workers would.
        for client in (one, two):
            assert client.get("/settings/roles").get_json()["roles"]["r"]["permissions"] == ["view"]
        for round_ in range(3):
            document = {
                "roles": {"r": {"permissions": ["view"], "authorized-labels": [f"l{round_}"]}}
            }
            writer, reader = (one, two) if round_ % 2 == 0 else (two, one)
            assert writer.put("/settings/roles", {**document, "server-id": None}).status_code == 200
            got = reader.get("/settings/roles").get_json()
            assert got["roles"]["r"]["authorized-labels"] == [f"l{round_}"]
            api = reader.client.get("/api/roles")  # unauthenticated: refused, never stale data
            assert api.status_code == 401
    finally:
        for app in (first, second):
            with app.app_context():
                db.engine.dispose()
