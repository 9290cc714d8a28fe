"""The growth benchmark (morphlm/bench/growth.py, `morphlm bench growth`): the saving arithmetic on hand-made
curves, the summary, and tiny end-to-end runs (JSON + plot written, finished runs reused on rerun).
Correctness only: nothing here asserts a saving."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from morphlm.bench import growth as gb
from morphlm.cli import app

from clihelp import ctrl_c_in_fit


def curve(*pairs):
    return [{"step": i, "flops": float(f), "val_loss": float(v)} for i, (f, v) in enumerate(pairs)]


# ---------------------------------------------------------------------------- crossing and saving
def test_flops_to_reach_interpolates_linearly_in_flops():
    c = curve((0, 6.0), (10, 5.0), (20, 4.0), (30, 3.5))
    assert gb.flops_to_reach(c, 4.5) == pytest.approx(15.0)  # halfway between 5.0 @10 and 4.0 @20
    assert gb.flops_to_reach(c, 4.0) == pytest.approx(20.0)  # exactly on a point
    assert gb.flops_to_reach(c, 3.75) == pytest.approx(25.0)
    assert gb.flops_to_reach(c, 3.4) is None  # never reached
    # a curve that starts at or below the target reaches it at its first point (e.g. the operator's cost)
    assert gb.flops_to_reach(curve((7, 3.0), (17, 2.9)), 3.5) == 7.0
    # the FIRST crossing counts, even if the loss rises again afterwards
    assert gb.flops_to_reach(curve((0, 5.0), (10, 3.0), (20, 4.0), (30, 2.0)), 3.5) == pytest.approx(7.5)


def test_saving_numbers_with_and_without_source():
    s = gb.saving_numbers(40.0, 100.0, source_flops=30.0)
    assert s["reached"] is True
    assert s["saving"] == pytest.approx(0.6) and s["speedup"] == pytest.approx(2.5)
    assert s["flops_to_target_incl_source"] == pytest.approx(70.0)
    assert s["saving_incl_source"] == pytest.approx(0.3)
    assert s["speedup_incl_source"] == pytest.approx(100 / 70)
    # a source more expensive than the saving makes the method a loser once its cost counts
    assert gb.saving_numbers(40.0, 100.0, source_flops=80.0)["saving_incl_source"] == pytest.approx(-0.2)
    n = gb.saving_numbers(None, 100.0, 30.0)
    assert n["reached"] is False and n["saving"] is None and n["saving_incl_source"] is None and n["speedup"] is None


def _rec(arm, c, source_flops=0.0):
    return {"arm": arm, "curve": c, "final_val_loss": c[-1]["val_loss"], "train_flops": c[-1]["flops"],
            "initial_val_loss": c[0]["val_loss"], "source_flops": source_flops}


def _hand_runs():
    scratch = {0: _rec("scratch", curve((0, 8), (50, 5), (100, 4.0))),
               1: _rec("scratch", curve((0, 8), (50, 5), (100, 4.2)))}
    good = {0: _rec("good", curve((0, 4.5), (50, 3.5), (100, 3.0)), 20.0),     # reaches 4.0 at 25
            1: _rec("good", curve((0, 4.6), (50, 4.0), (100, 3.9)), 20.0)}     # reaches 4.2 at ~33.3
    flaky = {0: _rec("flaky", curve((0, 5.0), (50, 3.9), (100, 3.8)), 5.0),    # reaches
             1: _rec("flaky", curve((0, 5.0), (50, 4.5), (100, 4.3)), 5.0)}    # misses 4.2
    loser = {0: _rec("loser", curve((0, 9), (100, 4.5))), 1: _rec("loser", curve((0, 9), (100, 4.6)))}
    return {"scratch": scratch, "good": good, "flaky": flaky, "loser": loser}


def test_analyse_and_summary_structure():
    methods = gb.analyse(_hand_runs())
    g = methods["good"]
    c1 = 50 * (4.6 - 4.2) / (4.6 - 4.0)
    assert g["reached"] is True and g["reached_seeds"] == 2 and g["seeds"] == [0, 1]
    assert g["per_seed"]["0"]["flops_to_target"] == pytest.approx(25.0)
    assert g["per_seed"]["1"]["flops_to_target"] == pytest.approx(c1)
    assert g["saving"] == pytest.approx(((1 - 25 / 100) + (1 - c1 / 100)) / 2)
    assert g["saving_std"] == pytest.approx(abs((1 - 25 / 100) - (1 - c1 / 100)) / math.sqrt(2))
    assert g["saving_incl_source"] == pytest.approx(((1 - 45 / 100) + (1 - (c1 + 20) / 100)) / 2)
    assert g["speedup"] == pytest.approx((100 / 25 + 100 / c1) / 2)
    assert g["final_val_loss"] == pytest.approx(3.45)
    f = methods["flaky"]  # missed the target in one seed: reported, but no mean saving
    assert f["reached"] is False and f["reached_seeds"] == 1 and f["saving"] is None
    assert f["per_seed"]["0"]["reached"] and not f["per_seed"]["1"]["reached"]
    assert methods["loser"]["reached"] is False and methods["loser"]["saving"] is None
    assert methods["scratch"]["saving"] == pytest.approx(0.0)

    s = gb.summarise(methods, [0, 1], "books")
    assert s["best_method"] == "good" and s["best_saving"] == pytest.approx(g["saving"])
    assert s["best_saving_incl_source"] == pytest.approx(g["saving_incl_source"])
    assert s["seeds"] == 2 and s["corpus"] == "books" and s["not_reached"] == ["flaky", "loser"]

    table = gb.markdown_table({"methods": methods, "summary": s, "arms": {"good": {"source": "half-depth"}}})
    lines = table.splitlines()
    assert lines[0].startswith("| method |") and lines[2].startswith("| scratch |")
    assert lines[3].startswith("| good | half-depth |")  # best first
    assert "not reached (1/2 seeds)" in table and "not reached (0/2 seeds)" in table


def test_no_scratch_or_unknown_method_is_a_clear_error():
    with pytest.raises(gb.BenchError, match="scratch"):
        gb.analyse({"good": _hand_runs()["good"]})
    with pytest.raises(gb.BenchError, match="unknown method"):
        gb.select_arms(["stack", "nope"])
    arms, _ = gb.select_arms(["stack"])
    assert [a.name for a in arms] == ["scratch", "stack"]


# ---------------------------------------------------------------------------- end to end
def _tiny(**changes):
    base = dict(corpus="stdlib", max_bytes=250_000, vocab_size=512, seq_len=32, batch_size=4, eval_batches=2,
                target=dict(d_model=32, n_layers=2, n_heads=2), sources={"half-depth": dict(n_layers=1),
                                                                         "half-width": dict(d_model=16, n_heads=1)},
                steps=8, warmup_steps=2, eval_every=4, operator_steps=2, seeds=[0],
                methods=["stack", "msg", "ligo"])
    base.update(changes)
    return gb.GrowthBenchConfig(**base)


def test_end_to_end_json_plot_and_cache_reuse(tmp_path, monkeypatch):
    cfg = _tiny()
    out, work = tmp_path / "res" / "growth.json", tmp_path / "work"
    res = gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000 and data["plot"].endswith("growth.png")
    for key in ("machine", "torch", "commit", "timestamp", "summary", "config", "methods", "runs", "protocol"):
        assert key in data, key
    s = data["summary"]
    assert set(s) >= {"best_method", "best_saving", "best_saving_incl_source", "seeds", "corpus"}
    assert s["seeds"] == 1 and s["corpus"] == "stdlib"
    assert set(data["methods"]) == {"scratch", "stack", "msg", "ligo"}
    assert data["data"]["split_mode"] == "documents" and data["data"]["n_val_docs"] >= 1
    for arm, by_seed in data["runs"].items():
        rec = by_seed["0"]
        assert [p["step"] for p in rec["curve"]] == [0, 4, 8], arm  # before training + every eval_every
        flops = [p["flops"] for p in rec["curve"]]
        assert flops == sorted(flops)
        assert rec["final_val_loss"] == rec["curve"][-1]["val_loss"]
        if arm == "scratch":
            assert rec["source_flops"] == 0 and rec["operator_flops"] == 0
        else:
            assert rec["source_flops"] > 0
    assert data["runs"]["ligo"]["0"]["operator_flops"] > 0  # the operator's fitting is counted
    assert data["runs"]["ligo"]["0"]["curve"][0]["flops"] == data["runs"]["ligo"]["0"]["operator_flops"]
    # the same target data and eval set for every arm: the scratch init loss is near ln(V) and MSG at mask 0
    # starts at its source's loss (it is exactly the source function)
    msg = data["runs"]["msg"]["0"]
    assert msg["initial_val_loss"] == pytest.approx(msg["source_val_loss"], abs=1e-4)
    # the results are consistent with the per-seed arithmetic
    for arm, m in data["methods"].items():
        ps = m["per_seed"]["0"]
        assert ps["target_loss"] == data["runs"]["scratch"]["0"]["final_val_loss"]
        assert m["saving"] == (ps["saving"] if m["reached"] else None)
    assert gb.markdown_table(data).count("\n") >= 6

    # rerun: every (arm, seed) and source comes from the cache, nothing trains
    import morphlm.train.loop as loop

    def boom(*a, **k):
        raise AssertionError("fit() called on a cached rerun")

    monkeypatch.setattr(loop, "fit", boom)
    res2 = gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    assert res2["runs"] == json.loads(json.dumps(res["runs"]))
    assert res2["methods"]["stack"]["per_seed"] == res["methods"]["stack"]["per_seed"]


def test_ctrl_c_stops_the_run_writes_nothing_and_the_rerun_continues(tmp_path, monkeypatch):
    """A real SIGINT during the first training run (a source's pretraining): the benchmark ends with
    BenchInterrupted (a KeyboardInterrupt) and writes no results JSON; the source keeps its resumable state
    and the same call then finishes."""
    import morphlm.train.loop as loop
    from morphlm.bench import runner

    cfg = _tiny(methods=["stack"])
    out, work = tmp_path / "res" / "growth.json", tmp_path / "work"
    fired, real_fit = ctrl_c_in_fit(monkeypatch, step=2)
    with pytest.raises(runner.BenchInterrupted, match="rerun"):
        gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1, plot=False)
    assert fired == [2] and not out.exists()
    assert not list((work / "arms").glob("*.json"))  # nothing cut short is cached
    sources = list((work / "sources").iterdir())
    assert len(sources) == 1 and not (sources[0] / "DONE").exists()  # resumable state, not a finished source
    monkeypatch.setattr(loop, "fit", real_fit)
    res = gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1, plot=False)
    assert set(res["methods"]) == {"scratch", "stack"} and (sources[0] / "DONE").exists()


def test_cli_quick_sized_run_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHLM_RESULTS", str(tmp_path / "results"))
    runner = CliRunner()
    args = ["bench", "growth", "--quick", "--corpus", "stdlib", "--max-bytes", "250000", "--steps", "6",
            "--methods", "fpi", "--work-dir", str(tmp_path / "w"), "--workers", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = tmp_path / "results" / "growth-quick.json"
    data = json.loads(out.read_text())
    assert data["config"]["quick"] is True and data["summary"]["seeds"] == 1
    assert set(data["methods"]) == {"scratch", "fpi"}
    assert (tmp_path / "results" / "growth-quick.png").is_file()
    assert "| method |" in res.output
    tab = runner.invoke(app, ["bench", "growth", "--quick", "--table"])
    assert tab.exit_code == 0 and "| fpi | half-width |" in tab.output
    bad = runner.invoke(app, ["bench", "growth", "--quick", "--methods", "nope", "--work-dir", str(tmp_path / "w")])
    assert bad.exit_code == 2 and "unknown method" in bad.output


# ---------------------------------------------------------------------------- the demo (the growth story)
def test_demo_best_method_from_results(tmp_path):
    from morphlm import demo

    assert demo.best_growth_method(tmp_path / "missing.json")[0] == demo.DEFAULT_METHOD
    res = {"summary": {"best_method": "mslt"}, "methods": {
        "scratch": {"saving": 0.0}, "mslt": {"saving": 0.8}, "msg": {"saving": 0.6}, "fpi": {"saving": 0.4},
        "aki": {"saving": None}}}
    path = tmp_path / "growth.json"
    path.write_text(json.dumps(res))
    method, why = demo.best_growth_method(path)
    assert method == "msg" and "mslt" in why  # a schedule is not a growth operator: the best operator is used


def test_demo_tiny_run_and_resume(tmp_path, monkeypatch):
    from morphlm import demo

    monkeypatch.setattr(demo, "DEMO_TARGET", dict(d_model=32, n_layers=2, n_heads=2, vocab_size=512, max_seq_len=32))
    monkeypatch.setattr(demo, "DEMO_DATA", dict(corpus="stdlib", max_bytes=250_000, seq_len=32, batch_size=4,
                                                eval_batches=2))
    monkeypatch.setattr(demo, "SOURCES", {"half-depth": dict(n_layers=1), "half-width": dict(d_model=16, n_heads=1)})
    out = tmp_path / "demo"
    s = demo.run_demo(out, steps=30, method="msg")
    saved = json.loads((out / "summary.json").read_text())
    assert saved["method"] == "msg" and (out / "growth.png").stat().st_size > 1000
    for d in ("source", "grown-msg", "scratch"):
        assert (out / d / "model.safetensors").is_file()
    assert s["scratch_flops"] > 0 and s["source_flops"] > 0
    assert (s["saving"] is None) == (not s["reached"])
    steps_before = [json.loads((out / d / "state" / "trainer.json").read_text())["step"] for d in ("grown-msg", "scratch")]
    assert steps_before == [10, 10]
    s2 = demo.run_demo(out, steps=30, method="msg")  # a rerun reuses the finished runs
    assert s2["grown_val_loss"] == s["grown_val_loss"] and s2["scratch_val_loss"] == s["scratch_val_loss"]
