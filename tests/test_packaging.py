"""What a plain (non-editable) install gets: every module the package imports is inside
``perceptio`` or a declared dependency, every data file it reads is package data, and every
subcommand of ``perceptio`` starts (``--help``) with nothing of the source checkout but the
package on the path."""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perceptio.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "perceptio"
# Distribution name -> import name, where they differ.
IMPORT_NAME = {"pyyaml": "yaml", "scikit-learn": "sklearn", "pillow": "PIL", "perceiver-pytorch": "perceiver_pytorch"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared_imports(pyproject: dict) -> set[str]:
    """Top-level import names of the dependencies and extras in pyproject.toml."""
    project = pyproject["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    names = {re.match(r"[A-Za-z0-9_.-]+", s).group(0).lower() for s in specs}
    return {IMPORT_NAME.get(n, n.replace("-", "_")) for n in names}


def absolute_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports anywhere in a module (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_imports_only_itself_the_standard_library_and_declared_dependencies(pyproject):
    allowed = set(sys.stdlib_module_names) | declared_imports(pyproject) | {"perceptio"}
    strays = {str(p.relative_to(ROOT)): sorted(absolute_imports(p) - allowed) for p in PACKAGE.rglob("*.py")}
    strays = {k: v for k, v in strays.items() if v}
    # e.g. {'perceptio/cli/bench.py': ['benchmarks']}: a folder of the checkout, not in a wheel
    assert not strays, f"imports of neither perceptio, the standard library nor a dependency in pyproject.toml: {strays}"


def test_no_module_of_the_package_edits_sys_path():
    edits = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if re.search(r"\bsys\.path\b", p.read_text())]
    assert not edits, f"modules that reach outside the installed package through sys.path: {edits}"


def test_every_data_file_of_the_package_is_package_data(pyproject):
    patterns = pyproject["tool"]["setuptools"]["package-data"]["perceptio"]
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "expected the package's data files (the built-in experiment configs)"
    unshipped = [f for f in data if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not unshipped, f"files under perceptio/ that a wheel would leave out (add to package-data): {unshipped}"


# Imports every module of the package and asks each subcommand for --help, with only the
# package itself on the path (a copy of it in an empty directory, run from another one):
# what a non-editable install sees.
_PROBE = """
import contextlib, importlib, io, json, pkgutil, sys
import perceptio
from perceptio.cli import main
modules = [m.name for m in pkgutil.walk_packages(perceptio.__path__, "perceptio.") if not m.name.endswith("__main__")]
for name in modules:
    importlib.import_module(name)
codes = {}
for command in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            codes[command] = main([command, "--help"] if command else ["--help"])
        except SystemExit as e:
            codes[command] = e.code
    codes[command] = [codes[command], out.getvalue()]
files = {n: getattr(m, "__file__", None) or "" for n, m in sys.modules.items()}
checkout = sorted(n for n, f in files.items() if f.startswith(tuple(json.loads(sys.argv[2]))))
ours = sorted({f.partition("/perceptio/")[0] for n, f in files.items() if n.split(".")[0] == "perceptio"})
print(json.dumps({"codes": codes, "checkout": checkout, "package_at": ours, "modules": len(modules)}))
"""


@pytest.fixture(scope="module")
def installed_like(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(PACKAGE, site / "perceptio", ignore=shutil.ignore_patterns("__pycache__"))
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    # The checkout's own code (a virtual environment may live inside the checkout too, as in CI).
    checkout = json.dumps([str(ROOT / name) + os.sep for name in ("perceptio", "benchmarks", "tests")])
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(["", *COMMANDS]), checkout],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), site=str(site))


def test_every_module_imports_from_the_copy_alone(installed_like):
    assert installed_like["modules"] > 50
    assert installed_like["package_at"] == [installed_like["site"]]
    assert installed_like["checkout"] == [], "modules were imported from the source checkout"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_subcommand_help_exits_0(installed_like, command):
    code, out = installed_like["codes"][command]
    assert code == 0, out
    assert out.startswith(f"usage: perceptio {command}".rstrip())


def test_bench_parses_its_own_flags(installed_like):
    _, out = installed_like["codes"]["bench"]
    for flag in ("--quick", "--only", "--device", "--dtype", "--repeats", "--out"):
        assert flag in out


def test_a_missing_extra_is_a_one_line_error_not_a_traceback(monkeypatch, capsys, tmp_path):
    from perceptio.cli import main

    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    assert main(["train", "quickstart", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("perceptio train: error: YAML experiment configs and --set values need PyYAML: "
                           "pip install 'perceptio[train]'")
