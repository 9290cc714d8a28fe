"""Depth growth (stack / interpolate copy weights; not function-preserving), MSG masks (exact at mask 0, the
plain grown model at mask 1, ramped by the one training loop), and optimizer-state carry-over."""

import pytest
import torch
from test_grow_width import logits, source
from toydata import ToyData

from morphlm.grow import (GrowthError, MaskedGrowth, build_plan, carry_optimizer_state, grow, grow_model,
                          load_optimizer_state, to_resume_format)
from morphlm.grow.plans import resolve_layer_map
from morphlm.surgery import evenly_spaced_layers, first_copies, interpolate_layers, stack_layers
from morphlm.train.loop import TrainArgs, _unflatten_optimizer, build_optimizer, fit


def test_layer_maps():
    assert stack_layers(2, 5) == [0, 1, 0, 1, 0]
    assert interpolate_layers(2, 4) == [0, 0, 1, 1] and interpolate_layers(2, 3) == [0, 0, 1]
    assert evenly_spaced_layers(24, 4) == [5, 11, 17, 23]
    assert resolve_layer_map("1,0,1", 2, 3) == [1, 0, 1]
    assert first_copies([0, 0, 1, 1]) == [True, False, True, False]
    with pytest.raises(GrowthError, match="3 entries"):
        resolve_layer_map([0, 1, 1], 2, 4)
    with pytest.raises(GrowthError, match="names source layers"):
        resolve_layer_map("0,5", 2, 2)


@pytest.mark.parametrize("method,expected", [("stack", [0, 1, 0, 1]), ("interpolate", [0, 0, 1, 1])])
def test_stack_and_interpolate_copy_layers(method, expected):
    src = source("tiny-llama")
    out = grow_model(src, src.config.replace(n_layers=4), method)
    assert out.plan.layer_map == expected and out.function_preserving.startswith("no")
    for k, s in enumerate(expected):
        for (name, p), q in zip(out.model.blocks[k].named_parameters(), src.blocks[s].parameters()):
            assert torch.equal(p, q), (k, name)
    assert torch.equal(out.model.tok_emb.weight, src.tok_emb.weight)
    assert torch.equal(out.model.final_norm.weight, src.final_norm.weight)
    # not function-preserving: each copy adds its residual branch again
    assert (logits(out.model) - logits(src)).abs().max() > 1e-3


def test_depth_with_width_and_an_explicit_map():
    src = source("tiny-bert", n_layers=3)
    out = grow_model(src, src.config.replace(n_layers=5, d_ff=320), "fpi", depth="0,1,1,2,2")
    assert out.plan.layer_map == [0, 1, 1, 2, 2] and out.plan.new_layers == [2, 4]
    assert torch.equal(out.model.blocks[2].mlp.fc1.weight, out.model.blocks[1].mlp.fc1.weight)


# ---------------------------------------------------------------------------- MSG
MSG_CASES = [
    ("tiny", dict(n_layers=4)),
    ("tiny", dict(d_model=128, n_heads=8, n_kv_heads=8, d_ff=384, n_layers=3)),
    ("tiny", dict(d_model=96, n_heads=6, n_kv_heads=6)),  # not a multiple: still exact under masks
    ("tiny-llama", dict(d_model=128, n_heads=8, n_kv_heads=4, n_layers=4)),
    ("tiny-llama", dict(n_kv_heads=4, d_ff=256)),
    ("tiny-bert", dict(d_model=128, n_heads=8, n_kv_heads=8, n_layers=4)),
    ("tiny-bert", dict(d_model=96, n_heads=6, n_kv_heads=6)),
]


@pytest.mark.parametrize("preset,target", MSG_CASES)
def test_msg_is_the_source_at_mask_0_and_the_plain_grown_model_at_mask_1(preset, target):
    src = source(preset)
    grown = grow(src, src.config.replace(**target), "msg", seed=2, depth="interpolate")
    masks = grown.masked_growth
    assert masks.mask == 0.0
    assert (logits(grown, src.config) - logits(src)).abs().max().item() < 1e-5
    masks.set_mask(0.5)
    half = logits(grown, src.config)
    masks.set_mask(1.0)
    one = logits(grown, src.config)
    masks.remove()
    plain = logits(grown, src.config)  # the same weights without any hook
    assert torch.equal(one, plain)
    assert (half - plain).abs().max() > 1e-4 and (half - logits(src)).abs().max() > 1e-4


def test_msg_new_units_are_fresh_and_old_ones_untouched():
    src = source("tiny")
    out = grow_model(src, src.config.replace(d_model=128, n_heads=8, n_kv_heads=8, d_ff=384), "msg", seed=0)
    W = out.model.blocks[0].mlp.fc1.weight
    assert torch.equal(W[:256, :64], src.blocks[0].mlp.fc1.weight)  # no FPI division under masks
    assert 0.01 < W[256:].std() < 0.03 and 0.01 < W[:, 64:].std() < 0.03  # new units: fresh N(0, 0.02) init
    random_layers = grow_model(src, src.config.replace(n_layers=4), "msg", layers="random", seed=0)
    assert not torch.equal(random_layers.model.blocks[2].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert (logits(random_layers.model) - logits(src)).abs().max().item() < 1e-5


def test_msg_rejects_layer_maps_that_reorder_old_layers():
    src = source("tiny")
    with pytest.raises(GrowthError, match="first copies"):
        grow(src, src.config.replace(n_layers=3), "msg", depth="1,0,1")


def test_msg_ramp_runs_through_fit_and_starts_at_the_source_loss():
    src = source("tiny")
    target = src.config.replace(d_model=128, n_heads=8, n_kv_heads=8, n_layers=3)
    grown = grow(src, target, "msg", ramp_steps=2)
    data = ToyData(seq_len=32, batch_size=4)
    seen = []

    class Probe:
        def on_step_begin(self, state):
            seen.append(grown.masked_growth.mask)

    # fp32: the first step's loss is compared with an fp32 forward of the source (auto is bf16 on a bf16 CPU)
    args = TrainArgs(max_steps=4, warmup_steps=0, lr=1e-3, progress=False, eval_at_end=False, device="cpu",
                     precision="fp32")
    records = []

    class Log:
        def on_step_end(self, state, record):
            records.append(record)

    fit(grown, None, data, args, callbacks=[grown.masked_growth, Probe(), Log()])
    assert seen == [0.0, 0.5, 1.0, 1.0]
    with torch.no_grad():
        src_loss = src(**data.train_batch(0)).loss.item()
    assert abs(records[0]["loss"] - src_loss) < 1e-5  # the first step trains exactly the source function


# ---------------------------------------------------------------------------- optimizer carry-over
def _adam_steps(model, steps=2):
    opt = build_optimizer(model, TrainArgs(lr=1e-3), torch.device("cpu"))
    data = ToyData(seq_len=16, batch_size=2)
    for s in range(steps):
        model(**data.train_batch(s)).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_carry_optimizer_state_maps_old_moments_and_zeros_new_ones():
    src = source("tiny").train()
    opt = _adam_steps(src)
    out = grow_model(src, src.config.replace(d_model=128, n_heads=8, n_kv_heads=8, d_ff=384, n_layers=3), "fpi")
    state = carry_optimizer_state(src, opt, out.model, out.plan)
    old = opt.state[src.blocks[1].mlp.fc1.weight]
    new = state["state"]["blocks.1.mlp.fc1.weight"]
    assert torch.equal(new["exp_avg"][:256, :64], old["exp_avg"])  # identity-prefix positions: the same moments
    assert torch.equal(new["exp_avg_sq"][:256, :64], old["exp_avg_sq"])
    assert new["exp_avg"][256:].abs().sum() == 0 and new["exp_avg"][:, 64:].abs().sum() == 0
    assert float(new["step"]) == float(old["step"]) == 2.0
    copied = state["state"]["blocks.2.mlp.fc1.weight"]  # layer 2 is a later copy of layer 0: new
    assert copied["exp_avg"].abs().sum() == 0 and float(copied["step"]) == 0.0
    emb = state["state"]["tok_emb.weight"]["exp_avg"]
    assert torch.equal(emb[:, :64], opt.state[src.tok_emb.weight]["exp_avg"]) and emb[:, 64:].abs().sum() == 0
    # the groups mirror the loop's build_optimizer, and the state loads into a live optimizer and steps
    new_opt = build_optimizer(out.model, TrainArgs(lr=1e-3), torch.device("cpu"))
    assert [len(g["params"]) for g in state["param_groups"]] == [len(g["params"]) for g in new_opt.param_groups]
    load_optimizer_state(out.model, new_opt, state)
    assert torch.equal(new_opt.state[out.model.blocks[1].mlp.fc1.weight]["exp_avg"], new["exp_avg"])
    out.model.train()
    out.model(**ToyData(seq_len=16, batch_size=2).train_batch(0)).loss.backward()
    new_opt.step()
    tensors, groups = to_resume_format(state)
    back = _unflatten_optimizer(tensors, groups)
    assert torch.equal(back["state"]["blocks.1.mlp.fc1.weight"]["exp_avg"], new["exp_avg"])


def test_carry_from_a_run_directory_and_through_the_msg_callback(tmp_path):
    src = source("tiny")
    data = ToyData(seq_len=16, batch_size=2)
    fit(src, None, data, TrainArgs(out_dir=str(tmp_path / "src"), max_steps=2, progress=False, device="cpu",
                                   eval_at_end=False))
    out = grow_model(src, src.config.replace(n_layers=4, d_ff=320), "msg", ramp_steps=2)
    state = carry_optimizer_state(src, tmp_path / "src", out.model, out.plan)
    assert float(state["state"]["blocks.0.attn.qkv.weight"]["step"]) == 2.0
    masks = MaskedGrowth(out.model, out.plan, ramp_steps=2, optimizer_state=state)
    out.masks.remove()  # the one grow_model attached
    captured = {}

    class Probe:
        def on_step_begin(self, st):
            if st.step == 0:
                captured["m"] = st.optimizer.state[out.model.blocks[0].attn.qkv.weight]["exp_avg"].clone()

    fit(out.model, None, data, TrainArgs(max_steps=1, progress=False, device="cpu", eval_at_end=False),
        callbacks=[masks, Probe()])
    assert torch.equal(captured["m"], state["state"]["blocks.0.attn.qkv.weight"]["exp_avg"])
    with pytest.raises(GrowthError, match="no optimizer state|integer ids"):
        carry_optimizer_state(src, {"state": {0: {}}, "param_groups": []}, out.model, out.plan)


def test_plans_are_reproducible_from_the_seed():
    src = source("tiny-llama").config
    tgt = src.replace(d_model=128, n_heads=8, n_kv_heads=4, n_layers=4)
    _, a = build_plan(src, tgt, width="msg", seed=4)
    _, b = build_plan(src, tgt, width="msg", seed=4)
    assert a.layer_map == b.layer_map and all(
        all(torch.equal(x.index, y.index) for x, y in zip(a.params[k].maps, b.params[k].maps) if x is not None)
        for k in a.params)
