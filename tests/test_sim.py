"""The cost simulator (morphlm/sim/): operator costs against measured micro-benchmarks, memory and communication
formulas by hand, the search, the scaling-law fit, validation against measured steps, and `morphlm simulate`."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
import torch
from clihelp import cli

from morphlm.model import ModelConfig
from morphlm.sim import Layout, SimError, SimModel, from_model_config, load_profile, parse_layout, step_cost
from morphlm.sim.cost import allreduce_s, memory_per_device, pipeline_bubble_fraction
from morphlm.sim.hardware import HardwareProfile, attention_time, calibrate
from morphlm.sim.scaling import CHINCHILLA, fit_scaling_law, records_from_results, scaling_law
from morphlm.sim.search import expand_space, search
from morphlm.sim.space import enumerate_layouts
from morphlm.sim.validate import validate
from morphlm.train import flops as ruler

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = {"n_layers": [2, 4], "d_model": [64, 128], "n_heads": 4, "experts": [0, 4], "top_k": [1, 2],
              "seq_len": 64, "vocab_size": 512}


@pytest.fixture(scope="module")
def measured() -> HardwareProfile:
    """A quick calibration of this CPU (one thread), done once for the module."""
    threads = torch.get_num_threads()
    try:
        return calibrate(threads=1, quick=True, repeats=3)
    finally:
        torch.set_num_threads(threads)


def _best_matmul(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(5):
        t0 = time.thread_time()
        a @ b
        best = min(best, time.thread_time() - t0)
    return best


# ------------------------------------------------------------------ operator costs vs micro-benchmarks
def test_matmul_cost_matches_measured_micro_benchmarks_in_order_and_monotonic(measured):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shapes = [(96, 96, 96), (384, 192, 192), (768, 384, 384)]  # none is a calibration shape
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            curve = measured.curve(name)
            got = [_best_matmul(*s, dt) for s in shapes]
            pred = [curve.time(*s) for s in shapes]
            for g, p in zip(got, pred):
                assert math.isfinite(p) and p > 0
                assert 1 / 4 < p / g < 4, (name, got, pred)  # same order of magnitude
            assert pred == sorted(pred) and got == sorted(got)  # more work, more time, both ways
    finally:
        torch.set_num_threads(threads)


def test_attention_cost_matches_a_measured_sdpa_in_order(measured):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        B, H, T, Dh = 3, 4, 192, 32  # not a calibration shape
        q, k, v = (torch.randn(B, H, T, Dh, requires_grad=True) for _ in range(3))

        def run():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        run()
        best = math.inf
        for _ in range(3):
            t0 = time.thread_time()
            run()
            best = min(best, time.thread_time() - t0)
        pred = attention_time(measured.attention["fp32"], B * H, T, Dh)
        assert 1 / 4 < pred / best < 4
        assert attention_time(measured.attention["fp32"], B * H, 2 * T, Dh) > pred
    finally:
        torch.set_num_threads(threads)


def test_validation_measures_held_out_steps_and_reports_the_error(measured):
    cfg = dict(d_model=32, n_layers=1, n_heads=2, vocab_size=128, max_seq_len=32)
    res = validate(measured, [("tiny", cfg, 2)], dtypes=("fp32",), steps=1)
    (row,) = res["rows"]
    assert row["measured_s"] > 0 and row["predicted_s"] > 0
    assert math.isfinite(res["mape"]) and res["mape"] == pytest.approx(100 * abs(row["error"]))
    assert 1 / 10 < row["predicted_s"] / row["measured_s"] < 10


def test_moe_layer_validation_prices_new_expert_shapes(measured):
    from morphlm.sim.cost import ffn_step_time
    from morphlm.sim.validate import validate_moe_layer

    res = validate_moe_layer(measured, [("tiny-moe", 32, 4, 2, 64, 256)], dtypes=("fp32",), steps=2)
    (row,) = res["rows"]
    assert row["measured_s"] > 0 and 1 / 10 < row["predicted_s"] / row["measured_s"] < 10
    sim = SimModel(n_layers=1, d_model=32, n_heads=1, experts=4, top_k=2, expert_d_ff=64, seq_len=256)
    hot, cold = (ffn_step_time(sim, measured, "bf16", 256, shape_miss_rate=r) for r in (0.0, 1.0))
    assert cold - hot == pytest.approx(measured.new_shape_s["bf16"] * 4)
    capped = dataclasses.replace(sim, capacity_factor=1.0)  # fixed shapes: no new-shape cost
    assert ffn_step_time(capped, measured, "bf16", 256, 1.0) == pytest.approx(ffn_step_time(capped, measured,
                                                                                              "bf16", 256, 0.0))


def test_committed_profiles_load_and_state_their_source():
    cpu = load_profile(ROOT / "morphlm" / "sim" / "profiles" / "cpu-local.json")
    assert cpu.source.startswith("measured") and cpu.date and cpu.torch and cpu.measurements
    for name, mem, bw in (("h100", 80e9, 3.35e12), ("h200", 141e9, 4.8e12)):
        prof = load_profile(name)
        assert prof.source.startswith("spec sheet") and prof.peak("bf16") == 989e12
        assert prof.memory_bytes == mem and prof.mem_bw == bw and prof.interconnect_bw == 450e9


# ------------------------------------------------------------------ shapes, FLOPs, memory, communication
def test_dense_conversion_agrees_with_the_flops_ruler():
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4, vocab_size=300, max_seq_len=48, activation="swiglu")
    sim = from_model_config(cfg)
    assert sim.matmul_params_per_token() == ruler.matmul_params(cfg)
    assert sim.training_flops_per_token() == pytest.approx(ruler.training_flops_per_token(cfg))


def test_routed_parameter_counts_by_hand():
    m = SimModel(n_layers=2, d_model=8, n_heads=2, experts=4, top_k=2, expert_d_ff=16, shared_experts=1,
                 seq_len=4, vocab_size=32, learned_positions=False)
    attn, expert, router, norms, emb = 256, 2 * 8 * 16, 8 * 4, 16, 32 * 8 + 8
    assert m.total_params() == 2 * (attn + norms + router + expert) + 2 * 4 * expert + emb
    assert m.active_params() == 2 * (attn + norms + router + 3 * expert) + emb
    pooled = dataclasses.replace(m, pool_size=6)
    assert pooled.total_params() == 2 * (attn + norms + 8 * 6 + expert) + 6 * expert + emb
    looped = dataclasses.replace(m, loop_repeats=3)
    assert looped.total_params() == m.total_params()
    assert looped.matmul_params_per_token() - 32 * 8 == 3 * (m.matmul_params_per_token() - 32 * 8)


def test_memory_per_device_by_hand():
    m = SimModel(n_layers=2, d_model=8, n_heads=2, d_ff=16, seq_len=4, vocab_size=32, learned_positions=False)
    params = 2 * ((8 * 24 + 64) + 2 * 8 * 16 + 16) + (32 * 8 + 8)  # 1320
    mem = memory_per_device(m, Layout(micro_batch_size=1), "fp32")
    assert mem["local_params"] == params == 1320
    assert (mem["params"], mem["grads"], mem["optimizer"]) == (4 * params, 4 * params, 8 * params)
    # activations: per layer p·(4·sbh + 4·sbh + 2·s·b·d_ff) = 4·(128 + 128 + 128); two layers;
    # head s·b·(3·V·4 + d·p)
    assert mem["activations"] == 2 * 4 * (128 + 128 + 128) + 4 * (3 * 32 * 4 + 8 * 4)
    assert mem["total"] == 16 * params + mem["activations"]
    tp2 = memory_per_device(m, Layout(micro_batch_size=1, tp=2), "fp32")
    assert tp2["local_params"] == 2 * ((8 * 24 + 64 + 2 * 8 * 16) / 2 + 16) + (32 * 8 + 8) / 2


def test_pipeline_bubble_and_data_parallel_all_reduce_by_hand():
    assert pipeline_bubble_fraction(4, 12) == pytest.approx(3 / 15)
    assert pipeline_bubble_fraction(1, 7) == 0.0
    h100 = load_profile("h100")
    prof = dataclasses.replace(h100, interconnect_bw=100e9, interconnect_latency_s=1e-6)
    assert allreduce_s(1e9, 8, prof) == pytest.approx(2 * 7 / 8 * 1e9 / 100e9 + 2 * 7 * 1e-6)
    assert allreduce_s(1e9, 1, prof) == 0.0
    m = SimModel(n_layers=4, d_model=256, n_heads=4, seq_len=128, vocab_size=1000)
    cost = step_cost(m, Layout(dp=4, micro_batch_size=2), prof, "bf16")
    assert cost.comm_s["dp"] == pytest.approx(allreduce_s(4 * m.total_params(), 4, prof))
    pp = step_cost(m, Layout(pp=4, micro_batches=12, micro_batch_size=2), prof, "bf16")
    assert pp.bubble_s == pytest.approx((pp.time_s - pp.optimizer_s) * 3 / 15)
    assert 0 < cost.mfu < 1 and 0 < pp.mfu < 1


# ------------------------------------------------------------------ search and scaling law
def test_search_drops_what_does_not_fit_and_sorts_by_predicted_loss():
    prof = dataclasses.replace(load_profile("h100"), memory_bytes=40e6)
    layouts = enumerate_layouts(2, global_batch=8, micro_batch_size=2)
    law = scaling_law()  # no records: Chinchilla
    res = search(TINY_SPACE, layouts, prof, law, budget_s=60.0, devices=2)
    assert res["over_memory"] > 0 and res["results"]
    assert all(r["memory_gib"] * 2**30 <= prof.memory_bytes for r in res["results"])
    losses = [r["predicted_loss"] for r in res["results"]]
    assert losses == sorted(losses)
    best = res["results"][0]
    assert best["predicted_loss"] == pytest.approx(law.loss(best["active_params"], best["tokens_in_budget"]))


def test_space_expansion_skips_invalid_models_and_dedupes_dense_ones():
    models, invalid = expand_space({"n_layers": 2, "d_model": 64, "n_heads": 4, "experts": [0, 2], "top_k": [1, 4]})
    assert invalid == 1  # experts=2, top_k=4
    assert len(models) == 2  # dense (top_k folded) and experts=2/top_k=1


def test_scaling_law_fit_recovers_known_constants():
    true = dict(E=1.8, A=300.0, B=500.0, alpha=0.3, beta=0.35)
    pts = [(n, d, true["E"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"])
           for n in (1e6, 3e6, 1e7, 3e7, 1e8) for d in (1e7, 1e8, 1e9, 1e10)]
    law = fit_scaling_law(pts, source="synthetic")
    assert law.alpha == pytest.approx(true["alpha"], abs=0.02) and law.beta == pytest.approx(true["beta"], abs=0.02)
    assert law.E == pytest.approx(true["E"], abs=0.05)
    for n, d, loss in pts:
        assert law.loss(n, d) == pytest.approx(loss, rel=2e-3)


def test_scaling_law_falls_back_to_chinchilla_and_says_why():
    growth = ROOT / "benchmarks" / "results" / "growth.json"
    records = records_from_results(growth)
    assert records and len({r[0] for r in records}) == 1  # one model size only
    law = scaling_law(results=[growth])
    assert law.source.startswith("Chinchilla") and "1 distinct model size" in law.source
    assert (law.E, law.A, law.alpha) == (CHINCHILLA["E"], CHINCHILLA["A"], CHINCHILLA["alpha"])


# ------------------------------------------------------------------ bad input
def test_bad_shapes_and_layouts_are_refused_with_the_fix():
    with pytest.raises(SimError, match="top_k=3 is larger than the 2 routed experts"):
        SimModel(experts=2, top_k=3)
    moe = SimModel(experts=8, top_k=2, n_layers=4)
    with pytest.raises(SimError, match="ep=3 does not divide the 8 routed experts"):
        Layout(dp=3, ep=3).check(moe)
    with pytest.raises(SimError, match="ep=2 must divide dp=3"):
        Layout(dp=3, ep=2)
    with pytest.raises(SimError, match="devices"):
        Layout(dp=2, tp=2).check(moe, devices=8)
    with pytest.raises(SimError, match="not key=value"):
        parse_layout("dp2")
    with pytest.raises(SimError, match="one device"):
        step_cost(moe, Layout(dp=2), load_profile("cpu-local"), "fp32")
    with pytest.raises(SimError, match="unknown hardware 'tpu'"):
        load_profile("tpu")


# ------------------------------------------------------------------ CLI
def test_simulate_help_lists_its_options():
    out = cli("simulate", "--help").output
    for flag in ("--hardware", "--space", "--layout", "--devices", "--top", "--json", "--validate", "--calibrate"):
        assert flag in out


def test_simulate_writes_ranked_json(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    out = tmp_path / "sim.json"
    res = cli("simulate", "--hardware", "h200", "--space", space, "--devices", 4, "--global-batch", 16,
              "--micro-batch-size", 2, "--top", 3, "--hours", 0.1, "--out", out)
    assert "wrote" in res.output and "dp" in res.output
    doc = json.loads(out.read_text())
    assert len(doc["top"]) == 3 and doc["scaling_law"]["source"]
    losses = [r["predicted_loss"] for r in doc["results"]]
    assert losses == sorted(losses) and all(r["layout"]["dp"] * r["layout"]["tp"] * r["layout"]["pp"] == 4
                                            for r in doc["results"])
    js = cli("simulate", "--hardware", "cpu-local", "--space", space, "--top", 2, "--json", "--out",
             tmp_path / "cpu.json")
    assert len(json.loads(js.stdout)["top"]) == 2  # the committed-profile note goes to stderr


@pytest.mark.parametrize("args, message", [
    (["--hardware", "tpu"], "unknown hardware 'tpu'"),
    (["--hardware", "h100", "--devices", 8, "--layout", "dp=2,tp=2"], "4 devices, not --devices 8"),
    (["--hardware", "h100", "--layout", "dp=6,ep=3"], "ep=3 does not divide"),
    (["--layout", "dp=2"], "is one device"),
])
def test_simulate_bad_input_errors_and_writes_nothing(tmp_path, args, message):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**TINY_SPACE, "experts": 8}))
    out = tmp_path / "sim.json"
    res = cli("simulate", "--space", space, "--out", out, *args, code=2)
    assert message in " ".join(res.output.split())
    assert not out.exists()


def test_simulate_validate_quick_writes_the_error(tmp_path):
    out = tmp_path / "val.json"
    res = cli("simulate", "--validate", "--quick", "--out", out)
    assert "MAPE" in res.stdout
    full = json.loads(out.read_text())
    doc, moe = full["validation"], full["moe_layer_validation"]
    assert len(doc["rows"]) == 4 and math.isfinite(doc["mape"]) and doc["mape"] >= 0
    assert len(moe["rows"]) == 4 and math.isfinite(moe["mape"])
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in doc["rows"] + moe["rows"])
    assert all(0 <= r["new_shape_rate"] <= 1 for r in moe["rows"])
    res = cli("simulate", "--validate", "--hardware", "h100", "--out", tmp_path / "no.json", code=2)
    assert "--hardware cpu-local" in res.output and not (tmp_path / "no.json").exists()


# ------------------------------------------------------------------ routed shapes, layouts, records
def test_routed_costs_move_the_right_way():
    prof = load_profile("h100")
    base = SimModel(n_layers=4, d_model=512, n_heads=8, experts=8, top_k=1, expert_d_ff=1024, seq_len=512,
                    vocab_size=4096)
    lay = Layout(dp=8, micro_batch_size=4)
    t1 = step_cost(base, lay, prof).breakdown["experts"]
    t2 = step_cost(dataclasses.replace(base, top_k=2), lay, prof).breakdown["experts"]
    tc = step_cost(dataclasses.replace(base, capacity_factor=1.25), lay, prof).breakdown["experts"]
    assert t2 > t1 and tc > t1
    ep = step_cost(base, dataclasses.replace(lay, ep=8), prof)
    assert ep.comm_s["ep"] > 0 and step_cost(base, lay, prof).comm_s["ep"] == 0
    assert ep.memory["local_params"] < step_cost(base, lay, prof).memory["local_params"]
    tp = step_cost(base, dataclasses.replace(lay, dp=4, tp=2), prof)
    assert tp.comm_s["tp"] > 0
    pooled = dataclasses.replace(base, experts=0, pool_size=16)
    assert pooled.total_params() < base.total_params()  # 16 pooled experts instead of 4·8
    with pytest.raises(SimError, match="looped stack"):
        Layout(pp=2).check(dataclasses.replace(base, loop_repeats=2))
    with pytest.raises(SimError, match="needs routed experts"):
        Layout(dp=2, ep=2).check(SimModel())


def test_enumerated_layouts_use_every_device_and_the_global_batch():
    lays = enumerate_layouts(8, global_batch=32, micro_batch_size=2)
    assert lays and {(x.dp, x.tp, x.pp) for x in lays} >= {(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)}
    for x in lays:
        assert x.devices == 8 and x.dp % x.ep == 0 and x.global_batch == 32


def test_space_ranges_expand():
    models, _ = expand_space({"n_layers": {"from": 2, "to": 8, "times": 2}, "d_model": {"from": 64, "to": 192,
                                                                                          "step": 64}})
    assert sorted({m.n_layers for m in models}) == [2, 4, 8] and sorted({m.d_model for m in models}) == [64, 128, 192]
    with pytest.raises(SimError, match="a range is"):
        expand_space({"n_layers": {"from": 2, "upto": 8}})


def test_scaling_records_of_any_results_file_are_read(tmp_path):
    pts = [{"params": n, "tokens": d, "loss": 2 + 100 / n ** 0.3 + 300 / d ** 0.3}
           for n in (1e5, 1e6, 1e7) for d in (1e6, 1e7, 1e8)]
    path = tmp_path / "moe.json"
    path.write_text(json.dumps({"benchmark": "moe", "scaling_records": pts}))
    law = scaling_law(results=[path])
    assert law.source.startswith("fitted to 9") and law.alpha == pytest.approx(0.3, abs=0.02)
    path.write_text(json.dumps({"scaling_records": [{"params": 1}]}))
    with pytest.raises(SimError, match=r"scaling_records\[0\] needs numeric params, tokens and loss"):
        records_from_results(path)


def test_scaling_law_fits_records_of_run_folders(tmp_path):
    from morphlm.model import TransformerLM

    true = dict(E=2.0, A=50.0, B=200.0, alpha=0.3, beta=0.3)
    runs = []
    for i, d in enumerate((32, 64, 128)):
        cfg = ModelConfig(d_model=d, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=32)
        with torch.device("meta"):
            n = TransformerLM(cfg).num_parameters()
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "config.json").write_text(cfg.to_json())
        lines = [json.dumps({"step": s, "tokens": s * 4096, "loss": 9.0}) for s in (10, 20)]  # train lines: skipped
        lines += [json.dumps({"step": s, "tokens": s * 4096, "val_loss": true["E"] + true["A"] / n ** 0.3
                              + true["B"] / (s * 4096) ** 0.3}) for s in (10, 40, 160, 640)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        runs.append(run)
    law = scaling_law(runs=runs)
    assert law.source.startswith("fitted to 12") and law.n_points == 12
    assert law.beta == pytest.approx(0.3, abs=0.03)
    with pytest.raises(SimError, match="metrics.jsonl and config.json"):
        scaling_law(runs=[tmp_path])


def test_activation_memory_matches_korthikanti_without_dropout_masks():
    """Korthikanti et al. 2022 eq. (2)/(4) at 16 bits, fused attention (no a·s² term) and no dropout (their two
    1-byte s·b·h masks gone): 32·sbh per layer, and (8 + 24/t)·sbh under tensor parallelism without SP."""
    m = SimModel(n_layers=1, d_model=64, n_heads=4, seq_len=32, vocab_size=8)
    b, sbh = 2, 2 * 32 * 64
    head = b * 32 * (3 * 8 * 4 + 64 * 2)
    assert memory_per_device(m, Layout(micro_batch_size=b), "bf16")["activations"] == 32 * sbh + head
    head2 = b * 32 * (3 * 8 / 2 * 4 + 64 * 2)
    assert memory_per_device(m, Layout(micro_batch_size=b, tp=2), "bf16")["activations"] == (8 + 24 / 2) * sbh + head2


def test_tensor_and_expert_parallel_communication_by_hand():
    from morphlm.sim.cost import alltoall_s

    prof = dataclasses.replace(load_profile("h100"), interconnect_bw=100e9, interconnect_latency_s=2e-6)
    assert alltoall_s(8e6, 4, prof) == pytest.approx(3 / 4 * 8e6 / 100e9 + 3 * 2e-6)
    m = SimModel(n_layers=2, d_model=128, n_heads=4, experts=8, top_k=2, expert_d_ff=256, seq_len=64,
                 vocab_size=512)
    n_bytes = 4 * 64 * 128 * 2  # b·s·d activations in bf16
    tp = step_cost(m, Layout(dp=2, tp=2, micro_batch_size=4), prof)
    assert tp.comm_s["tp"] == pytest.approx((4 * 2 + 2) * allreduce_s(n_bytes, 2, prof))
    ep = step_cost(m, Layout(dp=4, ep=4, micro_batch_size=4), prof)
    assert ep.comm_s["ep"] == pytest.approx(4 * 2 * alltoall_s(n_bytes * 2, 4, prof))
