"""A checkpoint holds the whole function: MSG masks are model state, train --init needs no growth import, the
schedule registry reaches the CLI, a masked model refuses HF export; and the model's HF-style inputs."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toydata import ToyData

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.checkpoint import load_model
from morphlm.train.loop import TrainArgs, fit

from clihelp import cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--corpus", "stdlib", "--max-bytes", 200000, "--seq-len", 64, "--batch-size", 8]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A trained 2-layer source and its MSG growth to 4 layers (masks ramp over 2 steps)."""
    base = tmp_path_factory.mktemp("msg")
    cli("train", "--preset", "tiny", *DATA, "--max-steps", 5, "--out", base / "src")
    target = base / "deep.json"
    target.write_text(json.dumps(ModelConfig.from_name("tiny", n_layers=4).to_dict()))
    cli("grow", base / "src", "--to", target, "--method", "msg", "--ramp-steps", 2, "--out", base / "msg")
    return base


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_init_gives_the_same_losses_without_growth_imported_from_python_and_the_cli(dirs, tmp_path):
    """Fresh interpreters: the Python API without `import morphlm.grow`, with it, and the CLI agree on the
    first loss (masks at 0) and the second (the carried AdamW moments are loaded) of `train --init MSG_DIR`."""
    settings = dict(init=str(dirs / "msg"), n_layers=4, max_steps=2, schedule_steps=1000, corpus="stdlib",
                    max_bytes=200000, seq_len=64, batch_size=8, progress=False, eval_at_end=False)
    api = ("import sys, json\n{imp}\nfrom morphlm.train.run import build_spec, train_run\n"
           "train_run(build_spec('tiny', None, {settings!r}))\n"
           "print(json.dumps(sorted(m for m in sys.modules if m.startswith('morphlm.grow'))))\n")
    plain = _run(api.format(imp="", settings={**settings, "out_dir": str(tmp_path / "api")}), tmp_path)
    # (importing morphlm runs the front door, which loads every family: what matters is that train/ holds no
    # path to grow/ — the import contract checks that statically — and that the three runs below agree)
    assert plain.returncode == 0
    _run(api.format(imp="import morphlm.grow", settings={**settings, "out_dir": str(tmp_path / "grow")}), tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "morphlm", "train", "--preset", "tiny", "--init", str(dirs / "msg"),
                          "--n-layers", "4", "--max-steps", "2", "--out", str(tmp_path / "cli"), *map(str, DATA)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, g, c = _losses(tmp_path / "api"), _losses(tmp_path / "grow"), _losses(tmp_path / "cli")
    assert a == g == c and len(a) == 2
    # the first step trains exactly the source function (masks at 0)
    src = load_model(dirs / "src")
    grown = load_model(dirs / "msg")
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (src(ids).logits - grown(ids).logits).abs().max().item() < 1e-5
    # the new run's checkpoint keeps the masks (ramp position 2 of 2: the last step ran at m = 0.5)
    saved = load_model(tmp_path / "api")
    assert saved.config.msg_ramp_steps == 2 and saved.growth_masks.mask == 0.5 and saved.growth_masks._step == 2


def test_eval_of_an_msg_dir_equals_its_source(dirs):
    from morphlm.train.run import eval_run

    src, grown = eval_run(dirs / "src", device="cpu"), eval_run(dirs / "msg", device="cpu")
    assert abs(src["val_loss"] - grown["val_loss"]) < 1e-5
    out = cli("eval", dirs / "msg", "--json")
    assert abs(json.loads(out.stdout)["val_loss"] - src["val_loss"]) < 1e-5


def test_plain_fit_ramps_the_masks_without_callbacks(dirs):
    model = load_model(dirs / "msg")
    masks = model.growth_masks
    assert masks.mask == 0.0 and masks.layers.tolist() == [False, False, True, True]
    before = model.blocks[2].attn.qkv.weight.detach().clone()
    args = TrainArgs(max_steps=4, warmup_steps=0, lr=1e-3, schedule="constant", weight_decay=0.1, progress=False,
                     eval_at_end=False, device="cpu")
    fit(model, None, ToyData(seq_len=32, batch_size=4), args)
    assert masks.mask == 1.0 and masks._step == 4
    only_decay = before * (1 - args.lr * args.weight_decay) ** 4  # what a mask stuck at 0 would leave
    assert (model.blocks[2].attn.qkv.weight.detach() - only_decay).abs().max() > 1e-4


def test_masks_survive_deepcopy_and_can_be_dropped():
    src_cfg = ModelConfig.from_name("tiny")
    from morphlm.grow import grow

    torch.manual_seed(0)
    src = TransformerLM(src_cfg).eval()
    grown = grow(src, src_cfg.replace(n_layers=3, d_model=128, n_heads=8, n_kv_heads=8), "msg").eval()
    twin = copy.deepcopy(grown)
    ids = torch.arange(30)[None]
    with torch.no_grad():
        ref = src(ids).logits
        twin.growth_masks.set_mask(1.0)  # the copy's masks are its own
        assert (grown(ids).logits - ref).abs().max().item() < 1e-5
        assert (twin(ids).logits - ref).abs().max().item() > 1e-4
        one = twin(ids).logits
        twin.remove_growth_masks()
        assert torch.equal(twin(ids).logits, one) and "growth_masks.value" not in twin.state_dict()
        assert twin.config.msg_ramp_steps is None and "msg_ramp_steps" not in twin.config.to_dict()


def test_a_registered_schedule_is_reachable_from_the_cli(tmp_path):
    from morphlm.grow.schedules import SCHEDULES, Stage, fresh_model, register_schedule

    @register_schedule("test-single")
    def single(target, data, args, *, source=None, seed=0, **opts):
        return [Stage("only", args.max_steps, lambda prev, resuming: (fresh_model(target, seed), None))]

    try:
        cli("train", "--preset", "tiny", *DATA, "--schedule", "test-single", "--max-steps", 2, "--out", tmp_path / "s")
        assert json.loads((tmp_path / "s" / "schedule.json").read_text())["schedule"] == "test-single"
        assert load_model(tmp_path / "s").config.n_layers == 2
    finally:
        SCHEDULES.pop("test-single", None)
    bad = cli("train", "--preset", "tiny", *DATA, "--schedule", "nope", "--max-steps", 2, "--out", tmp_path / "x",
              code=2)
    assert "unknown schedule 'nope'" in bad.output and "two-stage" in bad.output


def test_converting_a_masked_model_to_hf_refuses_until_the_ramp_ends(dirs, tmp_path):
    res = cli("convert", dirs / "msg", tmp_path / "hf", code=2)
    assert "still carries MSG growth masks at m=0" in res.output and "--max-steps 2" in res.output
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    cli("train", "--preset", "tiny", "--init", dirs / "msg", "--n-layers", 4, "--max-steps", 3, *DATA,
        "--out", tmp_path / "done")
    assert load_model(tmp_path / "done").growth_masks.done  # m reached 1: inert, dropped on export (exact)
    cli("convert", tmp_path / "done", tmp_path / "hf2")
    hf_cfg = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert hf_cfg["n_layer"] == 4 and not any("msg" in k or "growth" in k for k in hf_cfg)


def test_growing_a_still_masked_source_is_refused(dirs):
    from morphlm.grow import GrowthError, grow

    with pytest.raises(GrowthError, match="still carries MSG growth masks"):
        grow(load_model(dirs / "msg"), ModelConfig.from_name("tiny", n_layers=6), "stack")


# ---------------------------------------------------------------------------- HF-style inputs
@pytest.mark.parametrize("preset", ["tiny", "tiny-bert", "tiny-llama"])
def test_inputs_embeds_and_position_ids(preset):
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig.from_name(preset)).eval()
    x = torch.randint(7, 512, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x).logits
        assert torch.equal(m(inputs_embeds=m.tok_emb(x)).logits, ref)
        assert torch.equal(m(x, position_ids=torch.arange(11)).logits, ref)
        assert torch.equal(m(x, position_ids=torch.arange(11).expand(3, 11)).logits, ref)
        spread = m(x, position_ids=torch.arange(11) * 2).logits
        assert (spread - ref).abs().max() > 1e-4  # the positions are used (learned and RoPE alike)
        shifted = m(x, position_ids=torch.arange(11) + 5).logits
        if m.config.position == "rope":  # rotary attention sees relative positions only
            torch.testing.assert_close(shifted, ref, atol=1e-5, rtol=1e-5)
        else:
            assert (shifted - ref).abs().max() > 1e-4
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        m(x, inputs_embeds=m.tok_emb(x))
    with pytest.raises(ValueError, match="position_ids must have shape"):
        m(x, position_ids=torch.arange(10))


def test_a_resumed_train_init_run_continues_the_ramp_exactly(dirs, tmp_path):
    """The ramp position is in the checkpoint: 1 step + resume to 3 equals 3 straight steps, bit for bit."""
    run = ["train", "--preset", "tiny", "--init", dirs / "msg", "--n-layers", 4, *DATA]
    cli(*run, "--max-steps", 3, "--out", tmp_path / "straight")
    cli(*run, "--max-steps", 1, "--out", tmp_path / "split")
    assert load_model(tmp_path / "split").growth_masks._step == 1
    cli(*run, "--max-steps", 3, "--out", tmp_path / "split", "--resume", "auto")
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
    a, b = load_model(tmp_path / "split"), load_model(tmp_path / "straight")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.growth_masks.mask == 1.0


def test_a_loader_that_writes_buffers_directly_still_gets_working_masks(dirs, tmp_path):
    """The int8 loader copies tensors into a quantized model buffer by buffer (no load_state_dict): the masks
    notice the writes and hook the quantized modules, so the int8 model stays close to the masked function."""
    cli("quantize", dirs / "msg", "--method", "int8", "--out", tmp_path / "q")
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    masked, q = load_model(dirs / "msg"), load_model(tmp_path / "q")
    plain = load_model(dirs / "msg")
    plain.remove_growth_masks()
    with torch.no_grad():
        ref, out, unmasked = masked(ids).logits, q(ids).logits, plain(ids).logits
    assert q.growth_masks.layers.tolist() == [False, False, True, True]
    assert (out - ref).abs().max() < 0.05 < (unmasked - ref).abs().max()
