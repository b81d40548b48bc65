"""authsvc.orthanc: everything that talks to Orthanc or to its authorization plugin.

One module per concern:

* :mod:`~authsvc.orthanc.client` — the REST client with authsvc's own credentials, the
  registry of configured servers (:class:`OrthancServers`) and the label-write probe;
* :mod:`~authsvc.orthanc.routes` — the route map: what an Orthanc request touches, for the gate
  (its DICOMweb, WADO-URI and viewer routes in :mod:`~authsvc.orthanc.routes_dicomweb`, its
  vocabulary in :mod:`~authsvc.orthanc.route_values`);
* :mod:`~authsvc.orthanc.gate` — the facts behind the nginx ``auth_request`` decision;
* :mod:`~authsvc.orthanc.study_labels` — which study a resource belongs to, its labels, cached;
* :mod:`~authsvc.orthanc.dicomweb` — album-scoped DICOMweb helpers (URL rewriting, QIDO);
* :mod:`~authsvc.orthanc.plugin_protocol` — the Advanced Authorization plugin's wire format;
* :mod:`~authsvc.orthanc.startup_check` — once authsvc serves, probe every Orthanc's label writes.

This package re-exports the client's public names (``from authsvc.orthanc import
OrthancClient``); the other modules are imported by their own path. Only the client is loaded
with the package, so importing a name here pulls in no Flask and no policy.
"""

from __future__ import annotations

from authsvc.orthanc.client import OrthancClient
from authsvc.orthanc.client import OrthancServer
from authsvc.orthanc.client import OrthancServers
from authsvc.orthanc.client import label_write_problems
from authsvc.orthanc.client import servers_from_settings

__all__ = [
    "OrthancClient",
    "OrthancServer",
    "OrthancServers",
    "label_write_problems",
    "servers_from_settings",
]
