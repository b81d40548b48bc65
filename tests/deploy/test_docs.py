"""The operator documentation cannot name what does not exist.

Every ``AUTHSVC_*`` variable in README.md and docs/ is a setting (or its ``_FILE`` form, or one
of the few non-setting variables), every ``authsvc <command>`` in backticks is a command of the
CLI, and every relative link points at a file of the repository (and at a heading of it, when
the link names one). The README stays a map: at most 12 KB, with every route family of the
OpenAPI documents in its endpoint table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import click
import pytest

from authsvc import config
from authsvc.cli import main
from tests.processes import REPO_ROOT

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


README_MAX_BYTES = 12 * 1024


def anchors(doc: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file (fenced code left out)."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    """[text](path#anchor) links without a scheme point at files (and headings) that exist."""
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        assert path.exists(), f"{doc.name}: broken link {target}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{doc.name}: no heading for {target}"


#: Paths the docs name on purpose although no such file exists (a template for a new file).
EXAMPLE_PATHS = {"authsvc/migrations/0002_add_something.sql", "authsvc/migrations/NNNN_<what>.sql"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_path_named_exists(doc: Path) -> None:
    """`authsvc/…`, `tests/…`, `nginx/…` and the like, in backticks, name files that exist.

    A module that moves must take the pages that name it along.
    """
    pattern = r"`((?:authsvc|tests|bench|nginx|config|scripts|docs)/[^`\s]*)`"
    for named in sorted(set(re.findall(pattern, doc.read_text())) - EXAMPLE_PATHS):
        path = named.split("::", 1)[0]
        assert any(REPO_ROOT.glob(path)), f"{doc.name} names {named}, which does not exist"


def test_anchors_follow_github() -> None:
    """The anchor rule matches GitHub's on the kinds of heading the docs use."""
    page = REPO_ROOT / "docs" / "security.md"
    found = anchors(page)
    assert "one-nginx-auth_request-through-the-code" in found
    assert "credentials-follow-their-makers-rights" in found
    assert "hardening-attacks-fuzzing-faults-scale-out" in found


def test_readme_is_a_map() -> None:
    """README.md stays short: the details live in docs/ pages."""
    size = len((REPO_ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES})"


def endpoint_table() -> str:
    """The rows of the README's endpoint table."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Endpoints\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `"))


def openapi_paths() -> list[str]:
    """Every path of the JSON API's and the plugin callbacks' OpenAPI documents."""
    paths: list[str] = []
    for name in ("openapi.json", "openapi-plugin.json"):
        document = json.loads((REPO_ROOT / "authsvc" / name).read_text())
        paths.extend(document["paths"])
    return paths


@pytest.mark.parametrize("path", openapi_paths())
def test_endpoint_map_names_every_route_family(path: str) -> None:
    """The README's endpoint table names each path's family and every literal segment of it."""
    table = endpoint_table()
    literal = [part for part in path.strip("/").split("/") if not part.startswith("{")]
    family = "/" + "/".join(literal[:2])
    assert f"{family}" in table, f"README endpoint table lacks {family} (for {path})"
    for part in literal[2:]:
        assert re.search(rf"/{re.escape(part)}\b", table), f"README endpoint table lacks {path}"
