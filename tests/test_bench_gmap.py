"""The G-MAP benchmark (morphlm/bench/gmap.py, `morphlm bench gmap`): the domain corpus (labels dropped, dev sentences
kept out), the arms' models and equal steps, the summary and goal on hand-made records, a CI-sized end-to-end run on a
toy SST-2 folder (JSON + plot + table + cache reuse + a stop that caches nothing), and bad input. Correctness only:
nothing here asserts that an arm wins."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from morphlm.bench import gmap as gb
from morphlm.bench.runner import STOP, BenchInterrupted

from clihelp import check_script_is_the_cli, check_table_errors, cli

POS = ["a moving , funny film", "great acting and a warm heart", "a delight from start to finish",
       "smart , tender and beautifully shot", "the best comedy of the year", "a rich and rewarding story",
       "wonderful music and sharp writing", "an honest , joyful picture"]
NEG = ["a dull , lifeless mess", "boring and far too long", "the plot makes no sense at all",
       "flat jokes and wooden acting", "a tedious waste of time", "an ugly , pointless sequel",
       "lazy writing and a limp ending", "the worst script in years"]


def toy_sst2(root: Path, n_train: int = 120, n_dev: int = 24) -> Path:
    """A small SST-2 folder in the real layouts: glue-sst2/{train,dev}.tsv and sst2-sentences/stsa.binary.*; two dev
    sentences also appear in glue's train file and one in stsa's (the domain corpus must drop them)."""
    rng = random.Random(0)

    def sentence(label: int, joint: str) -> str:
        words = POS if label else NEG
        return f"{rng.choice(words)} , {rng.choice(words)} {joint} {rng.choice(words)} ."

    train = [(i % 2, sentence(i % 2, "and")) for i in range(n_train)]
    dev = [(i % 2, sentence(i % 2, "yet")) for i in range(n_dev)]  # never a training sentence by chance
    (root / "glue-sst2").mkdir(parents=True)
    (root / "sst2-sentences").mkdir()
    (root / "glue-sst2" / "train.tsv").write_text(
        "label\tsentence\n" + "".join(f"{lab}\t{t}\n" for lab, t in train + dev[:2]))
    (root / "glue-sst2" / "dev.tsv").write_text("label\tcontent\n" + "".join(f"{lab}\t{t}\n" for lab, t in dev))
    (root / "sst2-sentences" / "stsa.binary.train").write_text(
        "".join(f"{lab} {t}\n" for lab, t in train[: n_train // 2] + dev[5:6]))
    (root / "sst2-sentences" / "stsa.binary.dev").write_text("".join(f"{lab} {t}\n" for lab, t in dev))
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return toy_sst2(tmp_path_factory.mktemp("gmap-data"))


def _ci(toy: Path, **changes):
    return gb.ci_config(corpus="stdlib", max_bytes=250_000, data_dir=str(toy), **changes)  # dssn's tokenizer and store


# ---------------------------------------------------------------------------- the shared runner pieces
def test_shared_pieces_of_the_benchmarks(tmp_path, monkeypatch):
    from morphlm.bench.common import config_hash, results_file, results_table
    from morphlm.bench.runner import Outcomes, guarded_job

    assert config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1}) != config_hash({"a": 2, "b": [2]})
    assert len(config_hash(None)) == 16
    monkeypatch.setenv("MORPHLM_RESULTS", str(tmp_path))
    assert results_file("gmap", "full") == tmp_path / "gmap.json"
    assert results_file("gmap", "quick") == tmp_path / "gmap-quick.json"
    # the three outcomes of a worker's job, and what the parent keeps of them
    ok = guarded_job(lambda: {"x": 1})
    assert ok == {"ok": True, "record": {"x": 1}}

    def fails():
        raise ValueError("bad arm")

    def stopped():
        raise BenchInterrupted("stopped")

    err, cut = guarded_job(fails), guarded_job(stopped)
    assert not err["ok"] and err["error"] == "ValueError: bad arm" and "Traceback" in err["trace"]
    assert cut == {"ok": False, "interrupted": True, "error": "stopped"}
    out = Outcomes()
    out.collect({"name": "dapt", "seed": 1}, ok)
    out.collect({"name": "gmap-single", "seed": 0}, err)
    assert out.runs == {"dapt": {1: {"x": 1}}}
    assert out.failures == [{"arm": "gmap-single", "seed": 0, "error": "ValueError: bad arm"}]
    # --table: a missing file and a file of another benchmark are named errors
    with pytest.raises(FileNotFoundError, match="run `morphlm bench gmap` first"):
        results_table(tmp_path / "none.json", gb.markdown_table, "gmap", gb.BenchError)
    (tmp_path / "other.json").write_text(json.dumps({"summary": {}, "arms": {"pre": {}}}))
    with pytest.raises(gb.BenchError, match="no DAPT arm"):
        results_table(tmp_path / "other.json", gb.markdown_table, "gmap", gb.BenchError)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(gb.BenchError, match="not a `morphlm bench gmap` results file"):
        results_table(tmp_path / "bad.json", gb.markdown_table, "gmap", gb.BenchError)


# ---------------------------------------------------------------------------- data
def test_domain_corpus_drops_labels_duplicates_and_every_dev_sentence(toy, tmp_path):
    cfg = _ci(toy)
    sentences, stats = gb.domain_sentences(cfg)
    dev = {line.split("\t", 1)[1].lower() for line in (toy / "glue-sst2" / "dev.tsv").read_text().splitlines()[1:]}
    assert sentences and not dev & {s.lower() for s in sentences}  # never a dev sentence
    assert not any(s[:2] in ("0 ", "1 ") for s in sentences)  # labels dropped
    assert len(set(sentences)) == len(sentences) == stats["sentences"]
    # the toy folder repeats its stsa sentences in glue's train file: they count once; 3 dev copies are removed
    assert stats["dev_sentences_excluded"] == 3 and stats["duplicates_removed"] >= 60
    assert stats["sources"]["sst2-sentences"]["sentences"] == 61
    only = gb.domain_sentences(_ci(toy, domain_sources=["sst2-sentences"]))[1]
    assert set(only["sources"]) == {"sst2-sentences"} and only["dev_sentences_excluded"] == 1
    # written once as JSONL, one sentence a document
    path, _ = gb.write_domain_corpus(cfg, tmp_path)
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == sentences
    # the task: a fixed subset of glue's train file; the dev file is glue's own, whole
    train, dev_file = gb.task_files(cfg, tmp_path)
    assert dev_file == toy / "glue-sst2" / "dev.tsv"
    assert len(train.read_text().splitlines()) == cfg.task_train_subset + 1
    assert gb.task_files(cfg, tmp_path)[0] == train  # the same draw every time


def test_missing_data_is_named(tmp_path):
    with pytest.raises(gb.BenchError, match="glue-sst2"):
        gb.domain_sentences(gb.ci_config(data_dir=str(tmp_path)))
    toy_sst2(tmp_path / "d")
    (tmp_path / "d" / "sst2-sentences" / "stsa.binary.train").unlink()
    with pytest.raises(gb.BenchError, match="stsa.binary.train"):
        gb.domain_sentences(gb.ci_config(data_dir=str(tmp_path / "d")))
    (tmp_path / "d" / "sst2-sentences" / "stsa.binary.dev").write_text("7 not a label\n")
    with pytest.raises(gb.BenchError, match="line 1"):
        gb.domain_sentences(gb.ci_config(data_dir=str(tmp_path / "d"), domain_sources=["glue-sst2"]))


# ---------------------------------------------------------------------------- arms
def test_arms_models_and_equal_steps():
    cfg = gb.full_config()
    assert cfg.domain_config("general") is None
    assert not cfg.domain_config("dapt").gmap_layer_ids and cfg.domain_config("dapt").causal
    for fusion in gb.FUSIONS:
        m = cfg.domain_config(f"gmap-{fusion}")
        assert m.gmap_fusion == fusion and m.gmap_layer_ids == (1, 3) and m.gmap_memory_layers == cfg.n_layers
        assert m.replace(gmap_layers="", gmap_fusion="chunk_gated", gmap_memory_layers=0, name="x") == \
            cfg.domain_config("dapt").replace(name="x")  # the same domain model but for the memory
    for arm in gb.ARMS:
        t = cfg.task_config(arm)
        assert t.head == "cls" and t.n_classes == 2 and not t.causal  # the pooled first token reads the sentence
    a, b = cfg.train_args("domain", 1), cfg.train_args("task", 1)
    assert (a.max_steps, b.max_steps) == (cfg.domain_steps, cfg.finetune_steps) and a.seed == b.seed == 1


def test_bad_settings_are_named(toy):
    with pytest.raises(gb.BenchError, match="no seeds"):
        _ci(toy, seeds=[]).validate()
    with pytest.raises(gb.BenchError, match="precision='fp16'"):
        _ci(toy, precision="fp16").validate()
    with pytest.raises(gb.BenchError, match="domain_steps=0"):
        _ci(toy, domain_steps=0).validate()
    with pytest.raises(gb.BenchError, match="domain_sources"):
        _ci(toy, domain_sources=["imdb"]).validate()
    with pytest.raises(gb.BenchError, match="finetune_max_len=64 exceeds seq_len=32"):
        _ci(toy, finetune_max_len=64).validate()
    with pytest.raises(gb.BenchError, match="arm gmap-single: .*gmap_layers='0,5'"):
        _ci(toy, gmap_layers="0,5").validate()  # out of range for a 2-layer model: the config's own error
    with pytest.raises(gb.BenchError, match="unknown arm 'adapter'"):
        _ci(toy).domain_config("adapter")


# ---------------------------------------------------------------------------- analysis
def _rec(arm, seed, acc, general_loss, base=3.0):
    stage = {"wall_s": 1.0, "flops": 1e9}
    return {"arm": arm, "seed": seed, "dev_accuracy": acc, "general_val_loss": general_loss,
            "forgetting": general_loss - base, "domain_val_loss": 4.0,
            "stages": {"domain": None if arm == "general" else stage, "task": stage}, "wall_s": 2.0, "flops": 2e9}


def test_summary_pairs_seeds_picks_the_best_fusion_and_judges_the_goal():
    runs = {"general": {s: _rec("general", s, 0.70, 3.0) for s in (0, 1)},
            "dapt": {0: _rec("dapt", 0, 0.75, 3.3), 1: _rec("dapt", 1, 0.77, 3.5)},
            "gmap-single": {0: _rec("gmap-single", 0, 0.76, 3.1), 1: _rec("gmap-single", 1, 0.78, 3.1)},
            "gmap-gated": {0: _rec("gmap-gated", 0, 0.74, 3.0), 1: _rec("gmap-gated", 1, 0.79, 3.6)}}
    arms = gb.analyse(runs)
    assert arms["dapt"]["dev_accuracy"] == pytest.approx(76.0) and arms["dapt"]["minus_dapt"] is None
    assert arms["gmap-single"]["minus_dapt"] == pytest.approx(1.0) and arms["gmap-single"]["minus_dapt_std"] == 0
    assert arms["gmap-gated"]["minus_dapt"] == pytest.approx(0.5)  # paired: (-1 + 2) / 2
    assert arms["general"]["forgetting"] == 0 and arms["dapt"]["forgetting"] == pytest.approx(0.4)
    s = gb.summarise(arms, [0, 1])
    assert set(gb.SUMMARY_KEYS) <= set(s) and s["best_fusion"] == "single"
    assert s["gmap_minus_dapt"] == pytest.approx(1.0) and s["forgetting_gmap"] == pytest.approx(0.1)
    assert s["forgetting_dapt"] == pytest.approx(0.4)
    assert s["detail"]["gmap_minus_dapt_per_fusion"] == pytest.approx({"single": 1.0, "gated": 0.5})
    # single: +1.0 and 0.1 < 0.4 -> met; gated: +0.5 (the bound is inclusive) but 0.3 < 0.4 -> met too
    assert s["goals"][gb.GOAL] is True and s["goals"]["per_fusion"] == {"single": True, "gated": True}
    assert "optimistic" in s["goal_notes"][gb.GOAL]
    # more forgetting than DAPT misses the goal whatever the accuracy
    runs["gmap-single"] = {s_: _rec("gmap-single", s_, 0.80, 3.6) for s_ in (0, 1)}
    s = gb.summarise(gb.analyse(runs), [0, 1])
    assert s["best_fusion"] == "single" and s["goals"][gb.GOAL] is False
    # no G-MAP runs: not measurable, with the reason
    s = gb.summarise(gb.analyse({"dapt": runs["dapt"]}), [0, 1])
    assert s["gmap_minus_dapt"] is None and s["goals"][gb.GOAL] is None and "missing" in s["goal_notes"][gb.GOAL]


# ---------------------------------------------------------------------------- end to end (the CI profile)
def test_end_to_end_json_plot_table_cache_and_stop(toy, tmp_path, monkeypatch):
    import morphlm.train.run as run_mod
    from morphlm.train import checkpoint as ckpt

    cfg = _ci(toy)
    out, work = tmp_path / "res" / "gmap.json", tmp_path / "work"
    # a stop during the first G-MAP arm's fine-tuning: nothing of that arm is cached, no results are written
    real = run_mod.train_run
    seen = []

    def stop_in_gmap_task(spec, callbacks=()):
        res = real(spec, callbacks)
        seen.append(spec.model.name)
        if spec.model.head == "cls" and spec.model.gmap_layer_ids:
            STOP.requested = True
        return res

    monkeypatch.setattr(run_mod, "train_run", stop_in_gmap_task)
    with pytest.raises(BenchInterrupted):
        gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    assert not out.exists()
    cached = [p.name for p in (work / "arms").iterdir()]
    assert cached and all(n.startswith("dapt-") for n in cached)  # DAPT ran first and finished; G-MAP did not
    gmap_run = next(p for p in (work / "runs").iterdir() if p.name.startswith("gmap-"))
    assert (gmap_run / "domain" / "stage.json").is_file()  # its finished domain stage is kept for the rerun
    # the G-MAP checkpoint records its frozen model as a parent and does not copy its weights
    lineage = ckpt.read_lineage(gmap_run / "domain")
    assert any(p.get("role") == "gmap_memory" for p in lineage["parents"])

    monkeypatch.setattr(run_mod, "train_run", real)
    seen.clear()
    res = gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1)
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    for key in ("machine", "torch", "commit", "summary", "config", "arms", "runs", "protocol", "precision", "general",
                "data"):
        assert key in data, key
    s = data["summary"]
    assert set(gb.SUMMARY_KEYS) <= set(s) and s["seeds"] == 1 and s["best_fusion"] in gb.FUSIONS
    assert set(s["detail"]["gmap_minus_dapt_per_fusion"]) == set(gb.FUSIONS)
    assert s["goals"][gb.GOAL] in (True, False)
    assert list(data["runs"]) == list(gb.ARMS)
    assert data["data"]["task"]["n_dev"] == 24 and data["data"]["domain"]["dev_sentences_excluded"] == 3
    runs = {a: by["0"] for a, by in data["runs"].items()}
    for arm, rec in runs.items():
        assert 0.0 <= rec["dev_accuracy"] <= 1.0 and rec["stages"]["task"]["steps"] == cfg.finetune_steps
        if arm == "general":
            assert rec["stages"]["domain"] is None and rec["forgetting"] == 0.0
        else:  # equal trainable steps and tokens for DAPT and every G-MAP arm
            assert rec["stages"]["domain"]["steps"] == cfg.domain_steps
            assert rec["stages"]["domain"]["tokens"] == cfg.domain_steps * cfg.batch_size * cfg.seq_len
            assert rec["forgetting"] == pytest.approx(rec["general_val_loss"] - data["general"]["general_val_loss"])
        assert (rec["fusion_weights"] is not None) == arm.startswith("gmap-")
    # the frozen model's forward is counted: more FLOPs than DAPT at the same steps
    assert all(runs[f"gmap-{f}"]["stages"]["domain"]["flops"] > runs["dapt"]["stages"]["domain"]["flops"]
               for f in gb.FUSIONS)
    assert s["gmap_minus_dapt"] == pytest.approx(
        100 * (runs[f"gmap-{s['best_fusion']}"]["dev_accuracy"] - runs["dapt"]["dev_accuracy"]))
    # the rerun resumed: DAPT from the cache, the cut G-MAP arm's domain stage from its stage.json
    assert "gmap-bench-dapt" not in seen and f"gmap-bench-{gmap_run.name.split('-s0-')[0]}" not in seen
    table = gb.markdown_table(data)
    assert all(f"| {a} |" in table for a in gb.ARMS) and "Goal (G-MAP ≥ DAPT + 0.5 points" in table
    assert "| gmap-gated |" in cli("bench", "gmap", "--table", "--out", out).output

    # a rerun: everything from the cache, nothing trains
    def boom(*a, **k):
        raise AssertionError("retrained on a cached rerun")

    monkeypatch.setattr(run_mod, "train_run", boom)
    res2 = gb.run_benchmark(cfg, out_json=out, work_dir=work, workers=1, plot=False)
    assert res2["arms"] == json.loads(json.dumps(res["arms"]))


def test_cli_bad_input_writes_nothing(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHLM_RESULTS", str(tmp_path / "results"))
    bad = cli("bench", "gmap", "--quick", "--seeds", "0", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "--seeds 0" in bad.output
    bad = cli("bench", "gmap", "--quick", "--precision", "fp16", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "precision='fp16'" in bad.output
    bad = cli("bench", "gmap", "--quick", "--data-dir", tmp_path / "nowhere", "--work-dir", tmp_path / "w", code=None)
    assert bad.exit_code != 0 and "glue-sst2" in bad.output and "--data-dir" in bad.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "w").exists()
    check_table_errors("gmap", tmp_path)


def test_script_is_the_cli(tmp_path, capsys):
    check_script_is_the_cli("gmap", tmp_path, capsys)
