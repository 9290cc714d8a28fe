"""The layer order of DESIGN as a test: the import-linter contracts in pyproject.toml ([tool.importlinter])."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> int:
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the contracts name the package as it lies in this checkout
    try:
        return cli.lint_imports(config_filename=str(config), no_cache=True)
    finally:
        os.chdir(cwd)


def test_import_contracts_hold():
    assert _lint(ROOT / "pyproject.toml") == 0, "an import points up the layers or closes a cycle (see above)"


def test_the_contract_catches_an_upward_import(tmp_path):
    """The same contracts fail on a copy of the package in which model/ imports from train/."""
    import shutil

    pkg = tmp_path / "morphlm"
    shutil.copytree(ROOT / "morphlm", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    bad = pkg / "model" / "upward.py"
    bad.write_text("from ..train import loop  # noqa: F401\n", encoding="utf-8")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    cli = pytest.importorskip("importlinter.cli")
    import sys

    cwd = os.getcwd()
    os.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    saved = {k: v for k, v in sys.modules.items() if k == "morphlm" or k.startswith("morphlm.")}
    try:
        for k in saved:
            del sys.modules[k]
        assert cli.lint_imports(config_filename=str(tmp_path / "pyproject.toml"), no_cache=True) == 1
    finally:
        os.chdir(cwd)
        sys.path.remove(str(tmp_path))
        for k in [k for k in sys.modules if k == "morphlm" or k.startswith("morphlm.")]:
            del sys.modules[k]
        sys.modules.update(saved)
