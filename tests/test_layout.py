"""tests/ keeps mirroring authsvc/: a package's tests sit under its name, helpers never share one.

A reader looking for the tests of ``authsvc.credentials`` opens tests/unit/credentials or
tests/functional/credentials; a new package without such a directory has its tests scattered
at a tier's top level, which is what issue 16 undid. A helper module named like a product
module (tests/services.py beside authsvc/services.py, until it became tests/processes.py) makes
``services`` mean two things in one file. Both rules are checked on the files themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ROOT / "authsvc"
TESTS = ROOT / "tests"
TIERS = ("unit", "functional")

# Subpackages whose tests are, on purpose, not gathered under their name, and why.
NOT_MIRRORED = {
    "views": "the HTTP layer: every functional suite drives it through the test client, and "
    "its one subpackage (views.admin) has its own directory",
    "migrations": "numbered SQL upgrades, not code: tests/test_schema.py and tests/deploy "
    "check them against schema.sql",
}

# Files pytest itself gives a meaning to; every other non-test module in tests/ is a helper.
PYTEST_FILES = {"__init__.py", "conftest.py"}


def _subpackages() -> list[str]:
    """Every package below authsvc, dotted (``views.admin``), found by its __init__.py."""
    return sorted(
        ".".join(init.parent.relative_to(PRODUCT).parts)
        for init in PRODUCT.rglob("__init__.py")
        if init.parent != PRODUCT
    )


def _helpers() -> list[Path]:
    """The modules in tests/ that are neither test files nor pytest's own files."""
    return sorted(
        path
        for path in TESTS.rglob("*.py")
        if not path.name.startswith("test_") and path.name not in PYTEST_FILES
    )


def _product_names() -> set[str]:
    """The names authsvc's modules and packages are imported by, without their parents."""
    modules = {path.stem for path in PRODUCT.rglob("*.py") if path.name != "__init__.py"}
    return modules | {name.rsplit(".", 1)[-1] for name in _subpackages()}


@pytest.mark.parametrize("package", [p for p in _subpackages() if p not in NOT_MIRRORED])
def test_every_subpackage_has_a_test_directory_of_its_name(package: str) -> None:
    # A nested package is mirrored by its own name (views.admin -> tests/functional/admin).
    name = package.rsplit(".", 1)[-1]
    candidates = [TESTS / tier / name for tier in TIERS]
    assert any(path.is_dir() for path in candidates), (
        f"authsvc.{package} has no tests/unit/{name}/ nor tests/functional/{name}/; "
        f"put its tests there, or say in NOT_MIRRORED why they live elsewhere"
    )


def test_every_exception_names_a_real_subpackage() -> None:
    # An exception left behind by a removed or renamed package would excuse its successor.
    assert set(NOT_MIRRORED) <= set(_subpackages())


def test_every_directory_of_tests_is_a_package() -> None:
    # Test files of the same name in two directories (unit/uploads/test_uploads.py and
    # functional/uploads/test_uploads.py) import as different modules only inside packages.
    directories = {path.parent for path in TESTS.rglob("test_*.py")}
    missing = sorted(
        str(d.relative_to(ROOT)) for d in directories if not (d / "__init__.py").is_file()
    )
    assert missing == []


def test_no_helper_shares_a_name_with_a_product_module() -> None:
    product = _product_names()
    clashes = sorted(str(path.relative_to(ROOT)) for path in _helpers() if path.stem in product)
    assert clashes == [], f"rename these helpers for what they do: {clashes}"


def test_the_rules_see_the_trees_they_check() -> None:
    # Guards against a move of tests/ or authsvc/ that would make every rule above vacuous.
    assert "credentials" in _subpackages()
    assert TESTS / "processes.py" in _helpers()
    assert "services" in _product_names()
