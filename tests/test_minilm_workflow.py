"""The MiniLM workflow script (benchmarks/minilm_workflow.sh) end to end on the real PyPI MiniLM and SST-2, with
tiny steps: it checks the plumbing (convert → fine-tune → distil → ternary QAT → export → transformers reproduces
the logits), not the accuracy. Skipped when the data folder has no SST-2 or the MiniLM wheel cannot be fetched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from morphlm.data.corpora import default_cache_dir
from morphlm.data.paths import data_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_minilm_workflow_script(tmp_path):
    from morphlm.data.remote import FetchError, fetch_minilm

    sst = data_dir() / "glue-sst2"
    if not (sst / "train.tsv").is_file() or not (sst / "dev.tsv").is_file():
        pytest.skip(f"SST-2 is not at {sst} (set MORPHLM_DATA to the folder holding glue-sst2/)")
    try:
        fetch_minilm(default_cache_dir())  # the script's `convert minilm` finds it in the same cache
    except FetchError as exc:
        pytest.skip(f"the MiniLM wheel cannot be fetched: {exc}")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "TRAIN_EXAMPLES": "256", "DEV_EXAMPLES": "32", "BATCH_SIZE": "8", "SEQ_LEN": "32"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "minilm_workflow.sh"), str(tmp_path / "work"), "12"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "added a fresh masked-LM head" in res.stdout
    assert "logits vs morphlm: max |diff|" in res.stdout
    for run in ("minilm", "finetuned", "student", "ternary", "hf"):
        assert (tmp_path / "work" / run / "config.json").is_file()
