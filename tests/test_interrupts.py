"""A real SIGINT / SIGTERM to every training verb: it stops at the first signal, writes no finished-looking
artifact, says how to go on, and exits 130; where the verb has resumable state, it is there and a rerun with
--resume auto completes.

Each verb runs as ``python -m morphlm ...`` on tiny data with far more steps than it can finish. The signal is
sent only once the run has demonstrably started training: fit() logs "training steps A-B" after installing
its stop handler, and runs with an --out directory append to metrics.jsonl; so delivery does not depend on
timing even on a loaded machine.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clihelp import cli

ROOT = Path(__file__).resolve().parents[1]
STARTED = "training steps"  # fit()'s first log line, written once its stop handler is in place
DATA = ["--corpus", "stdlib", "--max-bytes", "200000"]
TINY = ["--preset", "tiny", *DATA, "--seq-len", "32", "--batch-size", "4"]
MANY = "100000"  # steps no run here can finish


class Run:
    """``python -m morphlm ARGS`` with its output collected as it comes (tqdm bars write \\r, not lines)."""

    def __init__(self, *args, cwd: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "morphlm", *map(str, args)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self._threads = [threading.Thread(target=self._pump, args=(s, k), daemon=True)
                         for s, k in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self._threads:
            t.start()

    def _pump(self, stream, key):
        for chunk in iter(lambda: stream.read1(4096), b""):
            self._chunks[key].append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks["out"] + self._chunks["err"]).decode(errors="replace")

    def wait_until(self, started, timeout: float = 240.0) -> None:
        """Poll ``started()`` (every 50 ms) until it holds; fail if the process ends first."""
        deadline = time.time() + timeout
        while not started():
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.proc.returncode}) before it started training:\n"
                                     f"{self.output[-3000:]}")
            if time.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"no sign of training after {timeout:.0f} s:\n{self.output[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int, timeout: float = 180.0) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running {timeout:.0f} s after the signal:\n{self.output[-3000:]}")
        for t in self._threads:
            t.join(timeout=10)
        return code


def _logged(run: Run):
    return lambda: STARTED in run.output


def _metrics(pattern: str, root: Path):
    """True once some metrics.jsonl matching ``root/pattern`` has a line: the run finished a training step."""
    return lambda: any(p.stat().st_size > 0 for p in root.glob(pattern))


def _stopped(run: Run, sig: int, started) -> str:
    run.wait_until(started)
    code = run.stop(sig)
    out = run.output
    assert code == 130, f"exit {code}\n{out[-3000:]}"
    assert "interrupted" in out or "aborted" in out, out[-3000:]
    return out


def _no_artifact(out: Path) -> None:
    """Nothing that looks like a result: no weights, no packed weights, no lineage, no report."""
    if out.exists():
        left = sorted(p.name for p in out.iterdir())
        assert not {"model.safetensors", "lineage.json", "config.json", "packed.safetensors",
                    "prompt.safetensors"} & set(left), left


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny causal LM trained 2 steps on the stdlib corpus (its lineage records the data: QAT and the
    learned growth operators read it), and a small labelled task."""
    root = tmp_path_factory.mktemp("interrupts")
    cli("train", *TINY, "--max-steps", 2, "--out", root / "lm")
    words = "good great fine bad awful poor the a film plot was".split()
    rows = ["sentence\tlabel"] + [f"{words[i % 11]} {words[(3 * i) % 11]} {words[(7 * i) % 11]}\t{i % 2}"
                                  for i in range(64)]
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    (root / "dev.tsv").write_text("\n".join(rows[:17]) + "\n")
    return root


# ------------------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_stops_saves_and_resumes(tmp_path, sig):
    out = tmp_path / "run"
    run = Run("train", *TINY, "--max-steps", MANY, "--out", out, cwd=tmp_path)
    text = _stopped(run, sig, _metrics("metrics.jsonl", out))
    state = json.loads((out / "state" / "trainer.json").read_text())
    step = state["step"]
    assert 1 <= step < int(MANY)
    assert json.loads((out / "lineage.json").read_text())["steps"] == step  # no claim of the full run
    assert "done:" not in text and "--resume auto" in text and str(out) in text
    cli("train", *TINY, "--max-steps", step + 2, "--out", out, "--resume", "auto")
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == step + 2


# ------------------------------------------------------------------------------------------------- grow
@pytest.mark.parametrize("method,sig", [("ligo", signal.SIGINT), ("mango", signal.SIGTERM)])
def test_grow_with_a_learned_operator(lm, tmp_path, method, sig):
    cfg = json.loads((lm / "lm" / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("weights_sha256",)}
    cfg["n_layers"] = cfg["n_layers"] + 1
    (tmp_path / "t.json").write_text(json.dumps(cfg))
    out = tmp_path / "grown"
    run = Run("grow", lm / "lm", "--to", tmp_path / "t.json", "--method", method, "--out", out, "--steps", MANY,
              cwd=tmp_path)
    text = _stopped(run, sig, _logged(run))
    _no_artifact(out)
    assert "grew" not in text and "nothing was saved" in text


# ------------------------------------------------------------------------------------------------- compress
def test_distill_keeps_resumable_state_only(lm, tmp_path):
    out = tmp_path / "student"
    run = Run("distill", "--teacher", lm / "lm", "--student", "teacher", "--n-layers", 1, "--stage", "general",
              *DATA, "--seq-len", 32, "--batch-size", 4, "--max-steps", MANY, "--out", out, cwd=tmp_path)
    text = _stopped(run, signal.SIGTERM, _metrics("metrics.jsonl", out))
    step = json.loads((out / "state" / "trainer.json").read_text())["step"]
    assert 1 <= step < int(MANY)
    assert json.loads((out / "lineage.json").read_text())["steps"] == step  # the state reached, nothing more
    assert "params vs teacher" not in text and "--resume auto" in text


def test_extract_stops_on_sigterm(lm, tmp_path):
    out = tmp_path / "student"
    run = Run("extract", lm / "lm", "--method", "impt", "--n-layers", 1, "--n-batches", MANY, "--out", out,
              cwd=tmp_path)
    text = _stopped(run, signal.SIGTERM, lambda: "importance" in run.output)
    _no_artifact(out)
    assert "extracted" not in text


def test_quantize_qat_writes_no_packed_checkpoint(lm, tmp_path):
    out = tmp_path / "q"
    run = Run("quantize", lm / "lm", "--method", "ternary", "--steps", MANY, "--out", out, cwd=tmp_path)
    text = _stopped(run, signal.SIGINT, _logged(run))
    _no_artifact(out)
    assert "smaller" not in text and "nothing was saved" in text


# ------------------------------------------------------------------------------------------------- search
def test_search_layermap(lm, tmp_path):
    report = tmp_path / "layermap.json"
    run = Run("search", "layermap", "--teacher", lm / "lm", "--student", "teacher", "--n-layers", 1, *DATA,
              "--task-train", lm / "train.tsv", "--task-val", lm / "dev.tsv", "--gd-steps", MANY, "--batch-size", 4,
              "--seq-len", 32, "--budget", 3, "--population", 3, "--elitism", 1, "--out", report, cwd=tmp_path)
    _stopped(run, signal.SIGINT, _logged(run))
    assert not report.exists()


def test_search_arch_supernet_training(tmp_path):
    sdir = tmp_path / "supernet"
    run = Run("search", "arch", sdir, "--train-supernet", *TINY, "--max-steps", MANY, cwd=tmp_path)
    text = _stopped(run, signal.SIGINT, _metrics("metrics.jsonl", sdir))
    step = json.loads((sdir / "state" / "trainer.json").read_text())["step"]
    assert 1 <= step < int(MANY) and "--resume auto" in text


# ------------------------------------------------------------------------------------------------- prompt tuning
def test_prompt_tune(lm, tmp_path):
    out = tmp_path / "prompt"
    run = Run("prompt-tune", lm / "lm", "--task-train", lm / "train.tsv", "--task-val", lm / "dev.tsv",
              "--out", out, "--steps", MANY, "--reading", "causal", "--batch-size", 8, "--max-len", 16,
              "--prompt-len", 2, "--eval-every", MANY, cwd=tmp_path)
    _stopped(run, signal.SIGINT, _logged(run))
    _no_artifact(out)


# ------------------------------------------------------------------------------------------------- benchmarks
def test_bench_growth(tmp_path):
    work, res = tmp_path / "work", tmp_path / "growth.json"
    run = Run("bench", "growth", "--quick", *DATA, "--steps", MANY, "--methods", "stack", "--workers", 1,
              "--work-dir", work, "--out", res, cwd=tmp_path)
    _stopped(run, signal.SIGTERM, _metrics("sources/*/metrics.jsonl", work))
    assert not res.exists() and not list(work.glob("sources/*/DONE"))


@pytest.mark.slow
def test_bench_compression(tmp_path, shared_data):
    cache, res = tmp_path / "cache", tmp_path / "compression.json"
    run = Run("bench", "compression", "--quick", "--teacher", "own", "--arms", "scratch", "--data-dir", shared_data, "--cache-dir",
              cache, "--out", res, cwd=tmp_path)
    _stopped(run, signal.SIGINT, _metrics("**/metrics.jsonl", cache))
    assert not res.exists() and not list(cache.rglob("scratch-s0.json"))


def test_bench_fpt(lm, tmp_path):
    res = tmp_path / "fpt.json"
    run = Run("bench", "fpt", "--size", "quick", "--model", lm / "lm", "--task-train", lm / "train.tsv",
              "--task-val", lm / "dev.tsv", "--out", res, cwd=tmp_path)
    _stopped(run, signal.SIGINT, _logged(run))
    assert not res.exists()


# ------------------------------------------------------------------------------------------------- demo
@pytest.mark.slow
def test_demo_does_not_grow_a_half_trained_source(tmp_path):
    out = tmp_path / "demo"
    run = Run("demo", "--out", out, "--steps", 300000, cwd=tmp_path)
    text = _stopped(run, signal.SIGTERM, _metrics("source/metrics.jsonl", out))
    assert not list(out.glob("grown-*")) and not (out / "scratch").exists() and not (out / "summary.json").exists()
    assert 1 <= json.loads((out / "source" / "state" / "trainer.json").read_text())["step"] < 100000
    assert "[2/4]" not in text and "morphlm demo --out" in text
