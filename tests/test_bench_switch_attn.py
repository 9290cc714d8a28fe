"""The Switch Attention benchmark (morphlm/bench/switch_attn.py, `morphlm bench switch-attn`): the retrieval probe's
construction, the summary and goals on hand-made records, the attention timing's routing, --table, bad input and a
CI-sized end-to-end run. Correctness only: nothing here asserts that an arm wins."""

from __future__ import annotations

import json

import pytest

from morphlm.bench import switch_attn as sb

from clihelp import check_script_is_the_cli, cli

SUMMARY_KEYS = {"loss_gap_vs_full", "attn_flops_ratio", "attn_time_ratio", "retrieval_switch", "retrieval_swa",
                "retrieval_full", "seeds", "goals", "goal_notes"}


def _ci(**changes):
    return sb.ci_config(corpus="stdlib", max_bytes=250_000, **changes)


# ---------------------------------------------------------------------------- the retrieval probe
def test_probe_states_the_key_more_than_a_window_before_the_query_and_is_deterministic():
    cfg = _ci()
    tokenizer, store = sb.prepare_store(cfg, show_progress=False)
    T, w = 96, 40
    probe = sb.build_probe(tokenizer, store.val, seq_len=T, window=w, samples=12)
    assert probe == sb.build_probe(tokenizer, store.val, seq_len=T, window=w, samples=12)  # deterministic
    other = sb.build_probe(tokenizer, store.val, seq_len=T, window=w, samples=12, seed=7)
    assert [s["input_ids"] for s in other] != [s["input_ids"] for s in probe]
    assert len({s["statement"][0] for s in probe}) > 1  # the statement moves around
    for s in probe:
        ids = s["input_ids"]
        assert len(ids) == T
        start, end = s["statement"]
        key_ids = tokenizer.encode(f" {s['key']}:")
        # the statement holds key then value; the sequence ends with the query (the key) and the value
        assert ids[start:start + len(key_ids)] == key_ids
        assert ids[start + len(key_ids):start + len(key_ids) + len(s["values"])] == s["values"]
        assert ids[s["query"]:s["query"] + len(key_ids)] == key_ids
        assert s["values"] == tokenizer.encode(f" {s['value']}") and s["value"].isdigit()
        # every target logit predicts a value token that only the statement, > w tokens back, can tell
        assert [ids[t + 1] for t in s["targets"]] == s["values"] and s["targets"][-1] == T - 2
        assert s["query"] - end > w
        assert all(t - (end - 1) >= w for t in s["targets"])  # outside the window [t-w+1, t] of each target
    with pytest.raises(sb.BenchError, match="needs seq_len > window"):
        sb.build_probe(tokenizer, store.val, seq_len=40, window=30, samples=1)


class _Oracle:
    """A stand-in model whose logits pick ``input_ids[t + 1]`` (the true next token) at positions t < ``sure_until``
    and are uniform after it."""

    def __init__(self, vocab, sure_until, next_ids=None):
        from types import SimpleNamespace

        self.vocab, self.sure_until, self.next_ids = vocab, sure_until, next_ids
        self.config = SimpleNamespace(attention="full", n_layers=2)

    def eval(self):
        return self

    def switch_routers(self):
        return []

    def __call__(self, ids):
        import torch
        from types import SimpleNamespace

        B, T = ids.shape
        nxt = self.next_ids if self.next_ids is not None else torch.roll(ids, -1, dims=1)
        logits = torch.zeros(B, T, self.vocab)
        logits[:, :self.sure_until].scatter_(2, nxt[:, :self.sure_until, None], 50.0)
        return SimpleNamespace(logits=logits)


def test_evaluate_splits_the_loss_at_the_window_and_probe_accuracy_counts_value_tokens():
    import math

    import torch

    V, T, w = 11, 20, 8
    ids = torch.randint(0, V, (3, T + 1), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    # sure before t = w, uniform from t = w on: all the loss beyond the window, (T - w)/T of it overall
    ev = sb.evaluate(_Oracle(V, w, next_ids=ids[:, 1:]), [batch], w, "fp32")
    assert ev["val_loss_beyond_window"] == pytest.approx(math.log(V), abs=1e-5)
    assert ev["val_loss"] == pytest.approx(math.log(V) * (T - w) / T, abs=1e-5)
    assert ev["full_fraction_per_layer"] == [1.0, 1.0]

    cfg = _ci()
    tokenizer, store = sb.prepare_store(cfg, show_progress=False)
    probe = sb.build_probe(tokenizer, store.val, seq_len=48, window=8, samples=5)
    vocab = tokenizer.vocab_size
    assert sb.probe_accuracy(_Oracle(vocab, 48), probe, "fp32") == 1.0  # reads the answer: every value token right
    # right only before the queries: no value token is predicted (uniform logits pick token 0, a special token)
    assert all(0 not in s["values"] for s in probe)
    assert sb.probe_accuracy(_Oracle(vocab, min(s["query"] for s in probe)), probe, "fp32") == 0.0


# ---------------------------------------------------------------------------- analysis on hand-made records
def _rec(arm, seed, loss, beyond, retrieval, fractions, flops, peak=1000):
    return {"arm": arm, "seed": seed, "val_loss": loss, "val_loss_beyond_window": beyond, "retrieval": retrieval,
            "full_fraction_per_layer": fractions, "attn_flops_ratio": flops, "peak_train_bytes": peak,
            "curve": [{"step": 1, "tokens": 10, "val_loss": loss}]}


def _runs(gap=(0.01, 0.02), sw_retrieval=0.88):
    return {
        "full": {0: _rec("full", 0, 3.0, 2.9, 0.9, [1.0, 1.0], 1.0),
                 1: _rec("full", 1, 3.2, 3.1, 0.9, [1.0, 1.0], 1.0)},
        "switch-0.25": {0: _rec("switch-0.25", 0, 3.0 + gap[0], 2.95, sw_retrieval, [0.2, 0.3], 0.35),
                        1: _rec("switch-0.25", 1, 3.2 + gap[1], 3.15, sw_retrieval, [0.3, 0.4], 0.37)},
        "sliding": {0: _rec("sliding", 0, 3.1, 3.05, 0.1, [0.0, 0.0], 0.2),
                    1: _rec("sliding", 1, 3.3, 3.25, 0.1, [0.0, 0.0], 0.2)},
    }


def test_summary_and_goals_on_hand_made_records():
    arms = sb.analyse(_runs())
    sw = arms["switch-0.25"]
    assert sw["loss_gap_vs_full"] == pytest.approx(0.015)  # paired per seed
    assert sw["loss_gap_beyond_window_vs_full"] == pytest.approx(0.05)
    assert sw["full_fraction_per_layer"] == pytest.approx([0.25, 0.35]) and sw["attn_flops_ratio"] == 0.36
    timing = {"ratio_vs_full": {"full": 1.0, "switch-0.25": 0.5, "sliding": 0.3}}
    s = sb.summarise(arms, [0, 1], timing)
    assert set(s) == SUMMARY_KEYS and s["seeds"] == 2
    assert s["attn_time_ratio"] == 0.5 and s["retrieval_switch"] == 0.88 and s["retrieval_swa"] == 0.1
    assert s["retrieval_full"] == 0.9 and set(s["goals"]) == set(sb.GOALS)
    assert all(s["goals"].values())
    # every goal can fail: a bigger gap, slower attention, retrieval no better than the window
    bad = sb.summarise(sb.analyse(_runs(gap=(0.05, 0.03), sw_retrieval=0.2)), [0, 1],
                       {"ratio_vs_full": {"switch-0.25": 0.7}})
    assert bad["goals"] == {"loss_within_0.02_of_full": False, "attn_flops_at_most_40pct": True,
                            "attn_time_at_most_0.6x": False, "retrieval_far_above_swa": False,
                            "retrieval_close_to_full": False}
    # a probe the full model cannot do measures nothing: both retrieval goals None, with the reason
    floor_arms = sb.analyse(_runs(sw_retrieval=0.03))
    floor_arms["full"]["retrieval"] = 0.02
    floor_arms["sliding"]["retrieval"] = 0.02
    floor = sb.summarise(floor_arms, [0, 1], timing)
    assert floor["goals"]["retrieval_far_above_swa"] is None and floor["goals"]["retrieval_close_to_full"] is None
    assert "not measurable" in floor["goal_notes"]["retrieval"]
    assert s["goal_notes"] == {}
    # missing arms and timing: None, not a guess
    none = sb.summarise(sb.analyse({"full": _runs()["full"]}), [0, 1], None)
    assert none["loss_gap_vs_full"] is None and none["attn_time_ratio"] is None
    assert all(v is None for v in none["goals"].values())


def test_table_from_results_and_bad_results():
    arms = sb.analyse(_runs())
    results = {"arms": arms, "summary": sb.summarise(arms, [0, 1], None), "timing": {"seq_len": 1024,
               "ratio_vs_full": {"full": 1.0, "switch-0.25": 0.5}}}
    table = sb.markdown_table(results)
    assert table.count("\n| ") == 3 and "| sliding |" in table and "| — |" in table  # sliding: not timed here
    assert "attn time (T=1024)" in table and "0.50×" in table
    assert "+0.015 ± 0.007" in table and "0.25 0.35" in table
    with pytest.raises(sb.BenchError, match="no arms"):
        sb.markdown_table({"summary": {}})


# ---------------------------------------------------------------------------- timing and settings
def test_timing_routes_the_requested_fraction_beyond_the_window():
    for f in (0.25, 0.5):
        r = sb.time_attention(n_heads=2, head_dim=8, seq_len=48, window=8, fraction=f, repeats=1, batch=3)
        assert r["realised_full_fraction"] == pytest.approx(round(f * 40) / 40) and r["seconds"] > 0
    for f in (None, 0.0):  # full attention, the sliding window
        r = sb.time_attention(n_heads=2, head_dim=8, seq_len=48, window=8, fraction=f, repeats=1)
        assert r["realised_full_fraction"] is None and r["seconds"] > 0


def test_bad_settings_are_named():
    with pytest.raises(sb.BenchError, match="window=64 must be at least 1 and smaller than seq_len=64"):
        _ci(window=64).validate()
    with pytest.raises(sb.BenchError, match="include 0.25"):
        _ci(fractions=[0.1, 0.5]).validate()
    with pytest.raises(sb.BenchError, match=r"fractions \[1.0\]"):
        _ci(fractions=[0.25, 1.0]).validate()
    with pytest.raises(sb.BenchError, match="no seeds"):
        _ci(seeds=[]).validate()
    with pytest.raises(sb.BenchError, match="estimator='three'"):
        _ci(estimator="three").validate()
    for make in (sb.full_config, sb.quick_config, sb.ci_config):
        cfg = make()
        cfg.validate()
        assert cfg.arms() == ["full", "switch-0.1", "switch-0.25", "switch-0.5", "sliding"]
    full = sb.full_config()
    assert full.seq_len >= 1024 and len(full.seeds) >= 3 and full.timing_seq_len == 1024


def test_cli_bad_input_writes_nothing_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHLM_RESULTS", str(tmp_path / "results"))
    bad = cli("bench", "switch-attn", "--quick", "--seeds", "0", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "--seeds 0" in bad.output
    bad = cli("bench", "switch-attn", "--quick", "--precision", "fp16", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "precision='fp16'" in bad.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "w").exists()
    missing = cli("bench", "switch-attn", "--table", "--out", tmp_path / "none.json", code=None)
    assert missing.exit_code != 0 and "does not exist" in missing.output


# ---------------------------------------------------------------------------- end to end (the CI profile)
def test_end_to_end_json_plot_and_cached_rerun(tmp_path, monkeypatch):
    import morphlm.train.loop as loop

    cfg = _ci()
    out, work = tmp_path / "res" / "switch-attn.json", tmp_path / "work"
    res = sb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    for key in ("machine", "torch", "commit", "summary", "config", "arms", "runs", "timing", "protocol", "precision"):
        assert key in data, key
    assert set(data["summary"]) == SUMMARY_KEYS and data["summary"]["seeds"] == 1
    assert list(data["arms"]) == cfg.arms() and data["data"]["split_mode"] == "documents"
    for arm, by in data["runs"].items():
        rec = by["0"]
        assert rec["tokens"] == cfg.steps * cfg.batch_size * cfg.seq_len, arm  # the same tokens for every arm
        assert rec["val_loss"] > 0 and rec["val_loss_beyond_window"] > 0 and 0 <= rec["retrieval"] <= 1
        assert len(rec["full_fraction_per_layer"]) == cfg.n_layers and rec["peak_train_bytes"] > 0
    assert data["runs"]["sliding"]["0"]["full_fraction_per_layer"] == [0.0, 0.0]
    assert data["arms"]["sliding"]["attn_flops_ratio"] < 1.0 == data["arms"]["full"]["attn_flops_ratio"]
    assert data["runs"]["switch-0.25"]["0"]["train_full_fraction_per_layer"] is not None
    assert set(data["timing"]["ratio_vs_full"]) == set(cfg.arms()) and data["timing"]["ratio_vs_full"]["full"] == 1
    assert set(data["timing"]["ratio_vs_full_at_target"]) == {"switch-0.1", "switch-0.25", "switch-0.5"}
    # one pretrained model, shared by every arm and seed
    assert [p.name for p in (work / "pretrain").iterdir() if (p / "BENCH_DONE").is_file()] == \
        [data["runs"]["full"]["0"]["pretrained"]]
    assert "| switch-0.25 |" in sb.markdown_table(data)

    def boom(*a, **k):
        raise AssertionError("recomputed on a cached rerun")

    monkeypatch.setattr(loop, "fit", boom)
    monkeypatch.setattr(sb, "time_attention", boom)
    res2 = sb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1, plot=False)
    assert res2["arms"] == json.loads(json.dumps(res["arms"]))
    table = cli("bench", "switch-attn", "--table", "--out", out)
    assert "| sliding |" in table.output


def test_script_is_the_cli(tmp_path, capsys):
    check_script_is_the_cli("switch_attn", tmp_path, capsys)
