"""config/orthanc/ is accepted by the real Orthanc of the test environment, and behaves.

Orthanc >= 1.12 with the DICOMweb plugin reads the committed files (see
``tests/deploy/conftest.py:start_kit_orthanc`` for the three container-specific values that
change and for what the test environment lacks: the PostgreSQL index, the authorization plugin
and Orthanc Explorer 2, whose sections Orthanc reads and ignores without their plugins). What
the authorization section says is checked by tests/deploy/test_names.py instead.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from authsvc.identity.roles import loads_jsonc
from tests import processes
from tests.deploy import files
from tests.deploy.conftest import KitOrthanc
from tests.dicom_factory import make_study

pytestmark = pytest.mark.integration


def _system(orthanc: KitOrthanc, **kwargs: object) -> requests.Response:
    return requests.get(f"{orthanc.url}/system", timeout=10, **kwargs)  # type: ignore[arg-type]


def test_plugin_orthanc_starts_on_the_kit_files(
    plugin_orthanc: KitOrthanc, dotenv: dict[str, str]
) -> None:
    """The public Orthanc: environment expanded, DICOMweb on, no Orthanc login of its own."""
    system = _system(plugin_orthanc)
    assert system.status_code == 200  # AuthenticationEnabled false: users come with tokens
    body = system.json()
    assert body["Name"] == "orthanc"  # ${ORTHANC_INSTANCE_NAME} from the compose service
    assert body["HasLabels"] is True
    assert tuple(int(part) for part in body["Version"].split(".")[:2]) >= (1, 12)
    plugins = requests.get(f"{plugin_orthanc.url}/plugins", timeout=10).json()
    assert "dicom-web" in plugins


def test_service_orthanc_requires_authsvcs_credentials(internal_orthanc: KitOrthanc) -> None:
    """The optional plugin-free Orthanc answers only the user authsvc logs in with."""
    assert internal_orthanc.credentials is not None
    user, password = internal_orthanc.credentials
    assert _system(internal_orthanc).status_code == 401
    assert _system(internal_orthanc, auth=(user, "not-the-password")).status_code == 401
    answer = _system(internal_orthanc, auth=(user, password))
    assert answer.status_code == 200
    assert answer.json()["Name"] == "orthanc-internal"


def test_gate_orthanc_starts_on_the_kit_files(gate_orthanc: KitOrthanc) -> None:
    """The stock Orthanc of the gate stack: no login (nginx and authsvc guard it), DICOMweb."""
    system = _system(gate_orthanc)
    assert system.status_code == 200
    assert system.json()["Name"] == "orthanc"
    instance = make_study(n_instances=1)[0]
    stored = requests.post(f"{gate_orthanc.url}/instances", data=instance, timeout=30)
    assert stored.status_code == 200, stored.text


def test_orthanc_refuses_a_section_defined_twice(gate_orthanc: KitOrthanc) -> None:
    """The kit relies on Orthanc's merge rule: a key in two files stops Orthanc at start."""
    # Proven on the real binary rather than assumed: add a second HttpPort and start again.
    (gate_orthanc.config_dir / "duplicate.json").write_text('{"HttpPort": 1}')
    try:
        with pytest.raises(processes.ServiceError, match="exited"):
            gate_orthanc.restart()
        assert "defined in 2 different configuration files" in gate_orthanc.log_tail(80)
    finally:
        (gate_orthanc.config_dir / "duplicate.json").unlink()
        gate_orthanc.start()


def test_every_file_of_each_orthanc_merges_without_duplicates() -> None:
    """The files each compose service mounts into /etc/orthanc/ never repeat a section."""
    for name in files.COMPOSE_FILES:
        for service in files.compose(name)["services"].values():
            mounted = [
                source.removeprefix("./config/orthanc/")
                for source, target in files.bind_mounts(service)
                if target.startswith("/etc/orthanc/")
            ]
            if mounted:
                files.orthanc_config(*mounted)  # asserts no section is defined twice


# Sections read by plugins, not by the Orthanc core (which ignores them, typos included).
PLUGIN_SECTIONS = {"PostgreSQL", "Authorization", "OrthancExplorer2", "DicomWeb", "StoneWebViewer"}


def test_core_options_are_spelt_as_orthanc_spells_them(tmp_path: Path) -> None:
    """Every core option the kit sets is one Orthanc knows (a typo would be silently ignored).

    The list comes from the real binary: ``Orthanc --config=FILE`` writes its default
    configuration, every core option included (a few only as comments).
    """
    default_path = tmp_path / "default.json"
    result = subprocess.run(
        [str(processes.TESTENV_DIR / "orthanc.sh"), f"--config={default_path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = default_path.read_text()
    known = set(loads_jsonc(text))
    # Options whose default depends on others are in the dump inside a comment block,
    # e.g. /** "AuthenticationEnabled" : false, **/
    for block in re.findall(r"/\*\*(.*?)\*\*/", text, re.DOTALL):
        known |= set(re.findall(r'^\s*"([A-Za-z]+)"\s*:', block, re.MULTILINE))
    assert {"ExecuteLuaEnabled", "RemoteAccessAllowed", "RegisteredUsers"} <= known
    for variant in ("plugin/authorization.json", "internal/internal.json", "gate/gate.json"):
        merged = files.orthanc_config("orthanc.json", variant)
        unknown = set(merged) - known - PLUGIN_SECTIONS
        assert not unknown, f"{variant}: Orthanc has no option {sorted(unknown)}"
