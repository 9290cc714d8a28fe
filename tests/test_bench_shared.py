"""The pieces the benchmarks share (morphlm/bench/common.py, morphlm/bench/runner.py, morphlm/commands/bench_options.py):
the config checks, the results writer, the worker setup, the command options and steps — one implementation behind
`morphlm bench moe | switch-attn | dssn | gmap | growth`. Fast: nothing here trains."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from morphlm.bench.common import check_run_settings, store_meta, write_results
from morphlm.commands.bench_options import comma_list, config_changes

from clihelp import check_table_errors


@dataclass
class _Cfg:
    profile: str = "quick"
    steps: int = 10
    eval_every: int = 5
    precision: str = "auto"
    seeds: list = field(default_factory=lambda: [0])


class _Bad(ValueError):
    pass


@pytest.mark.parametrize("change, words", [
    ({"profile": "huge"}, "choose full, quick or test"),
    ({"steps": 1}, "need steps >= 2"),
    ({"eval_every": 11}, "1 <= eval_every <= steps"),
    ({"seeds": []}, "--seeds N with N >= 1"),
    ({"precision": "fp8"}, "choose auto, fp32 or bf16"),
])
def test_check_run_settings_names_the_setting_and_the_fix(change, words):
    check_run_settings(_Cfg(), _Bad)  # the defaults pass
    with pytest.raises(_Bad, match=words.replace("(", r"\(")):
        check_run_settings(_Cfg(**change), _Bad)


def test_check_run_settings_without_a_curve_ignores_steps():
    check_run_settings(_Cfg(steps=1, eval_every=0), _Bad, curve=False)
    with pytest.raises(_Bad, match="no seeds"):
        check_run_settings(_Cfg(steps=1, seeds=[]), _Bad, curve=False)


def test_write_results_writes_json_before_the_plot_and_records_it(tmp_path):
    out = tmp_path / "r" / "bench.json"
    seen = {}

    def plot(results, png: Path) -> Path:
        seen["on_disk"] = json.loads(out.read_text())  # the numbers are written before the plot is drawn
        png.write_bytes(b"png")
        return png

    res = write_results(out, {"x": float("nan"), "y": 1}, plot)
    assert seen["on_disk"] == {"x": None, "y": 1}
    assert res["plot"] == str(out.with_suffix(".png"))
    assert json.loads(out.read_text()) == {"x": None, "y": 1, "plot": str(out.with_suffix(".png"))}
    plain = write_results(tmp_path / "p.json", {"y": 2})
    assert "plot" not in plain and json.loads((tmp_path / "p.json").read_text()) == {"y": 2}


def test_store_meta_takes_the_split_sizes_and_the_extras():
    class Store:
        meta = {"n_train_docs": 3, "n_val_docs": 1, "n_train_tokens": 30, "n_val_tokens": 9, "split_mode": "docs",
                "val_doc_names": ["b"], "other": 0}

    assert store_meta(Store()) == {"n_train_docs": 3, "n_val_docs": 1, "n_train_tokens": 30, "n_val_tokens": 9,
                                   "split_mode": "docs"}
    assert store_meta(Store(), "val_doc_names")["val_doc_names"] == ["b"]


def test_worker_setup_reads_the_thread_count(monkeypatch):
    import logging

    import torch

    from morphlm.bench.runner import worker_setup

    before, level = torch.get_num_threads(), logging.getLogger("morphlm").level
    try:
        monkeypatch.setenv("MORPHLM_BENCH_THREADS", "0")  # at least one thread
        worker_setup()
        assert torch.get_num_threads() == 1
        assert logging.getLogger("morphlm").level == logging.WARNING
    finally:
        torch.set_num_threads(before)
        logging.getLogger("morphlm").setLevel(level)


def test_config_changes_and_comma_list():
    assert config_changes(_Bad, None, corpus=None, steps=5) == {"steps": 5}
    assert config_changes(_Bad, 2, lr=0.1) == {"lr": 0.1, "seeds": [0, 1]}
    with pytest.raises(_Bad, match="--seeds 0: need at least 1"):
        config_changes(_Bad, 0)
    assert comma_list(" a, b,,c ") == ["a", "b", "c"]
    assert comma_list("") is None and comma_list(None) is None


def test_table_of_a_missing_or_foreign_json_names_the_fix(tmp_path):
    """--table goes through one reader (morphlm.bench.common.results_table); growth (like moe, whose test file runs
    the same check) used to end a foreign JSON in a bare KeyError. dssn and gmap are checked in their test files."""
    (tmp_path / "g").mkdir()
    check_table_errors("growth", tmp_path / "g")
    (tmp_path / "s").mkdir()
    check_table_errors("switch-attn", tmp_path / "s", "is it a `morphlm bench switch-attn` result")


def test_run_precision_fmt_and_provenance_note():
    from morphlm.bench.common import fmt, provenance_note
    from morphlm.bench.runner import run_precision

    assert run_precision([{"precision": "bf16"}, {"loss": 1.0}, {"precision": "bf16"}], "fp32") == "bf16"
    assert run_precision([{"precision": "fp32"}, {"precision": "bf16"}], "fp32") == ["bf16", "fp32"]
    assert run_precision([{"loss": 1.0}], "fp32") == ["fp32"]
    assert fmt(None) == "–" and fmt(0.12345) == "0.123" and fmt(-1.0, "+.1f") == "-1.0"
    assert provenance_note({"machine": {"cpu": "Xeon"}, "torch": "2.5", "commit": "0123456789abcdef"}) == \
        "Xeon, torch 2.5, commit 0123456789."
    assert provenance_note({}) == "torch ?, commit ?."


def test_save_plot_closes_the_figure_also_when_writing_fails(tmp_path):
    from morphlm.bench.common import pyplot, save_plot

    plt = pyplot()
    fig = plt.figure()
    png = save_plot(fig, tmp_path / "a" / "p.png")
    assert png.stat().st_size > 0 and not plt.fignum_exists(fig.number)
    (tmp_path / "file").write_text("x")
    fig = plt.figure()
    with pytest.raises(OSError):
        save_plot(fig, tmp_path / "file" / "p.png")  # its folder is a file
    assert not plt.fignum_exists(fig.number)
