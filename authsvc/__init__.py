"""authsvc: authorization for Orthanc — plugin callbacks, albums, upload tokens, nginx gate.

The package module imports nothing: importing any part of authsvc does not build the app.
The application factory is :func:`authsvc.app.create_app`.
"""

from __future__ import annotations

__version__ = "0.1.0"
