"""Where the benchmark data sets live: ONE place that resolves the data folder.

The data folder holds the corpora and tasks the benchmarks and some tests read (``gutenberg/``,
``wikitext-2/``, ``glue-sst2/`` ...). It is ``$MORPHLM_DATA`` when that is set, else ``../shared/data`` next
to the repository root (the folder that holds ``morphlm/``). Nothing else in the package resolves that path
(command help texts name the variable and its default in words: they load without importing torch).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MORPHLM_DATA"


def default_data_dir() -> Path:
    """``../shared/data`` next to the repository root (this file is ``<root>/morphlm/data/paths.py``)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_dir() -> Path:
    """The benchmark data folder: ``$MORPHLM_DATA`` (``~`` expanded) when set and non-empty, else
    :func:`default_data_dir`. Read at every call, so setting the variable takes effect without a re-import."""
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else default_data_dir()
