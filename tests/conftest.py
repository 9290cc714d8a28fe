"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture
def shared_data() -> Path:
    """The benchmark data folder (:func:`morphlm.data.paths.data_dir`: ``$MORPHLM_DATA``, default
    ``../shared/data`` next to the repository), or skip saying how to provide it."""
    from morphlm.data.paths import DATA_ENV, data_dir

    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"no data folder at {path}: set {DATA_ENV} to the folder that holds glue-sst2/, wikitext-2/ "
                    f"and gutenberg/")
    return path


@pytest.fixture(autouse=True, scope="session")
def _morphlm_cache(tmp_path_factory):
    """One corpus/tokenizer/token-store cache for the whole session (CI sets MORPHLM_CACHE itself)."""
    import os

    if "MORPHLM_CACHE" not in os.environ:
        os.environ["MORPHLM_CACHE"] = str(tmp_path_factory.mktemp("morphlm-cache"))
    yield
