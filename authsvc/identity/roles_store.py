"""authsvc.identity.roles_store: the stored roles configuration, its history, a per-process cache.

The roles configuration (role -> permissions + authorized labels, group -> roles) lives in the
database (``roles_config``, one row) so every worker and replica sees the same one; every change
adds a ``roles_config_history`` row saying who changed what and when, and an audit event.

* :meth:`RolesStore.load` reads the stored document; everything that shows or returns the
  document itself (``GET /settings/roles``, ``GET /api/roles``, the admin page) uses it, so a
  change made through any worker or instance is read back at once;
* :meth:`RolesStore.current` serves profile composition (every plugin call) through a cache of
  a few seconds; the app sets its TTL so that roles cache + profile cache stay within the
  plugin's own ``validity``;
* :meth:`RolesStore.save` replaces it with optimistic concurrency: the caller names the version
  it edited (``expected_version``); a stale version is refused with 409. The plugin's
  ``PUT /settings/roles`` carries no version and overwrites, as orthanc-auth-service did;
* on first use, when the table is empty and ``roles_file`` is configured, the file (in
  orthanc-auth-service's ``permissions.json`` format, comments allowed) is imported as version 1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from authsvc import audit
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.errors import ConfigError
from authsvc.errors import Conflict
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity.roles import RolesConfig
from authsvc.identity.roles import load_permissions_file
from authsvc.identity.roles import parse_roles
from authsvc.models import RolesConfigDoc
from authsvc.models import RolesConfigHistory
from authsvc.models import utcnow

__all__ = ["RolesSnapshot", "RolesStore"]

log = logging.getLogger(__name__)

_ROW_ID = 1


@dataclass(frozen=True)
class RolesSnapshot:
    """The roles configuration at one version (version 0: nothing stored yet)."""

    config: RolesConfig
    version: int


_EMPTY = RolesSnapshot(RolesConfig(), 0)


class RolesStore:
    """Read (cached) and write the stored roles configuration."""

    def __init__(
        self,
        *,
        roles_file: str = "",
        ttl: float = 5.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """Remember where to import from and how long to cache; does no I/O.

        ``on_change`` runs after every local change (the app clears its profile cache there).
        """
        self._roles_file = roles_file
        self._ttl = ttl
        self._on_change = on_change
        self._lock = threading.Lock()
        self._cached: RolesSnapshot | None = None
        self._loaded_at = 0.0

    # -- reading ------------------------------------------------------------------------------

    def current(self) -> RolesConfig:
        """Return the current roles configuration (cached for a few seconds)."""
        return self.snapshot().config

    def snapshot(self) -> RolesSnapshot:
        """Return the configuration and its version (cached for a few seconds)."""
        now = time.monotonic()
        with self._lock:
            cached, loaded_at = self._cached, self._loaded_at
        if cached is not None and now - loaded_at < self._ttl:
            return cached
        snapshot = self.load()
        with self._lock:
            self._cached, self._loaded_at = snapshot, now
        return snapshot

    def invalidate(self) -> None:
        """Forget the cached configuration (after a change made by this process)."""
        with self._lock:
            self._cached = None
        if self._on_change is not None:
            self._on_change()

    def load(self) -> RolesSnapshot:
        """Read the configuration from the database, importing the roles file on first use."""
        row = db.session.get(RolesConfigDoc, _ROW_ID)
        if row is None:
            if not self._roles_file:
                return _EMPTY
            return self._import_file()
        return RolesSnapshot(parse_roles(row.document), row.version)

    def read_file(self) -> RolesConfig | None:
        """Read and check the roles file (None when none is configured); called at start-up.

        :raise ConfigError: the file cannot be read or is not a valid roles file.
        """
        if not self._roles_file:
            return None
        path = Path(self._roles_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"AUTHSVC_ROLES_FILE: cannot read {path}: {exc.strerror}") from None
        try:
            return load_permissions_file(text)
        except ValidationFailed as exc:
            raise ConfigError(
                f"AUTHSVC_ROLES_FILE: {path} is not a valid roles file: {exc.details}"
            ) from None

    def _import_file(self) -> RolesSnapshot:
        path = Path(self._roles_file)
        config = self.read_file()
        if config is None:
            return _EMPTY
        try:
            snapshot = self._write(config, expected_version=0, actor="system", source="import")
            db.session.commit()
        except (IntegrityError, Conflict):
            # Another worker imported it first: use theirs.
            db.session.rollback()
            row = db.session.get(RolesConfigDoc, _ROW_ID)
            if row is None:
                raise
            return RolesSnapshot(parse_roles(row.document), row.version)
        log.info("imported the roles configuration from %s (%d roles)", path, len(config.roles))
        return snapshot

    def history(self, limit: int = 50) -> list[RolesConfigHistory]:
        """Return the latest changes, newest first."""
        query = sa.select(RolesConfigHistory).order_by(RolesConfigHistory.version.desc())
        return list(db.session.scalars(query.limit(limit)))

    # -- writing ------------------------------------------------------------------------------

    def save(
        self,
        document: Mapping[str, Any],
        *,
        actor: str,
        source: str,
        expected_version: int | None = None,
    ) -> RolesSnapshot:
        """Validate and store a new configuration; the caller commits.

        ``expected_version`` None overwrites whatever is stored (the plugin's PUT).

        :raise ValidationFailed: the document is not a valid roles configuration (422).
        :raise Conflict: ``expected_version`` is not the stored version (409).
        """
        config = parse_roles(document)
        if expected_version is None:
            row = db.session.get(RolesConfigDoc, _ROW_ID)
            expected_version = 0 if row is None else row.version
        snapshot = self._write(
            config, expected_version=expected_version, actor=actor, source=source
        )
        self.invalidate()
        return snapshot

    def _write(
        self, config: RolesConfig, *, expected_version: int, actor: str, source: str
    ) -> RolesSnapshot:
        document = config.to_json()
        now = utcnow()
        new_version = expected_version + 1
        if expected_version == 0:
            if db.session.get(RolesConfigDoc, _ROW_ID) is not None:
                raise Conflict("The roles configuration was changed by someone else; reload it.")
            db.session.add(
                RolesConfigDoc(
                    id=_ROW_ID, document=document, version=1, updated_at=now, updated_by=actor
                )
            )
            db.session.flush()
        else:
            # Compare-and-set in one statement: two concurrent editors cannot both win.
            result = db.session.execute(
                sa.update(RolesConfigDoc)
                .where(RolesConfigDoc.id == _ROW_ID, RolesConfigDoc.version == expected_version)
                .values(document=document, version=new_version, updated_at=now, updated_by=actor)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                raise Conflict("The roles configuration was changed by someone else; reload it.")
            db.session.expire_all()
        db.session.add(
            RolesConfigHistory(
                version=new_version,
                document=document,
                changed_at=now,
                changed_by=actor,
                source=source,
            )
        )
        audit.record(
            AuditAction.roles_update,
            actor,
            "roles",
            Outcome.success,
            {"version": new_version, "source": source, "roles": sorted(config.roles)},
        )
        return RolesSnapshot(config, new_version)
