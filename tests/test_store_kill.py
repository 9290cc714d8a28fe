"""The checkpoint store under SIGKILL and concurrency, with the real `morphlm train` (issue 11).

Kill suite: one run is SIGKILLed again and again — at random moments and inside its save (while staging,
right after COMMIT, between the moves, before the staging folder goes) — and after every kill the
directory reads as a whole checkpoint; resumed to the end it is bit-exact with an uninterrupted run
(same canonical fingerprint, same losses). Concurrency: a reader loop during saves every step never
crashes the trainer nor sees a torn checkpoint, and a second writer fails at once naming the PID."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from morphlm.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "200000", "--batch-size", "4",
         "--seq-len", "32", "--save-every", "1", "--resume", "auto", "--progress", "false", "--eval-every", "0"]

# Runs `morphlm train`; with MORPHLM_TEST_KILL="PHASE:K:SAVE" it SIGKILLs itself inside save number SAVE:
# at the K-th staged file (stage), before the K-th move out of staging (move) or before the staging
# folder is removed (rmtree). The hooks wrap the store's own calls; the production code is unchanged.
WRAPPER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import morphlm.train.checkpoint as c
spec = os.environ.get("MORPHLM_TEST_KILL")
if spec:
    phase, k, target = spec.split(":")
    k, target = int(k), int(target)
    seen = {{"save": 0, "n": 0}}
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    def armed():
        return seen["save"] == target
    real_save, real_write, real_replace, real_rmtree = c.save_checkpoint, c.write_atomic, c.os.replace, c.shutil.rmtree
    def save(*a, **kw):
        seen["save"] += 1
        return real_save(*a, **kw)
    def write(path, data):
        if armed() and phase == "stage":
            seen["n"] += 1
            if seen["n"] == k:
                die()
        return real_write(path, data)
    def replace(src, dst):
        if armed() and phase == "move" and ".staging" in str(src) and ".staging" not in str(dst):
            seen["n"] += 1
            if seen["n"] == k:
                die()
        return real_replace(src, dst)
    def rmtree(path, *a, **kw):
        if armed() and phase == "rmtree" and str(path).endswith(".staging"):
            die()
        return real_rmtree(path, *a, **kw)
    c.save_checkpoint, c.write_atomic, c.shutil.rmtree = save, write, rmtree
    c.os.replace = replace
from morphlm.cli import main
sys.argv = ["morphlm"] + sys.argv[1:]
main()
"""


def _cmd(out, steps):
    return [sys.executable, "-c", WRAPPER.format(root=str(ROOT)), *TRAIN, "--max-steps", str(steps), "--out", str(out)]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(random.randrange(1000)), **extra}


def _losses(run):
    return {r["step"]: r["loss"] for r in ckpt.read_metrics(run)}


def _log_lines(run):
    try:
        return (run / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _assert_whole(run):
    """After any kill the directory is no checkpoint yet or a whole, verified one."""
    if not ckpt.has_checkpoint(run):
        return 0
    ckpt.load_model(run)
    state, _ = ckpt.load_trainer_state(run)
    return state["step"]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_exact(tmp_path):
    steps = 30
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, steps), env=_env(), check=True, capture_output=True, timeout=300)
    rng = random.Random(11)
    run = tmp_path / "run"
    kills, inside = 0, 0
    for trial in range(12):
        step_before = _assert_whole(run)
        if trial % 2:  # inside the save: a random phase of its first or second save
            phase = rng.choice(["stage", "stage", "move", "move", "rmtree"])
            spec = f"{phase}:{rng.randint(1, 5)}:{rng.randint(1, 2)}"
            proc = subprocess.run(_cmd(run, steps), env=_env(MORPHLM_TEST_KILL=spec), capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode == -signal.SIGKILL:
                inside += 1
            else:  # k past the save's files: the run went on to the end — start it over to keep killing
                assert proc.returncode == 0, proc.stderr[-2000:]
        else:  # a random moment once training runs: inside a step or a save, whichever it is in
            lines = _log_lines(run)
            proc = subprocess.Popen(_cmd(run, steps), env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 240
            while _log_lines(run) <= lines and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            proc.wait(timeout=60)
        kills += 1
        assert _assert_whole(run) >= step_before  # never a torn or older checkpoint
        if _assert_whole(run) >= steps:  # the run reached its end: keep killing a fresh one
            run = tmp_path / f"run{trial}"
    assert kills >= 10 and inside >= 4, (kills, inside)
    done = subprocess.run(_cmd(run, steps), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ckpt.load_trainer_state(run)[0]["step"] == steps
    assert ckpt.model_fingerprint(run) == ckpt.model_fingerprint(ref)
    assert _losses(run) == _losses(ref)
    assert not (run / ".staging").exists()


@pytest.mark.slow
def test_readers_during_saves_and_a_second_writer(tmp_path):
    run = tmp_path / "r"
    trainer = subprocess.Popen(_cmd(run, 100_000), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.has_trainer_state(run):
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()[1][-2000:]
            time.sleep(0.05)
        # readers in a loop while the trainer saves every step: each read is a whole, verified checkpoint
        steps_seen, t_end = [], time.monotonic() + 8
        while time.monotonic() < t_end:
            model = ckpt.load_model(run)
            state, _ = ckpt.load_trainer_state(run)
            ckpt.read_config(run), ckpt.load_tokenizer_json(run), ckpt.total_flops(run), ckpt.read_metrics(run)
            assert model is not None
            steps_seen.append(state["step"])
        assert steps_seen == sorted(steps_seen) and len(set(steps_seen)) > 3, steps_seen
        # a second writer of the same directory fails at once, naming the first one's PID
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "morphlm", *TRAIN, "--max-steps", "5", "--out", str(run)],
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"process {trainer.pid}" in second.stderr and "Traceback" not in second.stderr
        assert time.monotonic() - t0 < 120
        assert trainer.poll() is None  # the first run was not disturbed
    finally:
        trainer.send_signal(signal.SIGINT)
        _, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 130 and "Traceback" not in err, err[-2000:]
    state, _ = ckpt.load_trainer_state(run)
    assert state["step"] >= max(steps_seen)
    assert json.loads((run / "config.json").read_text())["fingerprint"] == ckpt.model_fingerprint(run)
