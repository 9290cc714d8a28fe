"""Honest evaluation numbers, pictures and logs (issue 12: "Why" 3, 7, 9, 10).

bytes_on_disk is the shipped artifact, classifiers report no perplexity, eval needs data, ternary without QAT
warns with its measured drift, `morphlm plot`, the compression benchmark's plot, progress bars in a log, eval
--latency progress, the layer-map search result round trip into distill, a prompt-tune dir named as such,
the demo's caveat, int8 through torchao."""

import copy
import io
import json
import logging
import shutil

import pytest
import torch

from morphlm.bench.compression_report import plot_tradeoffs
from morphlm.compress import quantize as qmod
from morphlm.compress.distill_loss import teacher_layer_map
from morphlm.compress.layermap import GAConfig, read_layer_map_arg, run_layermap_search
from morphlm.demo import saving_caveat
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train.loop import TrainArgs, fit, model_loss
from morphlm.progress import progress_bar
from toydata import ToyData

from clihelp import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _last_json(res) -> dict:
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-layer causal LM trained 4 steps on stdlib: optimizer state, metrics.jsonl and a recorded data spec."""
    out = tmp_path_factory.mktemp("surface") / "run"
    cli("train", "--preset", "tiny", "--n-layers", 2, "--corpus", "stdlib", "--max-bytes", 200000, "--max-steps", 4,
        "--eval-every", 2, "--out", out, "--seq-len", 32, "--batch-size", 4)
    return out


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    rows = ["sentence\tlabel"] + [f"{'good fine nice' if i % 2 else 'bad poor sad'} film number {i}\t{i % 2}"
                                  for i in range(24)]
    (d / "dev.tsv").write_text("\n".join(rows) + "\n")
    return d / "dev.tsv"


# ---------------------------------------------------------------------------- honest evaluation
def test_bytes_on_disk_is_the_shipped_artifact_not_stages_or_state(run, tmp_path):
    d = tmp_path / "student"
    shutil.copytree(run, d)
    shutil.copytree(run, d / "stage_a")  # a task distillation's intermediate stage, with its own state/
    assert (d / "state").is_dir() and (d / "stage_a" / "state").is_dir()
    m = _last_json(cli("eval", d, "--json", "--max-batches", 1))
    shipped = sum((d / f).stat().st_size for f in ("model.safetensors", "config.json", "tokenizer.json"))
    assert m["bytes_on_disk"] == shipped
    assert m["weights_bytes"] == (d / "model.safetensors").stat().st_size
    every = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert m["dir_bytes"] == every > 2 * m["bytes_on_disk"]  # the stage copy, optimizer state, logs


def test_eval_of_a_directory_without_data_needs_a_data_spec(run, tmp_path):
    model = ckpt.load_model(run)
    bare = tmp_path / "converted"  # as convert writes: weights, config, tokenizer, no data spec
    ckpt.save_checkpoint(bare, model.state_dict(), model.config, tokenizer_json=(run / "tokenizer.json").read_text())
    res = cli("eval", bare, code=2)
    assert "records no data" in res.output and "--corpus" in res.output
    text = tmp_path / "held_out.txt"
    text.write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}  # a small held-out corpus" for i in range(400)))
    m = _last_json(cli("eval", bare, "--corpus", text, "--json", "--max-batches", 1))
    assert m["val_loss"] > 0 and "perplexity" in m
    assert "--task-val scores classifiers" in cli("eval", bare, "--task-val", "x.tsv", code=2).output


def test_classifier_eval_reports_accuracy_and_no_perplexity(run, tmp_path, task_file):
    cfg = ckpt.read_config(run)[0].replace(head="cls", n_classes=2)
    torch.manual_seed(0)
    cls = tmp_path / "cls"
    ckpt.save_checkpoint(cls, TransformerLM(cfg).state_dict(), cfg, tokenizer_json=(run / "tokenizer.json").read_text())
    assert "--task-val" in cli("eval", cls, code=2).output  # records no task files
    assert "not a corpus" in cli("eval", cls, "--corpus", "stdlib", code=2).output
    m = _last_json(cli("eval", cls, "--task-val", task_file, "--json"))
    assert 0.0 <= m["accuracy"] <= 1.0 and m["val_loss"] > 0
    assert "perplexity" not in m


def test_eval_of_a_prompt_tune_dir_says_what_it_is(run, tmp_path):
    p = tmp_path / "prompt"
    p.mkdir()
    ckpt.write_tensors(p / "prompt.safetensors", {"prompt": torch.zeros(4, 8)}, {"format_version": "1"})
    (p / "prompt.json").write_text(json.dumps({"kind": "soft-prompt", "reading": "causal", "config": {"prompt_len": 4},
                                               "metrics": {"val_accuracy": 0.75}}))
    (p / "lineage.json").write_text(json.dumps({"verb": "prompt-tune", "parents": [{"path": str(run)}]}))
    out = cli("eval", p, code=2).output
    assert "soft-prompt directory" in out and "config.json is missing" not in out
    assert "val_accuracy 0.7500" in out and f"morphlm eval {run}" in out


def test_ternary_without_qat_warns_with_measured_drift(run, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="morphlm.compress.quantize"):
        summary = qmod.quantize_checkpoint(run, tmp_path / "q0", "ternary")
    drift = summary["drift"]
    assert -1.0 <= drift["cosine"] < 1.0 and -1.0 <= drift["logits_cosine"] < 1.0
    assert drift["batch"] == "held-out batch of stdlib"
    assert "--max-steps 0" in summary["warning"] and f"cosine {drift['cosine']:.3f}" in summary["warning"]
    assert any("ternary without QAT" in r.getMessage() for r in caplog.records)
    assert ckpt.read_lineage(tmp_path / "q0")["drift"] == drift
    res = cli("quantize", run, "--out", tmp_path / "q1")
    assert f"drift: cosine {drift['cosine']:.3f} with the float model" in res.stdout
    # QAT steps: the drift is still measured, without the warning
    trained = qmod.quantize_checkpoint(run, tmp_path / "q2", "ternary", steps=2, batch_size=4, seq_len=32,
                                       progress=False)
    assert "warning" not in trained and "cosine" in trained["drift"]


def test_output_drift_is_one_for_the_same_model():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny", n_layers=1)).eval()
    batch = {"input_ids": torch.randint(7, 100, (2, 16))}
    d = qmod.output_drift(model, model, batch)
    assert d["cosine"] == pytest.approx(1.0, abs=1e-5) and d["max_abs_logit_diff"] == 0.0


def test_demo_caveat_when_the_saving_is_not_measurable():
    def curve(losses):
        return [{"step": i, "flops": float(i), "val_loss": v} for i, v in enumerate(losses)]

    # --steps 60: the grown model already sits at scratch's final loss before training -> "100% fewer" is no claim
    assert "not measurable" in saving_caveat(curve([6.40, 6.30]), curve([7.6, 7.0, 6.6, 6.45]))
    # scratch still falling steeply in its last quarter
    assert "stable loss" in saving_caveat(curve([7.0, 5.0]), curve([8.0, 7.9, 7.8, 7.7, 7.6, 7.5, 7.0, 6.0]))
    # a long run: scratch flattened out, the grown model starts clearly worse than scratch's final loss
    assert saving_caveat(curve([6.0, 4.0, 3.5]), curve([8.0, 5.0, 4.0, 3.7, 3.6, 3.55, 3.52, 3.5])) is None


# ---------------------------------------------------------------------------- pictures and logs
def test_plot_draws_several_runs_into_a_png(run, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(run, second)
    png = tmp_path / "curves.png"
    res = cli("plot", run, second, "--x", "flops", "--out", png)
    assert "2 runs" in res.stdout and png.read_bytes()[:8] == PNG_MAGIC
    from morphlm.train.metrics import run_labels

    assert list(run_labels([run, second])) == ["run", "second"]
    assert "not an axis" in cli("plot", run, "--x", "epochs", code=2).output
    assert "no metrics.jsonl" in cli("plot", tmp_path, code=2).output


def test_compression_benchmark_plot_from_results(tmp_path):
    result = {"profile": "test", "task": {"name": "SST-2"},
              "teacher": {"dev_acc": 0.8, "params": 1000, "fp32_bytes": 4000, "latency": {"b1_median_ms": 2.0}},
              "arms": {"kd": {"status": "ok", "aggregate": {"dev_acc": {"mean": 0.7}},
                              "runs": [{"params": 100, "latency": {"b1_median_ms": 0.5}}]},
                       "ternary": {"status": "ok", "aggregate": {"dev_acc": {"mean": 0.79}},
                                   "runs": [{"packed_bytes": 300, "latency": {"b1_median_ms": 3.0}}]},
                       "int8": {"status": "not available", "reason": "x"}}}
    png = plot_tradeoffs(result, tmp_path / "c.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert plot_tradeoffs({"arms": {}}, tmp_path / "none.png") is None


def test_progress_bar_off_a_tty_writes_a_few_plain_lines(monkeypatch, capsys):
    monkeypatch.setenv("MORPHLM_PROGRESS_EVERY", "30")
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny", n_layers=1, vocab_size=512))
    fit(model, model_loss, ToyData(seq_len=16, batch_size=2), TrainArgs(max_steps=60, progress=True, eval_every=0,
                                                                        eval_at_end=False, warmup_steps=1))
    err = capsys.readouterr().err
    bar_lines = [line for line in err.splitlines() if line.startswith("train")]
    assert "\r" not in err  # tqdm's redraws would be carriage returns on one ever-growing line
    assert 1 <= len(bar_lines) <= 3 and "60/60" in bar_lines[-1]
    # one line per interval: with a 0 s interval every update is its own line
    monkeypatch.setenv("MORPHLM_PROGRESS_EVERY", "0")
    buf = io.StringIO()
    bar = progress_bar(total=5, desc="x", file=buf)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert len(buf.getvalue().splitlines()) >= 5 and "\r" not in buf.getvalue()
    monkeypatch.setenv("MORPHLM_PROGRESS_EVERY", "soon")
    with pytest.raises(ValueError, match="MORPHLM_PROGRESS_EVERY"):
        progress_bar(total=1, file=io.StringIO())


def test_eval_latency_shows_progress(run, capsys, monkeypatch):
    from morphlm.train.run import eval_run

    monkeypatch.setenv("MORPHLM_PROGRESS_EVERY", "0")
    m = eval_run(run, max_batches=1, latency=True, latency_runs=2, latency_warmup=1, latency_seq_len=16)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("latency")]
    assert m["latency_b1_median_ms"] > 0 and lines and "6/6" in lines[-1]


def test_layer_map_search_result_round_trips_into_distill(run, tmp_path):
    target = [1, 1]
    report = run_layermap_search(lambda m: -sum(abs(g - t) for g, t in zip(m, target)), 2, 2,
                                 GAConfig(population=3, budget=4, elitism=1, tournament=2))
    best = report["best"]
    assert best["layer_map"] == ",".join(str(g) for g in best["mapping"])
    assert teacher_layer_map(best["layer_map"], 2, 2).to_list() == best["mapping"]
    path = tmp_path / "search.json"
    path.write_text(json.dumps(report))
    assert read_layer_map_arg(f"@{path}") == best["layer_map"]
    # an older report without best.layer_map: the mapping (null = unsupervised) is turned into the string
    path.write_text(json.dumps({"best": {"mapping": [None, 1]}}))
    assert read_layer_map_arg(f"@{path}") == "-,1"
    out = tmp_path / "student"
    cli("distill", "--teacher", run, "--student", "tiny", "--n-layers", 2, "--stage", "general", "--corpus", "stdlib",
        "--max-bytes", 200000, "--max-steps", 1, "--batch-size", 2, "--seq-len", 16, "--layer-map", f"@{path}",
        "--out", out)
    assert ckpt.read_lineage(out)["distill"]["resolved_layer_map"] == [None, 1]
    assert "is not a file" in cli("distill", "--teacher", run, "--student", "tiny", "--layer-map", "@nope.json",
                                  "--out", tmp_path / "x", code=2).output
    (tmp_path / "bad.json").write_text("{}")
    assert "no best.layer_map" in cli("distill", "--teacher", run, "--student", "tiny", "--layer-map",
                                      f"@{tmp_path / 'bad.json'}", "--out", tmp_path / "x", code=2).output


# ---------------------------------------------------------------------------- int8 through torchao
IDS = torch.randint(7, 500, (2, 12), generator=torch.Generator().manual_seed(1))


def test_int8_goes_through_torchao_and_round_trips(tmp_path):
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny-bert", head="cls", n_classes=2)).eval()
    ckpt.save_checkpoint(tmp_path / "fp", model.state_dict(), model.config)
    with torch.no_grad():
        ref = model(IDS).logits
        q = qmod.quantize_(copy.deepcopy(model), qmod.Int8Config())  # the front door
        got = q(IDS).logits
    assert qmod.int8_backend() == "torchao"
    assert type(q.blocks[0].attn.qkv.weight).__name__ == "Int8Tensor"
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3
    summary = qmod.quantize_checkpoint(tmp_path / "fp", tmp_path / "i8", "int8")
    assert summary["drift"]["cosine"] > 0.99 and summary["drift"]["batch"].startswith("random tokens")
    block = json.loads((tmp_path / "i8" / "config.json").read_text())["quantization"]
    assert block["backend"] == "torchao" and "Int8DynamicActivationInt8WeightConfig" in block["api"]
    loaded = ckpt.load_model(tmp_path / "i8")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, got)  # the stored codes and per-row scales rebuild the same model


def test_int8_torch_ao_fallback_dirs_still_load(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny-bert", n_layers=1)).eval()
    q = qmod.int8_dynamic(model, backend="torch.ao")
    assert q.blocks[0].attn.qkv.__module__.startswith("torch.ao")
    qmod.save_int8(q, tmp_path / "old")
    assert json.loads((tmp_path / "old" / "config.json").read_text())["quantization"]["backend"] == "torch.ao"
    with torch.no_grad():
        assert torch.equal(ckpt.load_model(tmp_path / "old")(IDS).logits, q(IDS).logits)
    with pytest.raises(qmod.CompressionError, match="unknown int8 backend"):
        qmod.int8_dynamic(model, backend="fbgemm")
