"""End-to-end CLI runs on tiny data, including every bad input the issue lists."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


SMALL = ["--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "300000", "--seq-len", "64", "--batch-size", "8"]
from clihelp import cli


def losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    cli("train", *SMALL, "--max-steps", 20, "--out", out)
    return out


def test_resume_equals_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # the LR schedule spans --schedule-steps (default --max-steps), so a run meant to be extended names its final length
    cli("train", *SMALL, "--max-steps", 40, "--schedule-steps", 80, "--out", a)
    cli("train", *SMALL, "--max-steps", 80, "--out", a, "--resume", "auto")
    cli("train", *SMALL, "--max-steps", 80, "--out", b)
    la, lb = losses(a), losses(b)
    assert len(la) == 80 and la == lb
    lineage = json.loads((a / "lineage.json").read_text())
    assert lineage["steps"] == 80 and lineage["flops"] > 0


def test_eval_text_and_json(trained):
    res = cli("eval", trained, "--json")
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"val_loss", "perplexity"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["val_loss"], rel=1e-6)
    text = cli("eval", trained).stdout
    assert "val_loss" in text and "perplexity" in text


def test_generate(trained):
    res = cli("generate", trained, "--prompt", "def ", "--max-new-tokens", 10, "--n", 2)
    assert res.stdout.count("def ") >= 2
    # more new tokens than the context holds: the KV cache cannot serve it, the sliding window does
    ctx = json.loads((trained / "config.json").read_text())["max_seq_len"]
    res = cli("generate", trained, "--prompt", "def ", "--max-new-tokens", ctx + 5, "--temperature", 0)
    assert res.stdout.startswith("def ") or "def " in res.stdout


def test_overrides_and_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  preset: tiny-llama\n  n_layers: 1\ndata:\n  corpus: stdlib\n  max_bytes: 200000\n"
                      "  seq_len: 32\n  batch_size: 4\ntrain:\n  max_steps: 3\n  lr: 0.001\n")
    cli("train", "--config", recipe, "--out", tmp_path / "r", "--d-model", 32, "--set", "warmup_steps=1")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["n_layers"] == 1 and cfg["d_model"] == 32 and cfg["norm"] == "rmsnorm"
    trainer = json.loads((tmp_path / "r" / "state" / "trainer.json").read_text())
    assert trainer["args"]["warmup_steps"] == 1 and trainer["args"]["lr"] == 0.001


@pytest.mark.parametrize("args, message", [
    (["--corpus", "no-such-corpus"], "stdlib"),
    (["--corpus", "/definitely/missing/file.txt"], "does not exist"),
    (["--d-model", "30"], "not divisible by n_heads"),
    (["--n-heads", "4", "--n-kv-heads", "3"], "n_kv_heads"),
    (["--d-modle", "64"], "did you mean --d-model?"),
    (["--seq-len", "4096"], "max_seq_len"),
])
def test_bad_input_messages(tmp_path, args, message):
    base = ["train", "--preset", "tiny", "--max-steps", "2", "--out", str(tmp_path / "x"), "--max-bytes", "100000"]
    res = cli(*base, *args, code=2)
    assert message in res.output, res.output
    assert "Traceback" not in res.output


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n\n")
    res = cli("train", "--preset", "tiny", "--corpus", tmp_path / "empty.txt", "--max-steps", 2,
              "--out", tmp_path / "x", code=2)
    assert "empty" in res.output.lower()


def test_corrupted_weights_and_newer_format(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-100])
    assert "integrity hash" in cli("eval", bad, code=2).output
    newer = tmp_path / "newer"
    shutil.copytree(trained, newer)
    cfg = json.loads((newer / "config.json").read_text())
    cfg["format_version"] = 2
    (newer / "config.json").write_text(json.dumps(cfg))
    assert "newer than this morphlm reads" in cli("eval", newer, code=2).output


def test_tokenizer_vocabulary_mismatch(trained, tmp_path):
    import shutil

    from morphlm.data import load_corpus, train_tokenizer

    bad = tmp_path / "vocab"
    shutil.copytree(trained, bad)
    docs = load_corpus("stdlib", max_bytes=300_000)
    big = train_tokenizer((d.text for d in docs), 1024)
    assert big.vocab_size > 512  # the model was built for 512 tokens
    (bad / "tokenizer.json").write_text(big.to_json_str())
    res = cli("eval", bad, code=2)
    assert f"the tokenizer has {big.vocab_size} tokens" in res.output and "vocab_size" in res.output


def test_resume_with_different_model_is_refused(trained, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(trained, run)
    res = cli("train", *SMALL, "--max-steps", 30, "--out", run, "--resume", "auto", "--d-model", 32, code=2)
    assert "different model" in res.output


def test_existing_run_is_not_overwritten(trained):
    res = cli("train", *SMALL, "--max-steps", 30, "--out", trained, code=2)
    assert "--resume auto" in res.output


def test_convert_roundtrip(trained, tmp_path):
    pytest.importorskip("transformers")
    cli("convert", trained, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    cli("convert", tmp_path / "hf", tmp_path / "back")
    from morphlm.train.checkpoint import load_model

    a, b = load_model(trained), load_model(tmp_path / "back")
    for k, v in a.state_dict().items():
        assert (v - b.state_dict()[k]).abs().max() == 0
    assert "not empty" in cli("convert", trained, tmp_path / "hf", code=2).output


def test_data_commands():
    assert "stdlib" in cli("data", "list").stdout
    res = cli("data", "prepare", "stdlib", "--vocab-size", 512, "--max-bytes", 300000)
    assert json.loads(res.stdout[res.stdout.index("{"):])["n_train_tokens"] > 0


def test_classifier_finetune_on_sst2(shared_data, trained, tmp_path):
    lines = (shared_data / "glue-sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:1201]) + "\n")
    dev = shared_data / "glue-sst2" / "dev.tsv"
    out = tmp_path / "cls"
    cli("train", "--preset", "tiny", "--head", "cls", "--causal", "true", "--init", trained, "--task-train",
        tmp_path / "train.tsv", "--task-val", dev, "--max-steps", 30, "--batch-size", 16, "--seq-len", 64,
        "--lr", 1e-3, "--out", out)
    metrics = json.loads(cli("eval", out, "--json").stdout.strip().splitlines()[-1])
    assert {"val_loss", "accuracy"} <= set(metrics) and "perplexity" not in metrics  # no ppl for a classifier
    assert 0.0 <= metrics["accuracy"] <= 1.0
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parents"][0]["flops"] > 0


@pytest.mark.slow
def test_ctrl_c_saves_cleanly(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "morphlm", "train", *SMALL, "--max-steps", "100000", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    state = json.loads((out / "state" / "trainer.json").read_text())
    assert state["step"] >= 3 and state["step"] == len(losses(out))
    assert "--resume auto" in err


def test_eval_without_trainer_state_uses_lineage_data(trained, tmp_path):
    import shutil

    run = tmp_path / "weights-only"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "state")
    lineage = json.loads((run / "lineage.json").read_text())
    lineage["data"] = {**lineage["data"], "corpus": str(tmp_path / "the-parents-corpus.txt")}
    (run / "lineage.json").write_text(json.dumps(lineage))
    assert "the-parents-corpus.txt" in cli("eval", run, code=2).output  # the lineage's corpus was looked for
    res = cli("eval", run, "--corpus", "stdlib", "--json")
    assert "val_loss" in json.loads(res.stdout.strip().splitlines()[-1])
