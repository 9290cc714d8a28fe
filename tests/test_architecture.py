"""The layer order of DESIGN as a test: the import-linter contracts in pyproject.toml ([tool.importlinter]).

import-linter runs in a child interpreter: in-process it reconfigures logging (disabling the loggers other tests
capture) and it must see the package copy under test first on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports over the package and pyproject.toml found in ``root``."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code, str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    res = _lint(ROOT)
    assert res.returncode == 0, f"an import points up the layers or closes a cycle:\n{res.stdout[-4000:]}"
    assert "2 kept, 0 broken" in res.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The same contracts fail on a copy of the package in which model/ imports from train/."""
    shutil.copytree(ROOT / "morphlm", tmp_path / "morphlm", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "morphlm" / "model" / "upward.py").write_text("from ..train import loop  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    res = _lint(tmp_path)
    assert res.returncode == 1 and "morphlm.model.upward -> morphlm.train.loop" in res.stdout, res.stdout[-4000:]
