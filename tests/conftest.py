"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture
def shared_data() -> Path:
    """The benchmark data folder ``../shared/data`` next to the repository, or skip."""
    path = Path(__file__).parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not present")
    return path


@pytest.fixture(autouse=True, scope="session")
def _morphlm_cache(tmp_path_factory):
    """One corpus/tokenizer/token-store cache for the whole session (CI sets MORPHLM_CACHE itself)."""
    import os

    if "MORPHLM_CACHE" not in os.environ:
        os.environ["MORPHLM_CACHE"] = str(tmp_path_factory.mktemp("morphlm-cache"))
    yield
