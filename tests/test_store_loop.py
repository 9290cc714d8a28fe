"""The training loop's part of the store's reliability: divergence never reaches the disk, hyperparameters are
checked when parsed, a resume is the same run (or an override on record), a run that cannot fit is refused
before it starts, a step outliving a stop signal is aborted, fit() holds the writer lock, and killed token-store
builds leave no temporary files behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clihelp import cli
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train import memory
from morphlm.train.loop import TrainArgs, TrainingDiverged, TrainingInterrupted, fit
from toydata import ToyData

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "300000", "--progress", "false"]
RUN = [*DATA, "--batch-size", "4", "--seq-len", "64"]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The issue's A: 20 steps of a tiny model."""
    out = tmp_path_factory.mktemp("loop") / "A"
    cli("train", *RUN, "--max-steps", 20, "--out", out)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _weights(run):
    return ckpt.load_state_dict(run)[0]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _eval_loss(run):
    res = cli("eval", run, "--json", "--max-batches", 2)
    return json.loads(res.stdout.strip().splitlines()[-1])["val_loss"]


def _model():
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.from_name("tiny"))


def _args(out, steps, **kw):
    base = dict(out_dir=str(out) if out else None, max_steps=steps, schedule_steps=30, warmup_steps=2, lr=3e-3,
                progress=False, resume="auto", eval_at_end=False)
    base.update(kw)
    return TrainArgs(**base)


# ---------------------------------------------------------------------------- Why 2: divergence
def test_divergence_on_resume_keeps_the_last_good_checkpoint(run_a, tmp_path):
    """cp -r A N; train --max-steps 40 --save-every 1 --resume auto --lr 1e6: exit 1, N still holds step 20."""
    n = _copy(run_a, tmp_path / "N")
    res = cli("train", *RUN, "--max-steps", 40, "--save-every", 1, "--out", n, "--resume", "auto", "--lr", 1e6,
              "--override", code=1)
    assert "holds step 20" in res.output and "not saved" in res.output
    assert ckpt.load_trainer_state(n)[0]["step"] == 20
    assert _same_weights(n, run_a)
    loss = _eval_loss(n)
    assert loss == loss and loss < 20 and loss == _eval_loss(run_a)  # finite, and the pre-divergence state's


def test_divergence_in_the_last_step_is_not_saved(run_a, tmp_path):
    """--max-steps 21 --lr 1e6: the final validation loss is NaN, so the final save is refused (exit 1)."""
    n = _copy(run_a, tmp_path / "N")
    res = cli("train", *RUN, "--max-steps", 21, "--out", n, "--resume", "auto", "--lr", 1e6, "--override", code=1)
    assert "holds step 20" in res.output and "done:" not in res.output
    assert ckpt.load_trainer_state(n)[0]["step"] == 20 and _same_weights(n, run_a)


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient: a finite loss with a non-finite gradient norm."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_non_finite_gradient_skips_the_update_and_keeps_the_checkpoint(tmp_path, grad_clip):
    run = tmp_path / "r"
    model = _model()
    at = {"step": None}

    class Mark:
        def on_step_begin(self, state):
            at["step"] = state.step

    def loss_fn(m, batch):
        loss = m(**batch).loss
        return _InfGrad.apply(loss) if at["step"] == 5 else loss

    with pytest.raises(TrainingDiverged, match=r"gradient norm became (inf|nan) at step 6") as exc:
        fit(model, loss_fn, ToyData(), _args(run, 10, save_every=1, grad_clip=grad_clip), callbacks=[Mark()])
    assert exc.value.saved_step == 5 and "holds step 5" in str(exc.value)
    assert ckpt.load_trainer_state(run)[0]["step"] == 5
    saved = _weights(run)
    assert all(torch.isfinite(t).all() for t in saved.values())
    # the update was skipped: the weights in memory are still the saved step-5 weights
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)


def test_non_finite_weights_are_never_saved(tmp_path):
    """Weights that turned NaN in the last update (here: written by a callback) are caught by the check before
    the save: the periodic checkpoint before them stays, and the error says which step it holds."""
    run = tmp_path / "r"

    class Corrupt:
        def on_step_end(self, st, record):
            if st.step == 4:
                with torch.no_grad():
                    st.raw_model.tok_emb.weight[0, 0] = float("nan")

    with pytest.raises(TrainingDiverged, match="weights hold non-finite values") as exc:
        fit(_model(), None, ToyData(), _args(run, 12, save_every=2), callbacks=[Corrupt()])
    assert exc.value.saved_step == 2 and "holds step 2" in str(exc.value)
    assert ckpt.load_trainer_state(run)[0]["step"] == 2
    assert all(torch.isfinite(t).all() for t in _weights(run).values())


@pytest.mark.parametrize("flag, value, needle", [
    ("--set", "lr=inf", "lr=inf is not a finite number"),
    ("--set", "lr=abc", "lr='abc': not a number"),
    ("--set", "grad_clip=nan", "grad_clip=nan is not a finite number"),
    ("--lr", "inf", "lr=inf is not a finite number"),
    ("--lr", "-1", "lr=-1.0 must be > 0"),
    ("--set", "beta2=1.5", "betas must be in [0, 1)"),
    ("--set", "eval_every=2.5", "eval_every='2.5': not an integer"),
    ("--warmup-steps", "50", "warmup_steps=50 is longer than the LR schedule"),
])
def test_bad_hyperparameters_are_refused_when_parsed(tmp_path, flag, value, needle):
    res = cli("train", *RUN, "--max-steps", 5, "--out", tmp_path / "r", flag, value, code=2)
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_train_args_validation_names_the_field():
    for bad, needle in [(dict(grad_clip=float("nan")), "grad_clip=nan"), (dict(lr="abc"), "lr='abc' must be a number"),
                        (dict(adam_eps=0.0), "adam_eps=0.0 must be > 0"), (dict(save_every=True), "save_every=True"),
                        (dict(stop_grace_s=float("inf")), "stop_grace_s=inf")]:
        with pytest.raises(ValueError, match="invalid training arguments") as exc:
            TrainArgs(**bad).validate()
        assert needle in str(exc.value)


# ---------------------------------------------------------------------------- Why 6: resume = the same run
@pytest.mark.parametrize("flag, value, name", [
    ("--batch-size", 8, "batch_size 4 vs 8"),
    ("--seq-len", 32, "seq_len 64 vs 32"),
    ("--seed", 1, "seed 0 vs 1"),
    ("--max-bytes", 200000, "max_bytes 300000 vs 200000"),
    ("--lr", 1e-3, "lr 0.0003 vs 0.001"),
    ("--warmup-steps", 2, "warmup_steps 20 vs 2"),
    ("--min-lr-ratio", 0.5, "min_lr_ratio 0.1 vs 0.5"),
    ("--precision", "bf16", "precision 'auto' vs 'bf16'"),
])
def test_resume_refuses_a_different_run(run_a, tmp_path, flag, value, name):
    n = _copy(run_a, tmp_path / "N")
    res = cli("train", *RUN, "--max-steps", 22, "--out", n, "--resume", "auto", flag, value, code=2)
    assert name in res.output and "--override" in res.output
    assert ckpt.load_trainer_state(n)[0]["step"] == 20 and _same_weights(n, run_a)


def test_override_resumes_and_records_the_change(run_a, tmp_path):
    n = _copy(run_a, tmp_path / "N")
    cli("train", *DATA, "--batch-size", 8, "--seq-len", 64, "--max-steps", 22, "--out", n, "--resume", "auto",
        "--override")
    records = [json.loads(x) for x in (n / "metrics.jsonl").read_text().splitlines()]
    overrides = [r for r in records if "override" in r]
    assert overrides == [{"override": {"batch_size": {"saved": 4, "now": 8}}, "step": 20}]
    assert records[-1]["step"] == 22 and records[-1]["tokens"] - records[-2]["tokens"] == 8 * 64
    lineage = json.loads((n / "lineage.json").read_text())
    assert lineage["overrides"] == [{"step": 20, "changes": {"batch_size": {"saved": 4, "now": 8}}}]
    # the run is now a batch-8 run: resuming it again needs no override, and its record of the change stays
    cli("train", *DATA, "--batch-size", 8, "--seq-len", 64, "--max-steps", 23, "--out", n, "--resume", "auto")
    assert json.loads((n / "lineage.json").read_text())["overrides"] == lineage["overrides"]


def test_fit_compares_geometry_and_extra_state(tmp_path):
    run = tmp_path / "r"
    fit(_model(), None, ToyData(), _args(run, 2), extra_state={"data_fingerprint": "a"})
    with pytest.raises(ckpt.CheckpointError, match=r"data_fingerprint 'a' vs 'b'.*batch_size 8 vs 4.*seq_len 32 vs 16"
                       ) as exc:
        fit(_model(), None, ToyData(batch_size=4, seq_len=16), _args(run, 4), extra_state={"data_fingerprint": "b"})
    assert "--override" in str(exc.value)


# ---------------------------------------------------------------------------- Why 10: memory, long steps, temp files
def test_estimate_counts_the_issues_run_as_far_too_big():
    cfg = ModelConfig.from_name("tiny", max_seq_len=500000)
    est = memory.estimate_training_memory(cfg, 4, 500000)
    assert est.total > 30 * 2**30 and est.activations > 0.9 * est.total
    eager = memory.estimate_training_memory(cfg, 4, 500000, eager=True)
    assert eager.attention == 4 * cfg.n_heads * 500000**2 * cfg.n_layers * 13
    small = memory.estimate_training_memory(ModelConfig.from_name("tiny"), 8, 32)
    assert small.params == 4 * TransformerLM(ModelConfig.from_name("tiny")).num_parameters()
    assert small.optimizer == 2 * small.params and small.total < 64 * 2**20


def test_a_huge_sequence_is_refused_at_once_with_numbers(run_a, tmp_path):
    start = time.perf_counter()
    res = cli("train", *DATA, "--batch-size", 64, "--seq-len", 500000, "--max-seq-len", 500000, "--max-steps", 2,
              "--out", tmp_path / "big", code=2)
    took = time.perf_counter() - start
    assert took < 3.0, took  # well under a second unloaded; before, one step ran for many minutes
    assert "GiB" in res.output and "available" in res.output and "estimate" in res.output
    assert "--seq-len" in res.output or "--micro-batch-size" in res.output
    assert not (tmp_path / "big").exists()


def test_fit_refuses_what_does_not_fit_and_suggests_micro_batches(tmp_path, monkeypatch):
    need = memory.estimate_training_memory(ModelConfig.from_name("tiny"), 8, 32).total
    monkeypatch.setattr(memory, "available_memory", lambda device: need // 3)
    with pytest.raises(memory.InsufficientMemory, match=r"--micro-batch-size [1-4]\b"):
        fit(_model(), None, ToyData(), _args(tmp_path / "r", 2))
    assert not (tmp_path / "r").exists()
    assert fit(_model(), None, ToyData(), _args(None, 1, check_memory=False)).steps == 1


def test_a_step_outliving_the_grace_period_is_aborted_unsaved(tmp_path):
    """SIGTERM during a step that sleeps: after stop_grace_s the step is aborted, nothing of it is saved, and
    the checkpoint on disk (step 2) is intact."""
    run = tmp_path / "r"
    state = {"slow": False}

    class SlowAt:
        def on_step_begin(self, st):
            state["slow"] = st.step == 3

    def loss_fn(m, batch):
        loss = m(**batch).loss
        if state["slow"]:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)
        return loss

    before = signal.getsignal(signal.SIGTERM)
    start = time.perf_counter()
    with pytest.raises(TrainingInterrupted) as exc:
        fit(_model(), loss_fn, ToyData(), _args(run, 10, save_every=2, stop_grace_s=0.3), callbacks=[SlowAt()])
    assert time.perf_counter() - start < 20
    assert exc.value.step == 2 and exc.value.out_dir == str(run)
    assert "aborted" in str(exc.value) and "step 2" in str(exc.value)
    assert ckpt.load_trainer_state(run)[0]["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


NATIVE = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from toydata import ToyData
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.loop import TrainArgs, fit
BIG = torch.ones(6000, 6000)
state = {{"slow": False}}
class SlowAt:
    def on_step_begin(self, st):
        state["slow"] = st.step == 2
def loss_fn(m, batch):
    loss = m(**batch).loss
    if state["slow"]:
        os.kill(os.getpid(), signal.SIGTERM)
        print("signalled", flush=True)
        for _ in range(100):
            BIG @ BIG  # native code: no Python signal handler runs inside it
    return loss
torch.manual_seed(0)
fit(TransformerLM(ModelConfig.from_name("tiny")), loss_fn, ToyData(),
    TrainArgs(out_dir={out!r}, max_steps=10, save_every=1, progress=False, stop_grace_s=0.4, precision="fp32"),
    callbacks=[SlowAt()])  # fp32: under bf16 autocast the matmuls end before the grace period
"""


@pytest.mark.slow
def test_sigterm_ends_a_step_stuck_in_native_code(tmp_path):
    out = tmp_path / "r"
    code = NATIVE.format(tests=str(ROOT / "tests"), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "ignored SIGTERM" in proc.stderr and "holds step 2" in proc.stderr
    assert ckpt.load_trainer_state(out)[0]["step"] == 2


def test_a_second_sigterm_aborts_at_once(tmp_path):
    class Twice:
        def on_step_begin(self, st):
            if st.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt) as exc:
        fit(_model(), None, ToyData(), _args(tmp_path / "r", 20, save_every=2), callbacks=[Twice()])
    assert not isinstance(exc.value, TrainingInterrupted)
    assert ckpt.load_trainer_state(tmp_path / "r")[0]["step"] == 2


def test_a_stop_during_a_save_stops_right_after_it(tmp_path):
    class SignalOnSave:
        def on_save(self, st, out):
            if st.step == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as exc:
        fit(_model(), None, ToyData(), _args(tmp_path / "r", 20, save_every=4), callbacks=[SignalOnSave()])
    assert exc.value.step == 4 and ckpt.load_trainer_state(tmp_path / "r")[0]["step"] == 4


def test_fit_holds_the_writer_lock_for_the_whole_run(tmp_path):
    run = tmp_path / "r"
    seen = []

    class Probe:
        def on_step_begin(self, st):
            seen.append(ckpt.holds_writer_lock(run))

    fit(_model(), None, ToyData(), _args(run, 3, save_every=0), callbacks=[Probe()])
    assert seen == [True, True, True]
    assert not ckpt.holds_writer_lock(run)


def test_stale_temp_files_of_killed_builds_are_removed(tmp_path):
    from morphlm.data.tokens import prepare_lm_store

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = tmp_path / "cache"
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i} of a small corpus about tokens and stores\n\n" for i in range(400)))
    tok, store = prepare_lm_store(str(corpus), 300, cache_dir=cache, show_progress=False)
    stale = [store.path / f".train.bin.{dead.pid}.tmp", cache / "tokenizers" / f".x.json.{dead.pid}.tmp"]
    live = store.path / f".val.bin.{os.getpid()}.tmp"
    for p in [*stale, live]:
        p.write_bytes(b"half a file")
    prepare_lm_store(str(corpus), 300, cache_dir=cache, show_progress=False)
    assert not any(p.exists() for p in stale) and live.exists()


def test_a_failed_store_build_leaves_no_temp_file(tmp_path):
    from morphlm.data.corpora import Document
    from morphlm.data.tokens import TokenStore

    class Broken:
        vocab_size, eos_id, boundary_id = 300, 0, 0

        def encode_batch(self, texts):
            raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        TokenStore.build([Document("a", "x" * 100), Document("b", "y" * 100)], Broken(), tmp_path / "s")
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")]
