"""`morphlm bench trigo` (morphlm/bench/trigo.py): part A end to end on the real TG-REAL step files at CI size,
part B's bookkeeping (pass@k per cell, stops, cache) on a stand-in environment, the summary and goals by hand,
--table, and bad input. Correctness only: nothing here asserts that a predictor or searcher wins."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from morphlm.bench import trigo as tb
from morphlm.reason import prover as pv

from clihelp import cli

DATA = Path(tb.default_data())
needs_data = pytest.mark.skipif(not (DATA / "TG-REAL" / "train_raw_299_new.txt").is_file(),
                                reason="the TRIGO data folder ($MORPHLM_DATA/trigo) is not here")


# ---------------------------------------------------------------------------- a stand-in gym for part B
@dataclass
class _Stmt:
    name: str
    target: int


class CountEnv:
    """States are integers from 1; '+1' and '*2'; a statement is closed at its target."""

    def start(self, st):
        if st.target < 0:
            raise ValueError("cannot hold a negative target")
        self.target = st.target
        return 1

    def actions(self, s):
        return ["+1", "*2"]

    def step(self, s, a):
        if a == "+1":
            return s + 1
        if a == "*2":
            return s * 2
        raise ValueError(a)

    def is_closed(self, s):
        return s == self.target

    def state_text(self, s):
        return f"{s} -> {self.target}"

    def action_text(self, a):
        return a

    def parse_action(self, text):
        if text not in ("+1", "*2"):
            raise ValueError(text)
        return text

    def generated_problems(self, n, seed):
        self.target = 10**9
        return [(1, ["+1", "*2"])] * n


def _fake_subsets(monkeypatch):
    problems = {"tg1": [_Stmt("a", 2), _Stmt("b", 64)], "tg2": [_Stmt("c", 3), _Stmt("d", -1)],
                "real": [_Stmt("e", 4)]}
    monkeypatch.setattr(tb, "load_subset", lambda cfg, subset: (problems[subset][: cfg.limit],
                                                                {"kept": 2, "skipped": 0, "used": 2}))
    monkeypatch.setattr(pv, "trigo_env", CountEnv)


@needs_data
def test_part_b_cells_pass_at_k_and_cache(tmp_path, monkeypatch):
    _fake_subsets(monkeypatch)
    cfg = tb.ci_config(parts=["prover"], searchers=["bfs", "heuristic", "lm"], max_expansions=3, width=None,
                       problems=None, subsets=["tg1", "tg2"])
    cfg.policy = {**cfg.policy, "max_target_tokens": 6}
    res = tb.run_benchmark(cfg, out_json=tmp_path / "t.json", work_dir=tmp_path / "w", plot=False)
    cells = res["prover"]["cells"]
    bfs1 = cells["tg1"]["bfs"]
    # target 2 is one step away (always found), 64 needs 6 doublings (never within 3 expansions)
    assert bfs1["n"] == 2 and bfs1["pass1"] == 0.5 and bfs1["pass8"] == 0.5
    assert bfs1["stops"] == {"proved": 8, "expansions": 8}
    assert bfs1["problems"][0]["proof"] == ["+1"]
    # an unloadable statement is counted as unproved and reported
    assert cells["tg2"]["bfs"]["unloadable"] == 1 and cells["tg2"]["bfs"]["pass8"] == 0.5
    assert res["summary"]["pass8_tg2_heuristic"] == 0.5
    assert res["summary"]["pass8_tg2_lm"] is not None and res["summary"]["goals"][
        "lm_prover_ge_heuristic_pass8_tg2"] is not None
    assert res["prover"]["policy"]["gym_pairs"] == 2 * cfg.gen_problems
    # a rerun reuses every cached cell and the cached policy checkpoint (no search, no training)
    from morphlm.reason import tactic as tc

    calls = []
    monkeypatch.setattr(pv, "attempts", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(tc, "train_pair_lm", lambda *a, **k: calls.append(2))
    again = tb.run_benchmark(cfg, out_json=tmp_path / "t2.json", work_dir=tmp_path / "w", plot=False)
    assert calls == [] and again["summary"]["pass8_tg2_lm"] == res["summary"]["pass8_tg2_lm"]


class BrokenEnv(CountEnv):
    """CountEnv whose search fails on target 3 (a gym bug on one problem)."""

    def actions(self, s):
        if self.target == 3:
            raise TypeError("Invalid comparison of non-real zoo")
        return super().actions(s)


def test_a_failing_problem_is_reported_and_the_cell_goes_on(tmp_path, monkeypatch):
    _fake_subsets(monkeypatch)
    monkeypatch.setattr(pv, "trigo_env", BrokenEnv)
    cfg = tb.ci_config(parts=["prover"], searchers=["bfs"], max_expansions=3, width=None, problems=None,
                       subsets=["tg1", "tg2"], data=str(tmp_path))
    monkeypatch.setattr(tb.TrigoBenchConfig, "validate", lambda self: None)
    res = tb.run_benchmark(cfg, out_json=tmp_path / "t.json", work_dir=tmp_path / "w", plot=False)
    cell = res["prover"]["cells"]["tg2"]["bfs"]
    assert cell["search_errors"] == 1 and cell["unloadable"] == 1 and cell["pass8"] == 0.0
    assert "zoo" in cell["problems"][0]["error"]
    assert res["prover"]["cells"]["tg1"]["bfs"]["search_errors"] == 0


def test_a_stopped_cell_resumes_at_its_problem_and_assembles_from_the_cache(tmp_path, monkeypatch):
    from morphlm.bench.runner import BenchInterrupted

    _fake_subsets(monkeypatch)
    monkeypatch.setattr(tb.TrigoBenchConfig, "validate", lambda self: None)
    cfg = tb.ci_config(parts=["prover"], searchers=["bfs"], max_expansions=3, width=None, problems=None,
                       subsets=["tg1", "tg2"], data=str(tmp_path))
    real_attempts = pv.attempts
    calls = []

    def stop_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise BenchInterrupted("stopped by a signal")
        return real_attempts(*a, **k)

    monkeypatch.setattr(pv, "attempts", stop_on_second)
    with pytest.raises(BenchInterrupted):
        tb.run_benchmark(cfg, out_json=tmp_path / "t.json", work_dir=tmp_path / "w", plot=False)
    # assembled from the cache: tg1/bfs partial (problem a done), tg2/bfs never started; nothing is searched
    monkeypatch.setattr(pv, "attempts", lambda *a, **k: pytest.fail("--only-cached searched"))
    part = tb.run_benchmark(tb.dataclasses.replace(cfg, only_cached=True), out_json=tmp_path / "p.json",
                            work_dir=tmp_path / "w", plot=False)
    cell = part["prover"]["cells"]["tg1"]["bfs"]
    assert cell["partial"] == {"done": 1, "planned": 2} and cell["pass8"] == 1.0
    assert part["prover"]["not_run"] == ["tg2/bfs"]
    assert "(1 of 2)" in tb.markdown_table(part) and "not run: tg2/bfs" in tb.markdown_table(part)
    # the rerun searches only what is left: b, then tg2's two problems (one of them unloadable: no search)
    calls.clear()
    monkeypatch.setattr(pv, "attempts", lambda *a, **k: calls.append(1) or real_attempts(*a, **k))
    res = tb.run_benchmark(cfg, out_json=tmp_path / "t.json", work_dir=tmp_path / "w", plot=False)
    assert len(calls) == 2
    full = res["prover"]["cells"]["tg1"]["bfs"]
    assert "partial" not in full and full["n"] == 2 and full["pass8"] == 0.5
    assert [r["name"] for r in full["problems"]] == ["a", "b"]
    assert not list((tmp_path / "w" / "parts").glob("*.partial.jsonl"))


@needs_data
def test_quick_tactic_part_end_to_end_and_table(tmp_path):
    out = tmp_path / "trigo-test.json"
    res = tb.run_benchmark(tb.ci_config(parts=["tactic"]), out_json=out, work_dir=tmp_path / "w")
    t = res["tactic"]
    assert t["n_valid"] == 6 and t["n_train"] == 120
    s = res["summary"]
    assert s["tactic_em_anchor"] == max(t["always"]["em"], t["bm25"]["em"])
    assert 0.0 <= s["tactic_em"] <= 1.0 and s["tactic_nll_per_token"] > 0
    for k in ("machine", "torch", "commit"):
        assert k in res
    assert Path(res["plot"]).is_file()
    data = json.loads(out.read_text())
    assert data["summary"]["tactic_em"] == s["tactic_em"]
    table = cli("bench", "trigo", "--table", "--out", out).output
    assert "BM25 nearest goal" in table and "exact match" in table


def test_summary_and_goals_by_hand():
    tactic = {"always": {"em": 0.186}, "bm25": {"em": 0.148}, "lm": {"em": 0.24, "nll_per_token": 1.0}}
    prover = {"cells": {"tg2": {"lm": {"pass1": 0.1, "pass8": 0.3}, "heuristic": {"pass1": 0.2, "pass8": 0.3}}}}
    s = tb.summarise(tactic, prover)
    assert s["tactic_em_anchor"] == 0.186 and s["tactic_em"] == 0.24
    assert s["goals"]["tactic_lm_beats_best_anchor_by_5_points"] is True  # 0.24 >= 0.236
    assert s["goals"]["lm_prover_ge_heuristic_pass8_tg2"] is True  # equal counts
    tactic["lm"]["em"] = 0.23
    prover["cells"]["tg2"]["lm"]["pass8"] = 0.29
    s = tb.summarise(tactic, prover)
    assert s["goals"] == {"tactic_lm_beats_best_anchor_by_5_points": False, "lm_prover_ge_heuristic_pass8_tg2": False}
    none = tb.summarise(None, None)
    assert none["goals"]["lm_prover_ge_heuristic_pass8_tg2"] is None and "not run" in str(none["goal_notes"])


def test_bad_input(tmp_path):
    with pytest.raises(tb.BenchError, match="does not exist"):
        tb.ci_config(data=str(tmp_path / "nope")).validate()
    base = dict(data=str(tmp_path))
    with pytest.raises(tb.BenchError, match="pass@8 needs at least 8"):
        tb.ci_config(attempts=4, **base).validate()
    with pytest.raises(tb.BenchError, match="subsets"):
        tb.ci_config(subsets=["tg9"], **base).validate()
    with pytest.raises(tb.BenchError, match="searchers"):
        tb.ci_config(searchers=["dfs"], **base).validate()
    with pytest.raises(tb.BenchError, match="limit=0"):
        tb.ci_config(limit=0, **base).validate()
    with pytest.raises(tb.BenchError, match="policy_mode='beam'"):
        tb.ci_config(policy_mode="beam", **base).validate()
    with pytest.raises(tb.BenchError, match="gym_share=1.0"):
        tb.ci_config(gym_share=1.0, **base).validate()
    with pytest.raises(tb.BenchError, match="tactic settings"):
        tb.ci_config(tactic={"nope": 1}, **base).validate()
    res = cli("bench", "trigo", "--quick", "--data", tmp_path / "nope", "--out", tmp_path / "x.json", code=2)
    assert "does not exist" in res.output and not (tmp_path / "x.json").exists()
    res = cli("bench", "trigo", "--table", "--out", tmp_path / "missing.json", code=2)
    assert "does not exist" in res.output
    (tmp_path / "bad.json").write_text("{}")
    assert "not a `morphlm bench trigo` results file" in cli("bench", "trigo", "--table", "--out",
                                                              tmp_path / "bad.json", code=2).output
