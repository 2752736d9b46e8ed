"""The pure core stays pure: no reactor, no web framework, no file system."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PURE_MODULES = [
    "spec.py", "jobs.py", "store.py", "errors.py", "query.py", "codec.py", "representations.py",
    "tokens.py", "isolation.py", "throttle.py", "slots.py", "idempotency.py", "webhookspec.py",
    "callbacks.py", "retrypolicy.py", "destinations.py", "timefmt.py", "timetable.py",
    "statushistory.py", "jobpatch.py", "slurmplan.py",
]
FORBIDDEN = ("twisted", "klein", "treq", "os", "io", "socket", "subprocess")

PACKAGE = Path(__file__).resolve().parent.parent / "cmdd"


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_io(module: str) -> None:
    """Spec validation, the state machine and queries import no I/O framework."""
    imported = _imports(module)
    assert not imported & set(FORBIDDEN), f"{module} imports {imported & set(FORBIDDEN)}"


def test_the_spawner_needs_only_the_standard_library() -> None:
    """The spawner runs as C{python -I -S} in the sandbox, possibly where cmdd's
    installation and its dependencies are not readable: stdlib only."""
    imported = _imports("spawner.py") - {"__future__"}
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_no_init_in_twisted_plugins() -> None:
    """twisted/ and twisted/plugins/ have no __init__.py (it would shadow Twisted's)."""
    root = PACKAGE.parent
    assert (root / "twisted" / "plugins" / "cmdd_plugin.py").exists()
    assert not (root / "twisted" / "__init__.py").exists()
    assert not (root / "twisted" / "plugins" / "__init__.py").exists()
