"""Fixtures that start the real services once per session: Orthanc, the OIDC provider, nginx,
Chromium (PostgreSQL's ``postgres_url`` fixture lives in tests/conftest.py).

Everything under tests/integration is marked ``integration``. A component that is not installed
makes its tests fail with a pointer to scripts/testenv/setup.sh; nothing here ever skips,
because a skipped integration test proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import processes

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep a headless Chromium quiet and self-contained on a CI box running as root:
# no sandbox (root), no GPU, no background calls home, no QUIC to reach past 127.0.0.1.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory as an integration test."""
    # This hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def testenv_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory per session for every service's config, data and logs."""
    return tmp_path_factory.mktemp("testenv")


@pytest.fixture(scope="session")
def orthanc(testenv_state: Path) -> Iterator[processes.OrthancService]:
    """A real Orthanc >= 1.12 with DICOMweb on a loopback port, empty at session start."""
    service = processes.start_orthanc(testenv_state / "orthanc", processes.free_port())
    yield service
    service.stop()


@pytest.fixture(scope="session")
def idp(testenv_state: Path) -> Iterator[processes.IdpService]:
    """The Keycloak-shaped test OIDC provider serving the test realm (realm.json)."""
    service = processes.start_idp(testenv_state / "idp", processes.free_port())
    yield service
    service.stop()


@pytest.fixture(scope="session")
def nginx(
    testenv_state: Path, orthanc: processes.OrthancService
) -> Iterator[processes.NginxService]:
    """A private nginx that proxies /orthanc/ to the session's Orthanc."""
    service = processes.start_nginx(
        testenv_state / "nginx", processes.free_port(), upstreams={"orthanc": orthanc.port}
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright's sync API."""
    if not CHROMIUM.exists():
        raise processes.ServiceError(f"{CHROMIUM} not found; {processes.SETUP_HINT}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()
