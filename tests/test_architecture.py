"""The shape of the code: layers imported one way only, light imports, short functions."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyro_flowebm"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# What the samplers must not drag in: ArviZ and its stack, and plotting.
HEAVY = ("arviz", "xarray", "pandas", "matplotlib")
# Most lines of code (not counting the docstring) in one function, and of one module.
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` with the contracts of pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
    )  # fmt: skip


def test_the_layer_contract_holds():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_layer_contract_catches_an_upward_import(tmp_path):
    """A copy of the package where the foundation imports the app layer breaks the contract."""
    shutil.copytree(PACKAGE, tmp_path / "pyro_flowebm", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    checks = tmp_path / "pyro_flowebm" / "core" / "checks.py"
    checks.write_text(checks.read_text() + "\nfrom ..app import config  # upward\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "Layers: each imports only the layers below it BROKEN" in result.stdout
    assert "pyro_flowebm.core.checks -> pyro_flowebm.app.config" in result.stdout


def test_the_layers_in_the_contract_are_the_packages():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert named == packages


@pytest.mark.parametrize(
    "module",
    ["pyro_flowebm", "pyro_flowebm.infer", "pyro_flowebm.distributions", "pyro_flowebm.flows"],
)
def test_samplers_distributions_and_flows_import_without_arviz_or_plotting(module):
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    loaded = set(ast.literal_eval(out))
    assert module.split(".")[0] in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def _sources(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in _sources(PACKAGE, ROOT / "benchmarks", ROOT / "examples"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module not in (None, "__future__"):
                # A private module of the package, or a private name of a module of ours
                # (the benchmarks' shared _common module is theirs to import, not its
                # private names).
                parts = node.module.split(".")
                names = [alias.name for alias in node.names]
                ours = node.level > 0 or parts[0] in ("pyro_flowebm", "_common")
                if ours and (any(map(_private, parts[1:])) or any(map(_private, names))):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        lines -= first.end_lineno - first.lineno + 1  # the docstring
    return lines


def test_functions_and_modules_are_short_enough_to_read_at_once():
    long = []
    for path in _sources(PACKAGE):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if _code_lines(node) > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long


def test_every_module_starts_with_a_one_line_docstring():
    missing = []
    for path in _sources(PACKAGE):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not doc or not doc.splitlines()[0].strip():
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, missing
