"""The depth-scaled sandwich norm benchmark (morphlm/bench/dssn.py, `morphlm bench dssn`): the spike counter on
hand-made curves, the arms' initial gains and stds against Pangu Ultra's formulas, the summary and goals by hand, a
CI-sized end-to-end run (JSON + plot + cache reuse), --table and bad input. Correctness only: nothing here asserts
that an arm wins."""

from __future__ import annotations

import json
import math

import pytest
import torch

from morphlm.bench import dssn as db
from morphlm.model import TransformerLM

from clihelp import check_script_is_the_cli, check_table_errors, cli


# ---------------------------------------------------------------------------- the spike counter
def test_spike_counter_on_hand_made_curves():
    # a falling curve never spikes; the first step never spikes however high
    assert db.count_spikes([9.0, 5.0, 4.0, 3.9, 3.5], 0.5) == {"steps": 0, "events": 0, "at": [], "max_excess": 0.0}
    # running minimum 3.0 (reached at index 2): 3.6 exceeds it by 0.6 > 0.5, 3.4 by 0.4 does not; a two-step spike
    # (indices 6, 7) is one event
    out = db.count_spikes([5.0, 4.0, 3.0, 3.6, 3.4, 3.2, 4.5, 3.9, 3.1], 0.5)
    assert out["at"] == [3, 6, 7] and out["steps"] == 3 and out["events"] == 2
    assert out["max_excess"] == pytest.approx(1.5)
    # exactly at the margin is not a spike (strictly greater), a rise measured against the EARLIER minimum only
    assert db.count_spikes([2.0, 2.5, 2.5], 0.5)["steps"] == 0
    assert db.count_spikes([2.0, 2.5001], 0.5)["at"] == [1]
    # a relative reading of the same curve with a smaller margin catches more
    assert db.count_spikes([5.0, 4.0, 3.0, 3.6, 3.4], 0.3)["at"] == [3, 4]
    # a diverged (non-finite) step is a spike and does not move the running minimum
    nan = db.count_spikes([3.0, float("nan"), 3.2, 4.0], 0.5)
    assert nan["at"] == [1, 3] and nan["events"] == 2 and math.isinf(nan["max_excess"])
    with pytest.raises(db.BenchError, match="spike margin 0"):
        db.count_spikes([1.0, 2.0], 0)
    with pytest.raises(db.BenchError, match="spike window 0"):
        db.count_spikes([1.0, 2.0], 0.5, window=0)


def test_spike_reference_is_the_running_minimum_of_the_moving_average():
    # noisy but stable: batches alternate 3.0 / 3.7. Raw running minimum 3.0: every 3.7 (+0.7) would count;
    # the 2-step moving average's minimum is 3.35 (first full window) — 3.7 is +0.35, not a spike
    noisy = [4.0, 3.0, 3.7, 3.0, 3.7, 3.0, 3.7]
    assert db.count_spikes(noisy, 0.5)["at"] == [2, 4, 6]
    assert db.count_spikes(noisy, 0.5, window=2)["steps"] == 0
    # a real spike still counts: reference = min(4.0, 3.5, 3.35, ...) = 3.35; 4.5 exceeds it by 1.15
    out = db.count_spikes([*noisy, 4.5, 3.0], 0.5, window=2)
    assert out["at"] == [7] and out["max_excess"] == pytest.approx(1.15)
    # the first window is the mean of what there is: [4.0] -> 4.0, [4.0, 2.0] -> 3.0; 3.6 is +0.6 over 3.0
    assert db.count_spikes([4.0, 2.0, 3.6], 0.5, window=3)["at"] == [2]
    # a non-finite loss is left out of the moving average
    assert db.count_spikes([3.0, float("inf"), 3.0, 3.2], 0.5, window=2)["at"] == [1]


# ---------------------------------------------------------------------------- DSSN / TinyInit against the formulas
def test_arms_initial_gains_and_stds_match_the_formulas():
    cfg = db.full_config()
    cfg.validate()
    L, d = cfg.n_layers, cfg.d_model
    assert (L, d) == (32, 64)
    torch.manual_seed(0)
    dssn = TransformerLM(cfg.arm_config("dssn"))
    tiny = math.sqrt(1.0 / (2 * d * L))  # TinyInit: √(1/(2dL))
    for blk in dssn.blocks:
        # γ = c/√L with c_attn = 0.283, c_mlp = 0.432 on the OUTPUT norms; the input norms start at 1
        assert torch.allclose(blk.norm1_out.weight, torch.full_like(blk.norm1_out.weight, 0.283 / math.sqrt(L)))
        assert torch.allclose(blk.norm2_out.weight, torch.full_like(blk.norm2_out.weight, 0.432 / math.sqrt(L)))
        assert torch.all(blk.norm1.weight == 1) and torch.all(blk.norm2.weight == 1)
    mats = {n: p for n, p in dssn.named_parameters() if p.dim() == 2 and not n.startswith("tok_emb")}
    assert any(n.endswith("attn.proj.weight") for n in mats) and "lm_head.weight" in mats
    # every matrix (residual projections included: no GPT-2 1/√(2L) rescale under DSSN) at std √(1/(2dL))
    for name, p in mats.items():
        assert abs(p.std().item() / tiny - 1) < 0.1, (name, p.std().item(), tiny)
    pooled = torch.cat([p.flatten() for p in mats.values()])
    assert abs(pooled.std().item() / tiny - 1) < 0.01 and abs(pooled.mean().item()) < 1e-3
    assert abs(dssn.tok_emb.weight.std().item() - 0.5) < 0.01  # embedding std 0.5

    # the other arms keep the default init and unit gains: pre-norm has no output norms, sandwich's are 1
    torch.manual_seed(0)
    pre = TransformerLM(cfg.arm_config("pre"))
    assert not hasattr(pre.blocks[0], "norm1_out") or pre.blocks[0].norm1_out is None
    std = cfg.arm_config("pre").init_std
    assert abs(pre.tok_emb.weight.std().item() / std - 1) < 0.05
    proj = torch.cat([b.attn.proj.weight.flatten() for b in pre.blocks])
    assert abs(proj.std().item() / (std / math.sqrt(2 * L)) - 1) < 0.05
    sand = TransformerLM(cfg.arm_config("sandwich"))
    assert all(torch.all(b.norm1_out.weight == 1) and torch.all(b.norm2_out.weight == 1) for b in sand.blocks)
    assert {cfg.arm_config(a).norm_placement for a in db.ARMS} == {"pre", "sandwich", "dssn"}


# ---------------------------------------------------------------------------- summary and goals by hand
def _rec(arm, seed, loss, spikes):
    return {"arm": arm, "seed": seed, "final_val_loss": loss, "spike_steps": spikes, "spike_events": min(spikes, 1),
            "params": 10}


def test_summary_goals_and_not_measurable():
    runs = {"pre": {0: _rec("pre", 0, 4.0, 3), 1: _rec("pre", 1, 4.2, 0)},
            "sandwich": {0: _rec("sandwich", 0, 4.1, 1), 1: _rec("sandwich", 1, 4.1, 0)},
            "dssn": {0: _rec("dssn", 0, 3.9, 0), 1: _rec("dssn", 1, 4.2, 2)}}
    s = db.summarise(db.analyse(runs), [0, 1])
    assert set(db.SUMMARY_KEYS) <= set(s)
    assert s["spikes_pre"] == 1.5 and s["spikes_sandwich"] == 0.5 and s["spikes_dssn"] == 1.0 and s["seeds"] == 2
    assert s["dssn_minus_pre"] == pytest.approx(-0.05)  # paired: (−0.1, 0.0)
    # DSSN spikes only in seed 1, where pre-norm did not: spike-free where pre-norm spikes
    assert s["goals"] == {"dssn_spike_free_where_pre_spikes": True, "dssn_final_loss_no_worse": True}
    runs["dssn"][0] = _rec("dssn", 0, 4.3, 1)
    s = db.summarise(db.analyse(runs), [0, 1])
    assert s["goals"] == {"dssn_spike_free_where_pre_spikes": False, "dssn_final_loss_no_worse": False}
    # pre-norm never spikes: the spike goal is not measurable, with the reason
    calm = {a: {0: {**r[0], "spike_steps": 0}} for a, r in runs.items()}
    s = db.summarise(db.analyse(calm), [0])
    assert s["goals"]["dssn_spike_free_where_pre_spikes"] is None
    assert "pre-norm did not spike" in s["goal_notes"]["dssn_spike_free_where_pre_spikes"]


def test_bad_settings_are_named():
    with pytest.raises(db.BenchError, match="no seeds"):
        db.ci_config(seeds=[]).validate()
    with pytest.raises(db.BenchError, match="spike_margin=-1"):
        db.ci_config(spike_margin=-1).validate()
    with pytest.raises(db.BenchError, match="spike_window=0"):
        db.ci_config(spike_window=0).validate()
    with pytest.raises(db.BenchError, match="lr=0"):
        db.ci_config(lr=0).validate()
    with pytest.raises(db.BenchError, match="grad_clip=0"):
        db.ci_config(grad_clip=0).validate()
    with pytest.raises(db.BenchError, match="arm pre: "):
        db.ci_config(n_heads=5).validate()  # d_model 32 not divisible by 5 heads: the config's own error
    with pytest.raises(db.BenchError, match="unknown arm 'post'"):
        db.ci_config().arm_config("post")


# ---------------------------------------------------------------------------- end to end (the CI profile)
def test_end_to_end_json_plot_table_and_cache(tmp_path, monkeypatch):
    import morphlm.train.loop as loop

    cfg = db.ci_config(corpus="stdlib", max_bytes=250_000)
    out, work = tmp_path / "res" / "dssn.json", tmp_path / "work"
    res = db.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    for key in ("machine", "torch", "commit", "timestamp", "summary", "config", "arms", "runs", "protocol",
                "precision"):
        assert key in data, key
    s = data["summary"]
    assert set(db.SUMMARY_KEYS) <= set(s) and s["seeds"] == 1
    assert set(s["goals"]) == {"dssn_spike_free_where_pre_spikes", "dssn_final_loss_no_worse"}
    assert set(data["runs"]) == set(db.ARMS) and data["data"]["split_mode"] == "documents"
    for arm, by in data["runs"].items():
        rec = by["0"]
        tr = rec["trace"]
        assert tr["step"] == list(range(1, cfg.steps + 1)) and len(tr["loss"]) == cfg.steps
        assert all(g is not None and g > 0 for g in tr["grad_norm"])  # the gradient-norm trace, every step
        assert rec["spike_steps"] == db.count_spikes(tr["loss"], cfg.spike_margin, cfg.spike_window)["steps"]
        assert rec["final_val_loss"] == rec["curve"][-1]["val_loss"] and rec["config"]["norm_placement"] == arm
        assert rec["tokens"] == cfg.steps * cfg.batch_size * cfg.seq_len
    assert data["summary"]["dssn_minus_pre"] == pytest.approx(
        data["runs"]["dssn"]["0"]["final_val_loss"] - data["runs"]["pre"]["0"]["final_val_loss"])
    table = db.markdown_table(data)
    assert table.count("\n") >= 4 and "| dssn |" in table and "| pre |" in table
    printed = cli("bench", "dssn", "--table", "--out", out)
    assert "| sandwich |" in printed.output

    # rerun: every run from the cache, nothing trains
    def boom(*a, **k):
        raise AssertionError("retrained on a cached rerun")

    monkeypatch.setattr(loop, "fit", boom)
    res2 = db.run_benchmark(cfg, out_json=out, work_dir=work, workers=1, plot=False)
    assert res2["arms"] == json.loads(json.dumps(res["arms"]))


def test_same_batches_for_every_arm_of_a_seed():
    from morphlm.data.batches import LMBatches

    cfg = db.ci_config(corpus="stdlib", max_bytes=250_000)
    _, store = db.prepare_store(cfg, show_progress=False)
    a = LMBatches(store, cfg.batch_size, cfg.seq_len, seed=0, eval_batches=cfg.eval_batches)
    b = LMBatches(store, cfg.batch_size, cfg.seq_len, seed=0, eval_batches=cfg.eval_batches)
    for step in (0, 3):
        xa, xb = a.train_batch(step), b.train_batch(step)
        assert torch.equal(xa["input_ids"], xb["input_ids"]) and torch.equal(xa["labels"], xb["labels"])
    assert not torch.equal(a.train_batch(0)["input_ids"], a.train_batch(1)["input_ids"])


def test_cli_bad_input_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHLM_RESULTS", str(tmp_path / "results"))
    bad = cli("bench", "dssn", "--quick", "--seeds", "0", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "--seeds 0" in bad.output
    bad = cli("bench", "dssn", "--quick", "--precision", "fp16", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "precision='fp16'" in bad.output
    bad = cli("bench", "dssn", "--quick", "--spike-margin", "0", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "spike_margin=0" in bad.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "w").exists()
    check_table_errors("dssn", tmp_path)


def test_script_is_the_cli(tmp_path, capsys):
    check_script_is_the_cli("dssn", tmp_path, capsys)
