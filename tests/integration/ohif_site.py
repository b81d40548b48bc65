"""OHIF 3 for the tests: the prebuilt ``@ohif/app`` viewer served by a private nginx.

setup.sh unpacks the npm package's ``dist/`` under the test cache. Its webpack public path is
``/``, so the viewer is served at the root of its own origin (one nginx port): :class:`OhifSite`
serves the static files, answers OHIF's client-side routes (``/``, ``/viewer``) with
``index.html``, serves an ``app-config.js`` the test writes (and may rewrite between scenarios:
it is never cached), and proxies the given path prefixes (``/dicom-web/``, ``/api/``, …) to the
stack under test, so the browser sees one origin and sends no CORS preflights.

:func:`app_config` writes OHIF's configuration: one DICOMweb data source whose QIDO and WADO
roots are a path on that same origin (an album's DICOMweb root, the gate's Orthanc
``/dicom-web``, or Orthanc's under ``/orthanc/``). Credentials reach OHIF the ways OHIF itself
takes them: ``?token=`` on the viewer route (OHIF sends it as ``Authorization: Bearer``), or
an ``Authorization`` header the test browser context adds (standing in for OHIF's own OIDC
sign-in, which these tests do not exercise).

:func:`canvas_stats` reads the pixels of the viewport canvas OHIF drew, so "the study opened"
is checked on the image, not only on HTTP status codes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import deploy_kit
from tests import processes

OHIF_VERSION = "3.13.2"


def ohif_dist() -> Path:
    """Return the unpacked ``@ohif/app`` dist/ that setup.sh installed."""
    dist = processes.testenv_home() / "ohif" / OHIF_VERSION / "dist"
    if not (dist / "index.html").is_file():
        raise processes.ServiceError(
            f"OHIF {OHIF_VERSION} not found at {dist}; {processes.SETUP_HINT}"
        )
    return dist


@dataclass
class OhifSite:
    """The nginx serving OHIF, and where its app-config.js lives."""

    nginx: processes.NginxService
    config_path: Path

    @property
    def url(self) -> str:
        """Return the viewer's origin (no trailing slash)."""
        return self.nginx.url

    def configure(self, qido_root: str, wado_root: str | None = None, **extra: Any) -> None:
        """Point OHIF's one data source at paths on this origin (WADO defaults to QIDO's)."""
        self.config_path.write_text(app_config(qido_root, wado_root, **extra))

    def use_config(self, text: str) -> None:
        """Serve ``text`` as OHIF's app-config.js (e.g. config/ohif/app-config.js)."""
        self.config_path.write_text(text)

    def stop(self) -> None:
        """Stop the nginx."""
        self.nginx.stop()


def app_config(qido_root: str, wado_root: str | None = None, **extra: Any) -> str:
    """Return an OHIF ``app-config.js`` with one DICOMweb data source on same-origin paths.

    ``qido_root`` is where OHIF searches (study list, series of a study), ``wado_root`` where
    it retrieves metadata and frames (default: the same). ``extra`` entries are merged into the
    data source's ``configuration``.
    """
    configuration: dict[str, Any] = {
        "friendlyName": "authsvc",
        "name": "authsvc",
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
        **extra,
    }
    qido = json.dumps(qido_root.rstrip("/"))
    wado = json.dumps((wado_root or qido_root).rstrip("/"))
    return (
        "// Written by tests/integration/ohif_site.py for one test scenario.\n"
        f"const authsvcSource = {json.dumps(configuration, indent=2)};\n"
        f"authsvcSource.qidoRoot = window.location.origin + {qido};\n"
        f"authsvcSource.wadoRoot = window.location.origin + {wado};\n"
        f"authsvcSource.wadoUriRoot = window.location.origin + {wado};\n"
        "window.config = {\n"
        "  routerBasename: '/',\n"
        "  extensions: [],\n"
        "  modes: [],\n"
        "  showStudyList: true,\n"
        "  maxNumberOfWebWorkers: 2,\n"
        "  showWarningMessageForCrossOrigin: false,\n"
        "  showCPUFallbackMessage: false,\n"
        "  showLoadingIndicator: true,\n"
        "  investigationalUseDialog: { option: 'never' },\n"
        "  defaultDataSourceName: 'authsvc',\n"
        "  dataSources: [{\n"
        "    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',\n"
        "    sourceName: 'authsvc',\n"
        "    configuration: authsvcSource,\n"
        "  }],\n"
        "};\n"
    )


def _proxy_block(prefix: str, upstream: str) -> str:
    """Return an nginx location passing ``prefix`` on to ``upstream``, an http(s) origin (no
    path: the URI goes on unchanged)."""
    tls = "        proxy_ssl_verify off;\n" if upstream.startswith("https:") else ""
    return (
        f"    location {prefix} {{\n"
        f"        proxy_pass {upstream.rstrip('/')};\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        "        proxy_buffering off;\n"
        "        proxy_request_buffering off;\n"
        f"{tls}"
        "    }\n"
    )


def start_ohif_site(
    state: Path, port: int, data_source_root: str, proxies: dict[str, str]
) -> OhifSite:
    """Start nginx on ``port`` serving OHIF and proxying ``{path prefix: upstream origin}``."""
    dist = ohif_dist()
    state.mkdir(parents=True, exist_ok=True)
    (state / "tmp").mkdir(exist_ok=True)
    config_js = state / "app-config.js"
    config_js.write_text(app_config(data_source_root))
    blocks = "".join(_proxy_block(prefix, upstream) for prefix, upstream in proxies.items())
    site = state / "ohif-site.conf"
    site.write_text(
        "types {\n"
        "    text/html html; text/css css; application/javascript js mjs;\n"
        "    application/json json; application/wasm wasm; image/svg+xml svg;\n"
        "    image/png png; image/x-icon ico; font/woff2 woff2; text/plain txt;\n"
        "}\n"
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    server_name _;\n"
        f"    access_log {state.resolve()}/access.log;\n"
        f"    root {dist};\n"
        "    location = /app-config.js {\n"
        f"        alias {config_js.resolve()};\n"
        "        add_header Cache-Control no-store;\n"
        "    }\n"
        f"{blocks}"
        "    location / {\n"
        "        try_files $uri /index.html;\n"
        "    }\n"
        "}\n"
    )
    config = state / "nginx.conf"
    config.write_text(deploy_kit.main_config(state, [site]))
    nginx = processes.NginxService(
        "nginx-ohif",
        deploy_kit.nginx_argv(state, config),
        port,
        state / "nginx.log",
        ready_path="/app-config.js",
    )
    nginx.config_path = config
    nginx.upstreams = dict(proxies)
    nginx.start()
    return OhifSite(nginx, config_js)


#: JavaScript run in the page: statistics of the largest visible cornerstone canvas.
_CANVAS_STATS_JS = """() => {
  const selector = 'canvas.cornerstone-canvas, .cornerstone-viewport-element canvas';
  const canvases = [...document.querySelectorAll(selector)]
    .filter(c => c.width > 0 && c.height > 0);
  if (!canvases.length) return null;
  canvases.sort((a, b) => b.width * b.height - a.width * a.height);
  const canvas = canvases[0];
  let data;
  try {
    const copy = document.createElement('canvas');
    copy.width = canvas.width; copy.height = canvas.height;
    const ctx = copy.getContext('2d');
    ctx.drawImage(canvas, 0, 0);
    data = ctx.getImageData(0, 0, copy.width, copy.height).data;
  } catch (e) { return {error: String(e)}; }
  let n = 0, lit = 0, sum = 0, sumSq = 0;
  const levels = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    n += 1; sum += y; sumSq += y * y;
    if (y > 16) lit += 1;
    levels.add(Math.round(y));
  }
  const mean = sum / n;
  return {width: canvas.width, height: canvas.height, lit: lit / n, mean: mean,
          variance: sumSq / n - mean * mean, levels: levels.size};
}"""


def canvas_stats(page: Any) -> dict[str, Any] | None:
    """Return pixel statistics of the viewport canvas OHIF rendered (None: no canvas yet)."""
    stats: dict[str, Any] | None = page.evaluate(_CANVAS_STATS_JS)
    return stats


def rendered(stats: dict[str, Any] | None) -> bool:
    """Tell whether canvas statistics show an image: lit pixels with real variation."""
    return (
        stats is not None
        and "error" not in stats
        and stats["lit"] > 0.05
        and stats["variance"] > 50.0
        and stats["levels"] > 8
    )


def screenshots_wanted() -> bool:
    """Tell whether this run refreshes docs/screenshots (UPDATE_SCREENSHOTS=1)."""
    return os.environ.get("UPDATE_SCREENSHOTS") == "1"
