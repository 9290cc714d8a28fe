import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train.loop import TrainArgs, TrainingDiverged, fit, lr_at
from toydata import ToyData, poisonable_loss

ROOT = Path(__file__).resolve().parents[1]


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig.from_name("tiny", **kw))


def _args(out, steps, **kw):
    base = dict(out_dir=str(out) if out else None, max_steps=steps, schedule_steps=30, warmup_steps=4,
                lr=3e-3, progress=False, resume="auto")
    base.update(kw)
    return TrainArgs(**base)


def _losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_metrics_have_units(tmp_path):
    res = fit(_model(), None, ToyData(), _args(tmp_path / "r", 30))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("step", "tokens", "flops", "loss", "lr", "tok_per_s"):
        assert key in rows[0]
    assert rows[-1]["tokens"] == 30 * 8 * 32
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert "val_loss" in rows[-1] and res.val_loss == rows[-1]["val_loss"]


def test_resume_is_bit_exact_with_dropout_and_accumulation(tmp_path):
    kw = dict(micro_batch_size=4, save_every=7)
    fit(_model(dropout=0.1), None, ToyData(), _args(tmp_path / "a", 12, **kw))
    fit(_model(seed=99, dropout=0.1), None, ToyData(), _args(tmp_path / "a", 24, **kw))  # weights come from disk
    fit(_model(dropout=0.1), None, ToyData(), _args(tmp_path / "b", 24, **kw))
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_gradient_accumulation_matches_full_batch(tmp_path):
    # fp32: under bf16 autocast (precision auto on a bf16-capable CPU) the two batchings round differently
    full = fit(_model(), None, ToyData(), _args(None, 5, precision="fp32"))
    acc = fit(_model(), None, ToyData(), _args(None, 5, micro_batch_size=2, precision="fp32"))
    assert abs(full.final_loss - acc.final_loss) < 1e-5


def test_existing_run_needs_resume_auto(tmp_path):
    fit(_model(), None, ToyData(), _args(tmp_path / "r", 3))
    with pytest.raises(ckpt.CheckpointError, match="--resume auto"):
        fit(_model(), None, ToyData(), _args(tmp_path / "r", 6, resume="never"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match="Lower --lr"):
        fit(_model(), poisonable_loss, ToyData(nan_at=7), _args(run, 20, save_every=5))
    state, _ = ckpt.load_trainer_state(run)
    assert state["step"] == 5
    model = ckpt.load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_schedule():
    args = TrainArgs(max_steps=10, lr=1.0, warmup_steps=2, schedule_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, args) == 0.5 and lr_at(1, args) == 1.0
    assert lr_at(10, args) == pytest.approx(0.1) and lr_at(50, args) == pytest.approx(0.1)
    assert lr_at(6, args) < lr_at(4, args)


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from toydata import ToyData
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.loop import TrainArgs, TrainingInterrupted, fit
class Slow:
    def on_step_end(self, state, record):
        print("step", state.step, flush=True)
        time.sleep({sleep})
torch.manual_seed(0)
m = TransformerLM(ModelConfig.from_name("tiny"))
try:
    r = fit(m, None, ToyData(), TrainArgs(out_dir={out!r}, max_steps={steps}, schedule_steps=30, warmup_steps=4,
            lr=3e-3, progress=False, resume="auto", save_every={save_every}), callbacks=[Slow()])
except TrainingInterrupted as exc:
    print("interrupted", exc.step, flush=True)
    sys.exit(130)
print("finished", r.steps, flush=True)
"""


def _spawn(out, steps, sleep=0.0, save_every=0):
    code = SCRIPT.format(tests=str(ROOT / "tests"), out=str(out), steps=steps, sleep=sleep, save_every=save_every)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, n):
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1]) >= n:
            return
    raise AssertionError(f"process ended early: {proc.stderr.read()}")


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_matches(tmp_path):
    proc = _spawn(tmp_path / "a", 16, sleep=0.3)
    _wait_for_step(proc, 5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state, _ = ckpt.load_trainer_state(tmp_path / "a")
    assert 5 <= state["step"] < 16
    assert _spawn(tmp_path / "a", 16).wait(timeout=120) == 0
    assert _spawn(tmp_path / "b", 16).wait(timeout=120) == 0
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_matches(tmp_path):
    proc = _spawn(tmp_path / "a", 16, sleep=0.3, save_every=4)
    _wait_for_step(proc, 10)
    proc.kill()
    proc.wait(timeout=60)
    state, _ = ckpt.load_trainer_state(tmp_path / "a")
    assert state["step"] == 8  # the last checkpoint before the kill
    assert len(_losses(tmp_path / "a")) >= 9  # metrics ran ahead of the checkpoint
    assert _spawn(tmp_path / "a", 16, save_every=4).wait(timeout=120) == 0
    assert _spawn(tmp_path / "b", 16, save_every=4).wait(timeout=120) == 0
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_stop_scope_carries_one_stop_request_across_fits(tmp_path):
    """A driver that calls fit() many times (the compression benchmark) stops at the next fit() too, and a
    second signal aborts, instead of each fit() treating the signal as its own first one."""
    from morphlm.train.loop import StopScope, TrainingInterrupted

    quiet = {"progress": False, "eval_at_end": False}
    with StopScope() as scope:
        with pytest.raises(TrainingInterrupted) as first:
            fit(_model(), None, ToyData(), _args(None, 8, **quiet), callbacks=[SignalAt(2, signal.SIGTERM)])
        assert first.value.step == 3 and first.value.out_dir is None and scope.requested  # after step 2's check
        assert "nothing was saved" in str(first.value)
        with pytest.raises(TrainingInterrupted) as later:  # raises at once: nothing trained, nothing written
            fit(_model(), None, ToyData(), _args(tmp_path / "later", 8, **quiet))
        assert later.value.step == 0 and not ckpt.has_trainer_state(tmp_path / "later")
    # outside a scope every fit() starts afresh
    assert fit(_model(), None, ToyData(), _args(None, 3, **quiet)).steps == 3


class SignalAt:
    """fit() callback: send ``sig`` to this process at the end of step ``step``."""

    def __init__(self, step, sig):
        self.step, self.sig = step, sig

    def on_step_end(self, state, record):
        if state.step == self.step:
            import os

            os.kill(os.getpid(), self.sig)


def test_stop_saves_resumable_state_and_raises(tmp_path):
    """The first signal: fit() finishes the step, saves (weights, optimizer, lineage at the step reached) and
    raises TrainingInterrupted instead of returning a result that looks finished; no on_train_end."""
    from morphlm.train.loop import TrainingInterrupted

    ended = []

    class End:
        def on_train_end(self, state):
            ended.append(state.step)

    with pytest.raises(TrainingInterrupted) as exc:
        fit(_model(), None, ToyData(), _args(tmp_path / "r", 20), callbacks=[SignalAt(4, signal.SIGINT), End()])
    assert exc.value.step == 5 and exc.value.out_dir == str(tmp_path / "r")
    assert "--resume auto" in str(exc.value) and str(tmp_path / "r") in str(exc.value)
    assert ckpt.load_trainer_state(tmp_path / "r")[0]["step"] == 5
    assert ckpt.read_lineage(tmp_path / "r")["steps"] == 5 and ended == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    res = fit(_model(), None, ToyData(), _args(tmp_path / "r", 8), callbacks=[End()])  # resumes and finishes
    assert res.steps == 8 and ended == [8]


def test_second_ctrl_c_aborts_at_once(tmp_path):
    """Two SIGINTs within one step: the second raises a plain KeyboardInterrupt from inside the step (no save)."""
    from morphlm.train.loop import TrainingInterrupted

    class Twice:
        def on_step_begin(self, state):
            if state.step == 3:
                import os

                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as exc:
        fit(_model(), None, ToyData(), _args(tmp_path / "r", 20, save_every=2), callbacks=[Twice()])
    assert not isinstance(exc.value, TrainingInterrupted)
    assert ckpt.load_trainer_state(tmp_path / "r")[0]["step"] == 2  # the last periodic checkpoint, untouched


def test_training_interrupted_pickles():
    """Worker pools send it back to the parent."""
    import pickle

    from morphlm.train.loop import TrainingInterrupted

    exc = pickle.loads(pickle.dumps(TrainingInterrupted(7, "/x", "rerun it")))
    assert (exc.step, exc.out_dir, exc.resume_hint) == (7, "/x", "rerun it") and isinstance(exc, KeyboardInterrupt)
