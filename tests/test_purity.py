"""The pure core stays pure: no reactor, no web framework, no file system."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PURE_MODULES = [
    "spec.py", "jobs.py", "store.py", "errors.py", "query.py", "codec.py", "representations.py",
    "tokens.py", "throttle.py",
]
FORBIDDEN = ("twisted", "klein", "treq", "os", "io", "socket", "subprocess")

PACKAGE = Path(__file__).resolve().parent.parent / "cmdd"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_io(module: str) -> None:
    """Spec validation, the state machine and queries import no I/O framework."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & set(FORBIDDEN), f"{module} imports {imported & set(FORBIDDEN)}"


def test_no_init_in_twisted_plugins() -> None:
    """twisted/ and twisted/plugins/ have no __init__.py (it would shadow Twisted's)."""
    root = PACKAGE.parent
    assert (root / "twisted" / "plugins" / "cmdd_plugin.py").exists()
    assert not (root / "twisted" / "__init__.py").exists()
    assert not (root / "twisted" / "plugins" / "__init__.py").exists()
