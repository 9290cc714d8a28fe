"""The throughput benchmark (morphlm/bench/throughput.py, ``morphlm bench throughput``, and its thin script
benchmarks/throughput.py): the --quick run writes a well-formed results JSON; the summary and the README
table are computed from it. Correctness only: nothing here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("transformers")

from benchmarks.common import git_commit, json_safe, read_json, write_json  # noqa: E402
from morphlm.bench import throughput as tp  # noqa: E402
from morphlm.model import ModelConfig, TransformerLM  # noqa: E402


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "tmp" / "x.json"
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads(out.read_text())


def test_quick_json_schema(quick):
    _, data = quick
    assert data["benchmark"] == "throughput" and data["schema_version"] == tp.SCHEMA_VERSION
    for key in ("machine", "torch", "transformers", "commit", "timestamp", "summary", "cpu", "goals"):
        assert key in data, key
    assert data["torch"] == torch.__version__
    assert isinstance(data["machine"]["cpu"], str) and data["machine"]["cores"] >= 1
    assert "gpu" in data["machine"]
    assert data["commit"] is None or len(data["commit"].removesuffix("-dirty")) == 40

    s = data["summary"]
    for key in ("cpu_speedup_vs_hf", "cpu_speedup_by_arch", "gpu_mfu_124m", "gpu_speedup_vs_hf_compiled"):
        assert key in s, key
    assert s["gpu_mfu_124m"] is None  # nothing measured on a GPU here
    assert set(s["cpu_speedup_by_arch"]) == {"tiny", "tiny-llama"}
    assert s["cpu_speedup_vs_hf"] == pytest.approx(min(s["cpu_speedup_by_arch"].values()))
    assert s["cpu_quick"] is True

    cpu = data["cpu"]
    for key in ("machine", "torch", "transformers", "commit", "timestamp", "settings", "runs"):
        assert key in cpu, key
    assert cpu["settings"]["quick"] and cpu["settings"]["batch"] == 4 and cpu["settings"]["seq"] == 64
    runs = cpu["runs"]
    assert {(r["impl"], r["preset"]) for r in runs} == {(i, p) for i in ("morphlm", "hf") for p in ("tiny", "tiny-llama")}
    for r in runs:
        assert r["error"] is None, r["error"]
        assert r["mode"] == "eager" and r["compile"] is False and r["device"] == "cpu"
        assert r["tokens_per_step"] == r["batch"] * r["seq"] == 256
        assert r["tok_per_s"] > 0 and r["step_time_s"] > 0 and r["flops_per_token"] > 0
        assert r["tok_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
        assert r["mfu"] is None  # no peak FLOP/s for a CPU
        assert len(r["rounds"]) == cpu["settings"]["rounds"]
        for rnd in r["rounds"]:
            assert len(rnd["step_times_s"]) == cpu["settings"]["steps"]
            assert rnd["first_loss"] > 0
    # same weights and the same first batch: both sides start from the same loss
    for preset in ("tiny", "tiny-llama"):
        first = {r["impl"]: r["rounds"][0]["first_loss"] for r in runs if r["preset"] == preset}
        assert first["morphlm"] == pytest.approx(first["hf"], abs=1e-3)
        by_impl = {r["impl"]: r for r in runs if r["preset"] == preset}
        assert by_impl["morphlm"]["params"] == by_impl["hf"]["params"]
        assert "same weights" in by_impl["hf"]["note"]


def test_table_renders_from_results(quick):
    out, data = quick
    proc = _run("--table", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "| model | params | morphlm tok/s | HF tok/s | morphlm ÷ HF |" in lines
    rows = [line for line in lines if line.startswith("| tiny")]
    assert len(rows) == 2
    ratio = data["summary"]["cpu_speedup_by_arch"]["tiny"]
    assert f"{ratio:.2f}×" in rows[0]


def test_quick_never_overwrites_committed_results():
    before = tp.DEFAULT_OUT.read_bytes() if tp.DEFAULT_OUT.exists() else None
    proc = _run("--quick", "--out", str(tp.DEFAULT_OUT), timeout=120)
    assert proc.returncode == 2 and "overwrite" in proc.stderr
    after = tp.DEFAULT_OUT.read_bytes() if tp.DEFAULT_OUT.exists() else None
    assert before == after


def _run_entry(impl, preset, mode, tps, mfu=None, variant=None, batch=16, micro=16, seq=1024):
    return {"name": f"{impl}/{preset}/{mode}", "impl": impl, "preset": preset, "mode": mode, "variant": variant,
            "batch": batch, "micro_batch": micro, "seq": seq, "tokens_per_step": batch * seq, "tok_per_s": tps,
            "mfu": mfu, "params": 1, "step_time_s": batch * seq / tps, "peak_mem_gib": 1.0, "error": None}


def test_summary_and_merge_of_cpu_and_gpu_sections(tmp_path):
    gpu = {"machine": {"gpu": "NVIDIA H100 80GB HBM3"}, "torch": "2.11", "transformers": "5.17", "commit": None,
           "timestamp": "t", "settings": {"batch": 16, "seq": 1024, "steps": 20, "warmup": 10},
           "runs": [_run_entry("morphlm", "gpt2-small", "eager", 200e3, 0.2),
                    _run_entry("hf", "gpt2-small", "eager", 160e3, 0.16),
                    _run_entry("morphlm", "gpt2-small", "compiled", 380e3, 0.38),
                    _run_entry("hf", "gpt2-small", "compiled", 280e3, 0.28),
                    _run_entry("morphlm", "gpt2-small", "compiled", 400e3, 0.40, variant="cudnn-attn"),
                    # neither a larger global batch nor the model outside fit() is the 16x1024 headline
                    _run_entry("morphlm", "gpt2-small", "compiled", 500e3, 0.50, variant="plain-loop"),
                    _run_entry("morphlm", "gpt2-small", "compiled", 450e3, 0.45, variant="accum32x16", batch=32)]}
    out = tmp_path / "r.json"
    write_json(out, {"gpu": gpu})
    # a CPU run into the same file keeps the GPU section and recomputes the summary from both
    rec = tp.Recorder(out, "cpu", {"batch": 8, "seq": 256, "quick": False}, None)
    cfg = ModelConfig.from_name("tiny")
    for preset, (m, h) in {"gpt-20m": (1200.0, 1000.0), "llama-20m": (900.0, 1000.0)}.items():
        for impl, tps in (("morphlm", m), ("hf", h)):
            e = rec.entry(impl, preset, cfg, "eager", None, batch=8, micro_batch=8, seq=256,
                          device=torch.device("cpu"), n_params=1)
            rec.add_round(e, {"tok_per_s": tps, "peak_mem_gib": None})
    data = read_json(out)
    assert data["gpu"]["runs"] == gpu["runs"]
    # the headline machine: CPU of the CPU run, GPU of the GPU run
    assert data["machine"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert data["machine"]["cpu"] == data["cpu"]["machine"]["cpu"] and data["machine"]["cores"] >= 1
    s = data["summary"]
    assert s["cpu_speedup_by_arch"] == {"gpt-20m": pytest.approx(1.2), "llama-20m": pytest.approx(0.9)}
    assert s["cpu_speedup_vs_hf"] == pytest.approx(0.9)
    assert s["gpu_mfu_124m"] == pytest.approx(0.40)
    assert s["gpu_speedup_vs_hf_compiled"] == pytest.approx(400 / 280)
    assert s["gpu_speedup_vs_hf_eager"] == pytest.approx(200 / 160)
    assert s["goals_met"] == {"cpu_speedup_vs_hf": False, "gpu_speedup_vs_hf_compiled": True, "gpu_mfu_124m": True}
    table = tp.render_table(data)
    assert "morphlm gpt2-small compiled (cudnn-attn)" in table and "1.43×" in table


def test_synthetic_tokens_follow_the_loop_contract():
    data = tp.SyntheticTokens(batch=3, seq=16, vocab=50, seed=1)
    b = data.train_batch(5)
    assert b["input_ids"].shape == b["labels"].shape == (3, 16)
    assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])  # labels are pre-shifted
    assert torch.equal(data.train_batch(5)["input_ids"], tp.SyntheticTokens(3, 16, 50, seed=1).train_batch(5)["input_ids"])
    assert torch.equal(data.hf_batch(5), b["input_ids"])
    assert len(data.val_batches()) == 1


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_hand_built_hf_config_has_the_native_shapes(preset):
    """The last-resort HF baseline (when to_hf_module fails on some transformers version) must be the
    same network: same parameter count, same logits shape."""
    import transformers

    model = TransformerLM(ModelConfig.from_name(preset))
    hf = transformers.AutoModelForCausalLM.from_config(tp._direct_hf_config(model.config), attn_implementation="sdpa")
    assert sum(p.numel() for p in hf.parameters()) == model.num_parameters()
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    assert hf(input_ids=x).logits.shape == model(x).logits.shape


def test_common_helpers():
    assert json_safe({"a": [float("nan"), 1.0, float("inf")]}) == {"a": [None, 1.0, None]}
    commit = git_commit()
    assert commit is None or len(commit.removesuffix("-dirty")) == 40


def test_cli_command_table_and_bad_settings(quick, tmp_path):
    """``morphlm bench throughput`` is the same benchmark: its table matches the script's, bad settings and a
    missing results file are one clear line and exit status 2, and --quick refuses the committed file."""
    from typer.testing import CliRunner

    from morphlm.cli import app

    out, data = quick
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "throughput", "--table", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == tp.render_table(data).strip()
    missing = runner.invoke(app, ["bench", "throughput", "--table", "--out", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "no results" in missing.output
    bad = runner.invoke(app, ["bench", "throughput", "--quick", "--out", str(tmp_path / "x.json"), "--modes", "fast"])
    assert bad.exit_code == 2 and "invalid settings" in bad.output and not (tmp_path / "x.json").exists()
    committed = runner.invoke(app, ["bench", "throughput", "--quick", "--out", str(tp.DEFAULT_OUT)])
    assert committed.exit_code == 2 and "overwrite" in committed.output
