"""authsvc.services: the per-app registry of long-lived collaborators (settings, Orthanc clients).

Built once by ``create_app`` and reached through :func:`services`, so views and commands share
one set of HTTP sessions and caches per process instead of building them per request.
"""

from __future__ import annotations

import dataclasses

from flask import Flask
from flask import current_app

from authsvc.config import Settings
from authsvc.orthanc import OrthancServers
from authsvc.orthanc import servers_from_settings


@dataclasses.dataclass
class Services:
    """What every request may need, built once per process."""

    settings: Settings
    orthanc: OrthancServers


def init_app(app: Flask, settings: Settings) -> None:
    """Build the registry from the settings and attach it to the app."""
    orthanc = OrthancServers(
        servers_from_settings(
            settings.orthanc_url,
            settings.orthanc_server_id,
            settings.orthanc_username,
            settings.orthanc_password,
            settings.orthanc_servers,
            timeout=settings.orthanc_timeout,
            retries=settings.orthanc_retries,
        )
    )
    app.extensions["authsvc"] = Services(settings=settings, orthanc=orthanc)


def services() -> Services:
    """Return the registry of the current app."""
    registry: Services = current_app.extensions["authsvc"]
    return registry
