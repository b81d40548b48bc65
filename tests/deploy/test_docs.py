"""The operator documentation cannot name what does not exist.

Every ``AUTHSVC_*`` variable in README.md and docs/ is a setting (or its ``_FILE`` form, or one
of the few non-setting variables), every ``authsvc <command>`` in backticks is a command of the
CLI, and every relative link points at a file of the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from authsvc import config
from authsvc.cli import main
from tests.services import REPO_ROOT

pytestmark = pytest.mark.unit

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Variables that are not settings: the config file pointer and the test environment's own.
NOT_SETTINGS = {
    "AUTHSVC_CONFIG",
    "AUTHSVC_TESTENV",
    "AUTHSVC_TEST_DATABASE_URL",
    "AUTHSVC_TEST_AUTHZ_PLUGIN",
}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_variable_named_is_a_setting(doc: Path) -> None:
    """AUTHSVC_<KEY> and AUTHSVC_<KEY>_FILE name real keys of authsvc.config.Settings."""
    known = {config.env_name(key) for key in config.KEYS}
    known |= {name + "_FILE" for name in known} | NOT_SETTINGS
    named = set(re.findall(r"\bAUTHSVC_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
    assert named <= known, f"{doc.name} names unknown settings: {sorted(named - known)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_named_exists(doc: Path) -> None:
    """`authsvc <command> [<subcommand>]` in backticks is a command of the CLI."""
    text = doc.read_text()
    for command, sub in re.findall(r"`authsvc ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", text):
        assert command in main.commands, f"{doc.name}: no command 'authsvc {command}'"
        group = main.commands[command]
        if isinstance(group, click.Group) and sub:
            assert sub in group.commands, f"{doc.name}: no command 'authsvc {command} {sub}'"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    """[text](path) links without a scheme point at files that exist."""
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.name}: broken link {target}"
