"""The tests' own layout: one helpers module, one app factory, no test module importing another."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

TESTS = ROOT / "tests"


def imported_modules(path) -> set[str]:
    """Every module ``path`` imports (absolute names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another_or_conftest():
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in TESTS.rglob("*.py")
        for module in imported_modules(path)
        if module == "tests.conftest" or module.split(".")[-1].startswith("test_")
    }
    assert sorted(offenders) == []


def test_apps_are_built_only_by_the_make_app_fixture():
    builders = {
        str(path.relative_to(ROOT))
        for path in TESTS.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "create_app"
    }
    # The schemathesis run builds one app per module (make_app is per test): the one exception.
    assert builders == {"tests/conftest.py", "tests/integration/test_openapi_conformance.py"}
