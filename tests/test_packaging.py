"""Packaging: the twistd plugin ships in the wheel and twistd finds it.

Known traps this guards against (see STYLE.md): an C{__init__.py} in
C{twisted/} or C{twisted/plugins/} (it would shadow or overwrite Twisted's
own), a plugin missing from the wheel (C{find_packages()} cannot see an
C{__init__}-less directory), a heavy plugin module, and editable installs
that hide C{twisted/plugins} from twistd.

Builds work on a copy of the source tree, so they never write C{build/} or
C{*.egg-info} into the working tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")

#: Not part of the source: never copied into the build tree.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "cmdd-data",
    "bench",
)

#: "  cmdd   Run commands ..." in twistd's list of commands.
_LISTED = re.compile(r"^\s+cmdd\s+\S", re.MULTILINE)


def source_copy(destination: Path) -> Path:
    """A copy of the project's source tree (as a developer has it) to build from."""
    copy = destination / "src"
    shutil.copytree(ROOT, copy, ignore=_NOT_SOURCE, symlinks=True)
    return copy


def run(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it fails."""
    done: subprocess.CompletedProcess[str] = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel C{python -m build --wheel} makes from the source tree."""
    workdir = tmp_path_factory.mktemp("wheel")
    source = source_copy(workdir)
    out = workdir / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)], 600)
    (built,) = out.glob("cmdd-*.whl")
    with zipfile.ZipFile(built) as archive:
        archive.testzip()
        yield archive


def test_repository_has_no_init_in_twisted_or_plugins() -> None:
    """twisted/ and twisted/plugins/ have no __init__.py (it would shadow Twisted's)."""
    assert (ROOT / "twisted" / "plugins" / "cmdd_plugin.py").is_file()
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


@pytest.mark.integration
def test_wheel_ships_the_plugin_and_no_twisted_init(wheel: zipfile.ZipFile) -> None:
    """The wheel installs twisted/plugins/cmdd_plugin.py and nothing of Twisted's own."""
    names = set(wheel.namelist())
    assert "twisted/plugins/cmdd_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(name.endswith("dropin.cache") for name in names)
    twisted_files = {name for name in names if name.startswith("twisted/")}
    assert twisted_files == {"twisted/plugins/cmdd_plugin.py"}


@pytest.mark.integration
def test_wheel_ships_every_module_and_the_console_script(wheel: zipfile.ZipFile) -> None:
    """Every cmdd module, py.typed, the web console's files and the `cmdd`
    console script are in the wheel."""
    names = set(wheel.namelist())
    modules = {f"cmdd/{path.name}" for path in (ROOT / "cmdd").glob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "cmdd/py.typed" in names
    # The web console's files, which cmdd.console reads as package data.
    console = {f"cmdd/ui/{path.name}" for path in (ROOT / "cmdd" / "ui").iterdir()}
    assert {"cmdd/ui/index.html", "cmdd/ui/app.js", "cmdd/ui/app.css"} <= console <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert re.search(r"^cmdd\s*=\s*cmdd\.cli:main$", wheel.read(entry_points).decode(), re.M)


@pytest.mark.integration
def test_twistd_lists_cmdd() -> None:
    """The venv's `twistd --help` lists the cmdd plugin, and `twistd cmdd --help` works."""
    listing = run([TWISTD, "--help"], 120, cwd="/")
    assert _LISTED.search(listing.stdout), listing.stdout
    options = run([TWISTD, "cmdd", "--help"], 120, cwd="/")
    assert "--data-dir" in options.stdout and "--listen" in options.stdout


@pytest.mark.integration
def test_plugin_scan_imports_no_reactor_and_any_reactor_can_be_chosen() -> None:
    """Scanning plugins imports neither a reactor nor cmdd's code, so `twistd -r` works."""
    scan = run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = [maker.tapname for maker in getPlugins(IServiceMaker)]\n"
            "assert 'cmdd' in names, names\n"
            "assert 'twisted.internet.reactor' not in sys.modules\n"
            "assert 'cmdd.tap' not in sys.modules and 'klein' not in sys.modules\n",
        ],
        120,
        cwd="/",
    )
    assert scan.returncode == 0
    version = run([TWISTD, "--reactor=poll", "-n", "--pidfile=", "cmdd", "--version"], 120, cwd="/")
    assert version.stdout.startswith("cmdd ")


@pytest.mark.integration
@pytest.mark.parametrize(
    "install",
    [
        ["."],
        ["-e", ".", "--config-settings", "editable_mode=compat"],
    ],
    ids=["regular", "editable-compat"],
)
def test_fresh_venv_install_makes_twistd_list_cmdd(tmp_path: Path, install: list[str]) -> None:
    """`pip install .` and `pip install -e . --config-settings editable_mode=compat`
    into a fresh venv both give a twistd that lists and runs cmdd."""
    source = source_copy(tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], 120)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            *install,
        ],
        300,
        cwd=source,
        env=environment,
    )
    listing = run([str(venv / "bin" / "twistd"), "--help"], 120, cwd=tmp_path, env=environment)
    assert _LISTED.search(listing.stdout), listing.stdout
    version = run(
        [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "cmdd", "--version"],
        120,
        cwd=tmp_path,
        env=environment,
    )
    assert version.stdout.startswith("cmdd ")
    site = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import twisted.plugins, cmdd; print(cmdd.__file__); print(twisted.plugins.__file__)",
        ],
        60,
        cwd=tmp_path,
        env=environment,
    ).stdout.split()
    console = run(
        [str(venv / "bin" / "python"), "-c",
         "from cmdd.console import load_assets; print(' '.join(sorted(load_assets())))"],
        60, cwd=tmp_path, env=environment,
    ).stdout.split()  # fmt: skip
    assert {"app.css", "app.js", "index.html"} <= set(console), "the console's files"
    installed_from_source = Path(site[0]).resolve().is_relative_to(source.resolve())
    assert installed_from_source == ("-e" in install)
    twisted_own_init = Path(site[1])
    assert twisted_own_init.name == "__init__.py"
    assert not twisted_own_init.resolve().is_relative_to(source.resolve()), (
        "twisted.plugins must stay Twisted's own package"
    )
