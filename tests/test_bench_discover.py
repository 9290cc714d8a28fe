"""The Hard-Mode discovery benchmark (morphlm/bench/discover.py, `morphlm bench discover`): a CI-sized SymPy run
(JSON, tallies by source, the LM arms recorded as skipped with the reason), the LM arms with a scripted chat model
and with a tiny random checkpoint through the chat adapter, --table and bad input. Correctness only: nothing here
asserts that an arm reaches its goal."""

from __future__ import annotations

import json

import pytest

from morphlm.bench import discover as bd

from clihelp import cli


def _consistent(arm: dict) -> None:
    total = arm["total"]
    assert sum(total.values()) == arm["n"]
    for status in bd.STATUSES:
        assert sum(c[status] for c in arm["by_source"].values()) == total[status]


def test_quick_sympy_run_writes_results_and_records_skipped_lm_arms(shared_data, tmp_path):
    out = tmp_path / "d.json"
    res = bd.run_benchmark(bd.quick_config(limit=12), out_json=out)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "discover" and data["commit"] and data["torch"] and data["machine"]
    s = data["summary"]
    assert set(bd.SUMMARY_KEYS) <= set(s)
    assert s["discover_single_test"] is None and s["discover_loop_test"] is None and s["kv_cache_speedup"] is None
    assert "skipped" in s["notes"]["lm_arms"] and data["lm_skipped"]
    sym = data["arms"]["sympy"]["test"]
    assert sym["n"] == 12 and sym["total"]["wrong"] == 0 and s["wrong_sympy_test"] == 0
    _consistent(sym)
    recs = data["records"]["sympy"]["test"]
    assert len(recs) == sym["answer_style"] and s["discover_sympy_test"] == sum(r["status"] == "recovered"
                                                                                for r in recs) >= 3
    assert {r["name"]: r["answer"] for r in recs}["mathd_algebra_478"] == "65"
    assert data["statistics"]["test"]["statements"] == 244
    assert res["summary"] == s
    table = bd.markdown_table(data)
    assert "| sympy | test | 12 |" in table and "mathd" in table


def test_tally_counts_skipped_statements_as_abstained():
    class S:
        def __init__(self, name):
            self.name, self.source = name, name.split("_")[0]

    recs = [{"name": "mathd_a", "source": "mathd", "status": "recovered"},
            {"name": "aime_b", "source": "aime", "status": "gold_false"}]
    t = bd.tally(recs, [S("mathd_a"), S("aime_b"), S("imo_c")], ["x.lean:7: amc12b_2002_p3: no `:`", "garbled"])
    assert t["total"] == {"recovered": 1, "wrong": 0, "gold_false": 1, "abstain": 3}
    assert t["by_source"]["imo"]["abstain"] == 1 and t["by_source"]["amc"]["abstain"] == 1
    assert t["by_source"]["unknown"]["abstain"] == 1 and t["by_source"]["aime"]["gold_false"] == 1


def test_lm_arms_with_a_scripted_model(shared_data, tmp_path):
    from morphlm.reason.discover import build_problem, prompt
    from morphlm.reason.formal import load_minif2f

    gold = {}
    for st in load_minif2f("test").statements[:12]:
        p = build_problem(st)
        if p is not None:
            gold[prompt(p)[1]["content"]] = p.hard.gold

    def chat(messages):
        # wrong first, then the gold constant once told it failed: the loop can recover what the check can check
        g = gold[messages[1]["content"]]
        return f"The answer is {g}." if "fails because" in messages[-1]["content"] else "It is 1000."

    data = bd.run_benchmark(bd.quick_config(limit=12, lm_limit=4, rounds=3), out_json=tmp_path / "d.json", chat=chat)
    s = data["summary"]
    for arm in ("single", "loop"):
        a = data["arms"][arm]["test"]
        assert a["n"] == 4 and a["of_answer_style"] == data["arms"]["sympy"]["test"]["answer_style"]
        _consistent(a)
    assert s["discover_single_test"] == 0  # "1000" is nobody's answer among the first statements
    checkable = sum(r["status"] == "recovered" for r in data["records"]["sympy"]["test"][:4])
    assert s["discover_loop_test"] == checkable >= 2
    assert all(r["rounds"] == 2 for r in data["records"]["loop"]["test"]
               if r["status"] == "recovered")
    assert data["model"] == "a chat callable passed by the caller"


def test_chat_adapter_on_a_tiny_random_checkpoint(shared_data, tmp_path):
    import torch

    from morphlm.data import train_tokenizer
    from morphlm.model import ModelConfig, TransformerLM
    from morphlm.train import checkpoint as ckpt

    texts = ["theorem x = 65 real sqrt the answer is", "What number is it? The answer is 12."] * 20
    tok = train_tokenizer(texts, 300)
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny-llama", vocab_size=tok.vocab_size, max_seq_len=64))
    run = tmp_path / "tiny"
    ckpt.save_checkpoint(run, model.state_dict(), model.config, tokenizer_json=tok.to_json_str())
    chat, _, sample = bd.checkpoint_chat(str(run), 5)
    msgs = [{"role": "user", "content": "What is 12 + 7? " * 30}]  # longer than the context: cut, not refused
    a, b = chat(msgs), chat(msgs)
    assert isinstance(a, str) and a == b  # the first answer is greedy
    retry = msgs + [{"role": "assistant", "content": a}, {"role": "user", "content": "Your answer fails. " * 3}]
    c = [chat(retry) for _ in range(3)]
    assert len(set(c)) > 1  # answers after feedback are sampled
    assert len(sample) > 0
    data = bd.run_benchmark(bd.quick_config(limit=6, lm_limit=2, max_new_tokens=4, rounds=2, model=str(run)),
                            out_json=tmp_path / "d.json")
    assert data["model"] == f"checkpoint {run}" and data["lm_skipped"] is None
    assert data["arms"]["single"]["test"]["n"] == 2 and data["arms"]["loop"]["test"]["n"] == 2
    s = data["summary"]
    assert s["kv_cache_speedup"] is None or s["kv_cache_speedup"] > 0
    assert s["notes"]["kv_cache_speedup"]


def test_cli_quick_table_and_bad_input(shared_data, tmp_path):
    out = tmp_path / "q.json"
    res = cli("bench", "discover", "--quick", "--limit", 6, "--out", out)
    assert out.is_file() and "| sympy | test | 6 |" in res.output
    res = cli("bench", "discover", "--table", "--out", out)
    assert "| sympy | test | 6 |" in res.output
    bad = tmp_path / "other.json"
    bad.write_text('{"summary": 1}')
    res = cli("bench", "discover", "--table", "--out", bad, code=2)
    assert "is not a `morphlm bench discover` results file" in res.output
    res = cli("bench", "discover", "--table", "--out", tmp_path / "none.json", code=2)
    assert "does not exist" in res.output
    for args, msg in ((("--splits", "train"), "choose from test, valid"),
                      (("--model", tmp_path / "nowhere"), "not a directory"),
                      (("--limit", 0), "limit=0")):
        target = tmp_path / "never.json"
        res = cli("bench", "discover", "--quick", *args, "--out", target, code=2)
        assert msg in res.output and not target.exists()


def test_a_stop_request_ends_the_run_without_results(shared_data, tmp_path, monkeypatch):
    from morphlm.bench.runner import STOP, BenchInterrupted
    from morphlm.reason import discover as dsc

    real = dsc.discover_sympy
    calls = []

    def stopping(problem, **kw):
        calls.append(problem.stmt.name)
        STOP.requested = True  # what a Ctrl-C / SIGTERM does inside the run's StopScope
        return real(problem, **kw)

    monkeypatch.setattr(dsc, "discover_sympy", stopping)
    out = tmp_path / "d.json"
    with pytest.raises(BenchInterrupted, match="not cached"):
        bd.run_benchmark(bd.quick_config(limit=12), out_json=out)
    assert len(calls) == 1 and not out.exists()
    res = cli("bench", "discover", "--quick", "--limit", 12, "--out", out, code=130)
    assert not out.exists() and "stopped" in res.output.lower()
