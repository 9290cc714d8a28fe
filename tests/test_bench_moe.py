"""The MoE benchmark (morphlm/bench/moe.py, `morphlm bench moe`): the arms' matched active FLOPs, the analysis on
hand-made records, and a CI-sized end-to-end run (JSON + plot, cache reuse, Ctrl-C and resume, bad input).
Correctness only: nothing here asserts that an arm wins."""

from __future__ import annotations

import json

import pytest

from morphlm.bench import moe as mb
from morphlm.train.flops import attention_matmul_params, ffn_matmul_params, training_flops_per_token

from clihelp import check_script_is_the_cli, check_table_errors, cli, ctrl_c_in_fit

SUMMARY_KEYS = {"unipool_minus_vanilla", "reduced_pool_minus_vanilla", "loopmoe_minus_vanilla", "moe_minus_dense",
                "loss_free_max_vio", "aux_max_vio", "layer_speed_vs_hf", "simulator_mape", "seeds", "std", "goals",
                "loopmoe_minus_vanilla_at_equal_flops", "loopmoe_flops_per_token_vs_vanilla"}


# ---------------------------------------------------------------------------- the arms
@pytest.mark.parametrize("make", [mb.full_config, mb.quick_config, mb.ci_config])
def test_arms_match_active_flops_and_loopmoe_matches_total_params(make):
    cfg = make()
    cfg.validate()
    van = cfg.arm_config("vanilla")
    T = cfg.seq_len
    fpt = {a: training_flops_per_token(cfg.arm_config(a), T) for a in mb.ARMS}
    # dense: the nearest integer width to the MoE FFN's active weights (router + top-1 expert)
    assert abs(fpt["dense"] / fpt["vanilla"] - 1) < 0.01
    assert fpt["loss-free"] == fpt["vanilla"]
    # UniPool's routers choose among M experts: d·(M − E) more router weights per layer, nothing else
    L, d = cfg.n_layers, cfg.d_model
    full = cfg.arm_config("unipool")
    assert fpt["unipool"] - fpt["vanilla"] == pytest.approx(6 * L * d * (cfg.experts * L - cfg.experts))
    assert full.pool_size == cfg.experts * L  # M = 8L with 8 experts per layer
    # the reduced pool holds half of vanilla's expert parameters
    half = cfg.arm_config("unipool-half")
    assert half.pool_size * 2 == full.pool_size
    # LoopMoE by capacity balancing: L·(A + E·s) = L_b·(A + E'·s) attention + expert weights, the same top-k and
    # depth; the ruler's FLOPs differ from vanilla's by the routers (d·E' vs d·E) and IterAdaLN's W_mod (6·d²) only
    loop = cfg.arm_config("loopmoe")
    R, Lb = cfg.loop_repeats, loop.n_layers
    assert Lb * R == L and loop.moe_top_k == van.moe_top_k and loop.expert_d_ff == van.expert_d_ff
    A, s = attention_matmul_params(van), ffn_matmul_params(van, van.expert_d_ff)
    assert L * (A + cfg.experts * s) == Lb * (A + loop.moe_experts * s)
    excess = 6 * (R * Lb * d * loop.moe_experts - L * d * cfg.experts) + 6 * R * Lb * 6 * d * d
    assert fpt["loopmoe"] - fpt["vanilla"] == pytest.approx(excess)


def test_bad_settings_are_named():
    with pytest.raises(mb.BenchError, match="unknown arm"):
        mb.ci_config(arms=["nope"]).validate()
    with pytest.raises(mb.BenchError, match="loop_repeats=3 must divide n_layers=2"):
        mb.ci_config(loop_repeats=3).validate()
    with pytest.raises(mb.BenchError, match="top_k=5 is larger than experts=4"):
        mb.ci_config(top_k=5).validate()
    # a shape where capacity balancing cannot match exactly: the LoopMoE arm names the nearest expert counts
    with pytest.raises(mb.BenchError, match="arm loopmoe: .*moe_experts cannot match exactly"):
        mb.ci_config(expert_d_ff=40).validate()
    with pytest.raises(mb.BenchError, match="no seeds"):
        mb.ci_config(seeds=[]).validate()


# ---------------------------------------------------------------------------- analysis on hand-made records
def _rec(arm, seed, loss, fpt=100.0, vio=None):
    load = {k: None for k in mb.LOAD_KEYS}
    if vio is not None:
        load.update(moe_max_vio=vio, moe_cv=vio / 2, moe_dead=0.0)
    return {"arm": arm, "seed": seed, "final_val_loss": loss, "flops_per_token": fpt, "total_params": 10,
            "active_params": 5, "train_flops": fpt * 10, "tokens": 10, "load": load, "tok_per_s": 1.0,
            "precision": "bf16", "curve": [{"step": 1, "flops": fpt, "val_loss": loss}]}


def test_paired_differences_summary_and_goals_by_hand():
    runs = {"vanilla": {0: _rec("vanilla", 0, 4.00, vio=2.0), 1: _rec("vanilla", 1, 4.10, vio=1.0)},
            "unipool": {0: _rec("unipool", 0, 3.96, fpt=101.0), 1: _rec("unipool", 1, 4.04, fpt=101.0)},
            "dense": {0: _rec("dense", 0, 4.05), 1: _rec("dense", 1, 4.20)},
            "loss-free": {0: _rec("loss-free", 0, 4.0, vio=0.5), 1: _rec("loss-free", 1, 4.1, vio=0.3)}}
    arms = mb.analyse(runs)
    # paired per seed: (3.96 − 4.00, 4.04 − 4.10) = (−0.04, −0.06)
    assert arms["unipool"]["minus_vanilla"] == pytest.approx(-0.05)
    assert arms["unipool"]["minus_vanilla_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert arms["unipool"]["flops_per_token_vs_vanilla"] == pytest.approx(1.01)
    assert arms["vanilla"]["load"]["moe_max_vio"] == pytest.approx(1.5)
    s = mb.summarise(arms, [0, 1], {"layer_speed_vs_hf": 1.2}, {"mape": 20.0})
    assert set(s) == SUMMARY_KEYS
    assert s["unipool_minus_vanilla"] == pytest.approx(-0.05)
    assert s["moe_minus_dense"] == pytest.approx(-0.075)  # vanilla − dense: (−0.05, −0.10)
    assert s["loss_free_max_vio"] == pytest.approx(0.4) and s["aux_max_vio"] == pytest.approx(1.5)
    assert s["seeds"] == 2 and s["reduced_pool_minus_vanilla"] is None and s["loopmoe_minus_vanilla"] is None
    g = s["goals"]
    assert g["unipool_beats_vanilla_by_0.02"] is True and g["moe_beats_dense"] is True
    assert g["loss_free_max_vio_below_aux"] is True and g["layer_at_least_hf_speed"] is True
    assert g["simulator_mape_at_most_15"] is False and g["reduced_pool_beats_vanilla"] is None


def test_loss_at_flops_interpolates_and_loopmoe_is_compared_at_vanilla_flops_too():
    c = [{"flops": 10.0, "val_loss": 5.0}, {"flops": 20.0, "val_loss": 4.0}, {"flops": 40.0, "val_loss": 3.0}]
    assert mb.loss_at_flops(c, 15.0) == pytest.approx(4.5) and mb.loss_at_flops(c, 40.0) == 3.0
    assert mb.loss_at_flops(c, 5.0) is None and mb.loss_at_flops(c, 41.0) is None
    van = _rec("vanilla", 0, 3.5)
    van["curve"], van["train_flops"] = [{"flops": 10.0, "val_loss": 4.5}, {"flops": 20.0, "val_loss": 3.5}], 20.0
    loop = _rec("loopmoe", 0, 3.0)
    loop["curve"], loop["train_flops"] = c, 40.0  # 2x the FLOPs per token: at vanilla's 20 it stood at 4.0
    arms = mb.analyse({"vanilla": {0: van}, "loopmoe": {0: loop}})
    s = mb.summarise(arms, [0], None, None)
    assert s["loopmoe_minus_vanilla"] == pytest.approx(-0.5)
    assert s["loopmoe_minus_vanilla_at_equal_flops"] == pytest.approx(0.5)
    assert s["goals"]["loopmoe_beats_vanilla"] is True and s["goals"]["loopmoe_beats_vanilla_at_equal_flops"] is False
    assert s["loopmoe_flops_per_token_vs_vanilla"] == 1.0  # both records say 100 FLOPs/token here


def test_load_summary_averages_the_last_quarter_of_the_steps():
    recs = [{"step": i, "loss": 1.0, "moe_max_vio": float(i), "moe_cv": 0.5} for i in range(1, 9)]
    recs.append({"step": 8, "val_loss": 2.0})  # an eval-only line is not a step record
    out = mb.load_summary(recs)
    assert out["moe_max_vio"] == pytest.approx(7.5)  # steps 7 and 8
    assert out["moe_cv"] == 0.5 and out["pool0_max_vio"] is None


# ---------------------------------------------------------------------------- end to end (the CI profile)
def _ci(**changes):
    return mb.ci_config(corpus="stdlib", max_bytes=250_000, **changes)


def test_end_to_end_json_plot_cache_and_ctrl_c_resume(tmp_path, monkeypatch):
    import morphlm.train.loop as loop
    from morphlm.bench import runner

    cfg = _ci()
    out, work = tmp_path / "res" / "moe.json", tmp_path / "work"
    # a real SIGINT in the first run (LoopMoE, step 2): nothing written, its checkpoint stays, the rerun resumes it
    fired, _ = ctrl_c_in_fit(monkeypatch, step=2)
    with pytest.raises(runner.BenchInterrupted, match="rerun the same command"):
        mb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    assert fired == [2] and not out.exists() and not list((work / "arms").glob("*.json"))
    assert len(list((work / "runs").iterdir())) == 1  # the cut run's resumable state

    res = mb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    for key in ("machine", "torch", "commit", "timestamp", "summary", "config", "arms", "runs", "layer", "protocol",
                "precision"):
        assert key in data, key
    assert set(data["summary"]) == SUMMARY_KEYS and data["summary"]["seeds"] == 1
    assert data["summary"]["simulator_mape"] is None  # the CI profile skips the simulator
    assert set(data["arms"]) == set(mb.ARMS) and data["data"]["split_mode"] == "documents"
    lp = data["runs"]["loopmoe"]["0"]
    assert lp["steps"] == cfg.steps and [p["step"] for p in lp["curve"]] == [2, 4]  # resumed, whole curve
    for arm, by in data["runs"].items():
        rec = by["0"]
        assert rec["precision"] == data["precision"] and rec["tokens"] == cfg.steps * cfg.batch_size * cfg.seq_len
        assert rec["final_val_loss"] == rec["curve"][-1]["val_loss"]
        if arm != "dense":  # routing metrics from metrics.jsonl
            assert rec["load"]["moe_max_vio"] is not None and rec["load"]["moe_cv"] is not None, arm
        else:
            assert rec["load"]["moe_max_vio"] is None
    assert data["runs"]["unipool"]["0"]["load"]["pool0_max_vio"] is not None
    assert not (work / "runs").exists() or not list((work / "runs").iterdir())  # finished runs are cleaned up
    # the layer benchmark: HF's Mixtral block computes the same function with our weights; every figure positive
    layer = data["layer"]
    assert layer["parity_max_abs"] and all(v < 1e-5 for v in layer["parity_max_abs"].values())
    assert set(layer["results"]) == {"fp32", "bf16"}
    assert {"ours", "ours-loop", "hf-eager"} <= set(layer["results"]["fp32"])
    assert data["summary"]["layer_speed_vs_hf"] == layer["speed_vs_hf"]["bf16"] > 0
    assert mb.markdown_table(data).count("\n") >= 9

    # rerun: every run and measurement from the cache, nothing trains or times
    import morphlm.bench.moe_layer as ml

    def boom(*a, **k):
        raise AssertionError("recomputed on a cached rerun")

    monkeypatch.setattr(loop, "fit", boom)
    monkeypatch.setattr(ml, "layer_benchmark", boom)
    res2 = mb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1, plot=False)
    assert res2["arms"] == json.loads(json.dumps(res["arms"]))


def test_cli_bad_input_writes_nothing_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHLM_RESULTS", str(tmp_path / "results"))
    bad = cli("bench", "moe", "--quick", "--arms", "vanilla,nope", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "unknown arm(s) ['nope']" in bad.output
    bad = cli("bench", "moe", "--quick", "--seeds", "0", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "--seeds 0" in bad.output
    bad = cli("bench", "moe", "--quick", "--precision", "fp16", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "precision='fp16'" in bad.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "w").exists()
    check_table_errors("moe", tmp_path)


def test_layer_benchmark_matches_hf_top2_and_caps_batched_mm(monkeypatch):
    import morphlm.bench.moe_layer as ml

    monkeypatch.setattr(ml, "BATCHED_MM_MAX_BYTES", 0)
    r = ml.layer_benchmark(64, 16, 16, 4, 2, repeats=1, dtypes=("fp32",))
    # top-2 with renormalised gates: our softmax router computes Mixtral's function with the same weights
    assert set(r["parity_max_abs"]) == {"hf-eager", "hf-grouped_mm"}
    assert all(v < 1e-5 for v in r["parity_max_abs"].values()) and r["output_abs_mean"] > 1e-4
    assert "hf-batched_mm" not in r["results"]["fp32"] and any("batched_mm: not run" in n for n in r["notes"])
    assert r["layer_speed_vs_hf"] is None and r["speed_vs_hf"]["fp32"] > 0  # no bf16 timed: no goal figure


def test_script_is_the_cli(tmp_path, capsys):
    check_script_is_the_cli("moe", tmp_path, capsys)
