"""Progressive training schedules (bert2BERT two-stage, Apollo, MSLT, growth chains) through the one loop."""

import json
import math

import pytest
import torch

from morphlm.grow import GrowthError, run_schedule
from morphlm.grow.depth import top_copy_layers
from morphlm.grow.schedule_methods import (apollo, apollo_plan, lvps_depth, lvps_sample, two_stage_depth_at,
                                           two_stage_depths)
from morphlm.grow.schedules import forward_view, split_steps, view_flops_per_token
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train import flops as F
from morphlm.train.loop import TrainArgs
from clihelp import cli
from toydata import ToyData

V, T, B = 128, 16, 4


def cfg(n_layers=4, **kw):
    return ModelConfig.from_name("tiny", **{**dict(n_layers=n_layers, d_model=32, n_heads=2, vocab_size=V,
                                                   max_seq_len=32), **kw})


def data():
    return ToyData(vocab=V, seq_len=T, batch_size=B)


def targs(steps, **kw):
    return TrainArgs(**{**dict(max_steps=steps, progress=False, warmup_steps=2, lr=3e-3, eval_every=4), **kw})


def blocks_state(model, k):
    return {n: p.detach().clone() for n, p in model.blocks[k].named_parameters()}


def same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


class Watch:
    """Callback recording, per step of each stage (fit call), which blocks changed."""

    def __init__(self):
        self.stage, self.before, self.log = 0, None, []

    def on_step_begin(self, st):
        m = st.raw_model
        self.before = ({k: blocks_state(m, k) for k in range(len(m.blocks))},
                       {n: p.detach().clone() for n, p in m.named_parameters() if not n.startswith("blocks.")})

    def on_step_end(self, st, record):
        m = st.raw_model
        blocks, rest = self.before
        changed = {k for k in blocks if not same(blocks[k], blocks_state(m, k))}
        rest_changed = {n for n, p in m.named_parameters() if n in rest and not torch.equal(rest[n], p)}
        self.log.append((self.stage, st.step - 1, changed, rest_changed))

    def on_train_end(self, st):
        self.stage += 1


# ---------------------------------------------------------------------------- two-stage
@pytest.mark.parametrize("head", ["lm", "mlm"])
def test_two_stage_stage1_updates_only_top_lb_of_sampled_submodel(head):
    target = cfg(3) if head == "lm" else ModelConfig.from_name("tiny-bert", n_layers=3, d_model=32, n_heads=2,
                                                               vocab_size=V, max_seq_len=32)
    d = data()
    if head == "mlm":
        class MLM(ToyData):
            def train_batch(self, step):
                b = super().train_batch(step)
                labels = torch.full_like(b["input_ids"], -100)
                labels[:, ::3] = b["input_ids"][:, ::3]
                return {"input_ids": b["input_ids"], "labels": labels}
        d = MLM(vocab=V, seq_len=T, batch_size=B)
    w = Watch()
    res = run_schedule("two-stage", target, d, targs(12, weight_decay=0.1), l_b=1, stage1_fraction=0.5,
                       callbacks=[w], seed=3)
    depths = two_stage_depths(3, 1)
    assert depths == [1, 2, 3]
    seen = set()
    for stage, step, changed, rest in w.log:
        if stage == 0:
            D = two_stage_depth_at(step, depths, 3)
            seen.add(D)
            assert changed == {D - 1}, (step, D, changed)
            assert "pos_emb.weight" not in rest or D == 1  # no gradient below a frozen layer
        else:
            assert changed == {0, 1, 2}
    assert len(seen) >= 2 and [s["steps"] for s in res.stages] == [6, 6]
    assert res.model.config.n_layers == 3


def test_two_stage_flops_equal_hand_sum():
    target = cfg(4)
    res = run_schedule("two-stage", target, data(), targs(10), l_b=2, stage1_fraction=0.4, seed=1)
    P = F.layer_matmul_params(target)
    H = F.head_matmul_params(target, T)
    d = target.d_model
    fwd, train = 2 * P + 4 * d * T, 6 * P + 12 * d * T
    total = 0.0
    for step in range(4):
        D = two_stage_depth_at(step, [2, 4], 1)
        total += ((D - 2) * fwd + 2 * train + 6 * H) * B * T
    total += 6 * F.training_flops_per_token(target, T) * B * T  # 6 full-model steps
    assert res.flops == pytest.approx(total, rel=1e-12)
    assert view_flops_per_token(target, T, ["train"] * 4) == F.training_flops_per_token(target, T)
    assert view_flops_per_token(target, T, ["frozen"]) - 6 * H == 4 * P + 12 * d * T


# ---------------------------------------------------------------------------- Apollo
def test_lvps_distribution_matches_reference():
    xs = torch.linspace(1e-6, 1, 100001, dtype=torch.float64).tolist()
    for N, p_low, p_full, mean in ((1, 0.735, None, 1.77), (3, 0.64, 0.016, 4.22), (6, 0.65, 0.065, 7.13)):
        ds = [lvps_depth(x, N, 12) for x in xs]
        assert min(ds) == N and max(ds) == 12
        assert sum(x == N for x in ds) / len(ds) == pytest.approx(p_low, abs=0.01)
        if p_full is not None:
            assert sum(x == 12 for x in ds) / len(ds) == pytest.approx(p_full, abs=0.003)
        assert sum(ds) / len(ds) == pytest.approx(mean, abs=0.01)
    # the per-step sampler draws x uniformly: empirical frequency near the analytic one
    draws = [lvps_sample(s, 1, 12, seed=0) for s in range(4000)]
    assert sum(x == 1 for x in draws) / 4000 == pytest.approx(0.7356, abs=0.025)
    assert all(lvps_depth(x, 12, 12) == 12 for x in (1e-6, 0.5, 1.0))
    assert apollo_plan(12) == ([1, 3, 6, 12], [0.0, 0.05, 0.10, 0.25])


def test_apollo_interpolation_at_boundaries_and_shared_eval():
    target = cfg(6)
    stages = apollo(target, data(), targs(40), unique=[1, 3, 6], switch=[0.1, 0.3])
    assert [s.steps for s in stages] == [4, 8, 28]
    m, _ = stages[0].enter(None, False)
    with torch.no_grad():
        for k, blk in enumerate(m.blocks):
            for p in blk.parameters():
                p.fill_(float(k))
    m, carry = stages[1].enter(m, False)
    assert all(torch.all(p == 0) for j in range(3) for p in m.blocks[j].parameters())
    with torch.no_grad():
        for k in range(3):
            for p in m.blocks[k].parameters():
                p.fill_(10.0 + k)
    m, carry = stages[2].enter(m, False)
    for j in range(6):  # new unique layer j copies old ⌊j·3/6⌋
        assert all(torch.all(p == 10.0 + j * 3 // 6) for p in m.blocks[j].parameters())
    # optimizer moments follow the same map
    st = {"state": {f"blocks.{k}.attn.qkv.weight": {"exp_avg": torch.full((1,), float(k))} for k in range(6)}}
    moved = carry(st)["state"]
    assert [float(moved[f"blocks.{j}.attn.qkv.weight"]["exp_avg"]) for j in range(6)] == [0, 0, 1, 1, 2, 2]
    # weight sharing: the view equals a materialised model with the interpolated layer map
    torch.manual_seed(0)
    src = TransformerLM(target).eval()
    batch = data().val_batches()[0]
    shared = forward_view(src, batch, [0, 0, 1, 1, 2, 2])
    mat = TransformerLM(target).eval()
    from morphlm.grow.depth import expand_depth
    mat.load_state_dict(expand_depth(src.state_dict(), [0, 0, 1, 1, 2, 2], mat.state_dict()))
    assert torch.allclose(shared.logits, mat(**batch).logits, atol=1e-6)
    assert len(src.blocks) == 6  # the view is temporary


def test_apollo_run_flops_and_curve():
    target = cfg(4)
    res = run_schedule("apollo", target, data(), targs(20), seed=2)
    assert [s["unique_layers"] for s in res.stages] == [1, 2, 4]
    per = F.training_flops_per_token(target, T) / 4 - 6 * F.head_matmul_params(target, T) / 4
    hand, off = 0.0, 0
    for s in res.stages:
        for step in range(off, off + s["steps"]):
            depth = lvps_sample(step, s["unique_layers"], 4, 2)
            hand += (depth * (6 * F.layer_matmul_params(target) + 12 * 32 * T)
                     + 6 * F.head_matmul_params(target, T)) * B * T
        off += s["steps"]
    assert per > 0 and res.flops == pytest.approx(hand, rel=1e-12)
    assert [p["step"] for p in res.curve][-1] == 20


# ---------------------------------------------------------------------------- MSLT
def test_mslt_frozen_layers_unchanged_and_final_trains_all():
    w = Watch()
    res = run_schedule("mslt", cfg(4), data(), targs(24), depths=[1, 2, 4], final_fraction=0.25, callbacks=[w])
    labels = [s["label"] for s in res.stages]
    assert labels == ["base1", "grow2", "grow4", "full"]
    assert top_copy_layers(2, 4) == [0, 1, 0, 1] and top_copy_layers(3, 5) == [0, 1, 2, 1, 2]
    trainable = {i: set(s["trainable_layers"]) for i, s in enumerate(res.stages)}
    for stage, step, changed, rest in w.log:
        assert changed == trainable[stage], (stage, step, changed)
        if stage in (1, 2):
            assert "pos_emb.weight" not in rest and "tok_emb.weight" in rest  # tied head trains
    assert all(p.requires_grad for p in res.model.parameters())
    # FLOPs: frozen layers forward only, new layers trained
    P, H, d = F.layer_matmul_params(cfg(4)), F.head_matmul_params(cfg(4), T), 32
    fwd, train = 2 * P + 4 * d * T, 6 * P + 12 * d * T
    per_step = {0: train + 6 * H, 1: fwd + train + 6 * H, 2: 2 * fwd + 2 * train + 6 * H, 3: 4 * train + 6 * H}
    hand = sum(per_step[i] * s["steps"] * B * T for i, s in enumerate(res.stages))
    assert res.flops == pytest.approx(hand, rel=1e-12)


# ---------------------------------------------------------------------------- chains
def test_chain_1_2_4_target_shape_and_monotone_curve(tmp_path):
    stages = [{"n_layers": 1}, {"method": "stack", "n_layers": 2}, {"method": "interpolate", "n_layers": 4}]
    res = run_schedule("chain", cfg(4), data(), targs(18, eval_every=3, out_dir=str(tmp_path / "c")), stages=stages)
    assert res.model.config.to_dict() == cfg(4).to_dict()
    assert [s["n_layers"] for s in res.stages] == [1, 2, 4]
    steps = [p["step"] for p in res.curve]
    flops = [p["flops"] for p in res.curve]
    assert steps == sorted(set(steps)) and steps[-1] == 18 and steps[:6] == [3, 6, 9, 12, 15, 18]
    assert all(b > a for a, b in zip(flops, flops[1:]))
    assert flops[-1] == pytest.approx(res.flops)
    sizes = {1: F.training_flops_per_token(cfg(1), T), 2: F.training_flops_per_token(cfg(2), T),
             4: F.training_flops_per_token(cfg(4), T)}
    assert res.flops == pytest.approx(sum(sizes[s["n_layers"]] * s["steps"] * B * T for s in res.stages))
    lineage = ckpt.read_lineage(tmp_path / "c")
    assert lineage["schedule"] == "chain" and len(lineage["stages"]) == 3 and lineage["flops"] == res.flops
    assert ckpt.load_model(tmp_path / "c").config.n_layers == 4


def test_chain_from_source_with_width_and_msg(tmp_path):
    src = TransformerLM(cfg(1, d_model=16, n_heads=1))
    src_dir = tmp_path / "src"
    ckpt.save_checkpoint(src_dir, src.state_dict(), src.config, lineage={"verb": "train", "flops": 123.0})
    stages = [{"method": "fpi", "n_layers": 2}, {"method": "msg", "n_layers": 4, "ramp_steps": 2}]
    res = run_schedule("chain", cfg(4), data(), targs(8, out_dir=str(tmp_path / "o")), source=src_dir, stages=stages)
    assert res.source_flops == 123.0 and res.model.config.d_model == 32
    assert ckpt.total_flops(tmp_path / "o") == pytest.approx(res.flops + 123.0)
    assert not res.model.blocks[3]._forward_hooks  # MSG hooks removed after the ramp


# ---------------------------------------------------------------------------- resume
class Boom(RuntimeError):
    pass


class KillAt:
    def __init__(self, stage, step):
        self.stage, self.step, self.n = stage, step, 0

    def on_step_end(self, st, record):
        if self.n == self.stage and st.step == self.step:
            raise Boom()

    def on_train_end(self, st):
        self.n += 1


@pytest.mark.parametrize("name,opts,kill", [("mslt", {"depths": [1, 2, 4]}, (3, 5)), ("two-stage", {"l_b": 2}, (1, 5)),
                                           ("apollo", {}, (2, 3))])
def test_resume_equals_uninterrupted(tmp_path, name, opts, kill):
    a, b = tmp_path / "a", tmp_path / "b"
    args = dict(save_every=2, eval_every=3)
    with pytest.raises(Boom):
        run_schedule(name, cfg(4), data(), targs(16, out_dir=str(a), **args), callbacks=[KillAt(*kill)], **opts)
    with pytest.raises(GrowthError, match="resume auto"):
        run_schedule(name, cfg(4), data(), targs(16, out_dir=str(a), **args), **opts)
    ra = run_schedule(name, cfg(4), data(), targs(16, out_dir=str(a), resume="auto", **args), **opts)
    rb = run_schedule(name, cfg(4), data(), targs(16, out_dir=str(b), **args), **opts)
    sa, sb = ra.model.state_dict(), rb.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ra.curve == rb.curve and ra.flops == rb.flops
    la, lb = ckpt.read_lineage(a), ckpt.read_lineage(b)
    assert la["flops"] == lb["flops"] and [s["label"] for s in la["stages"]] == [s["label"] for s in lb["stages"]]
    # a finished run resumed again changes nothing
    rc = run_schedule(name, cfg(4), data(), targs(16, out_dir=str(a), resume="auto", **args), **opts)
    assert rc.flops == ra.flops and rc.curve == ra.curve


# ---------------------------------------------------------------------------- errors
def test_errors():
    d = data()
    with pytest.raises(GrowthError, match="unknown schedule"):
        run_schedule("nope", cfg(4), d, targs(4))
    with pytest.raises(GrowthError, match="l_b=5"):
        run_schedule("two-stage", cfg(4), d, targs(4), l_b=5)
    with pytest.raises(GrowthError, match="shallower"):
        run_schedule("mslt", cfg(2), d, targs(4), source=TransformerLM(cfg(4)))
    with pytest.raises(GrowthError, match="unknown option"):
        run_schedule("apollo", cfg(4), d, targs(4), l_b=2)
    with pytest.raises(GrowthError, match="takes no source"):
        run_schedule("apollo", cfg(4), d, targs(4), source=TransformerLM(cfg(2)))
    with pytest.raises(GrowthError, match="differs from the target"):
        run_schedule("chain", cfg(4), d, targs(4), stages=[{"n_layers": 1}, {"method": "stack", "n_layers": 2}])
    with pytest.raises(GrowthError, match="unknown growth method"):
        run_schedule("chain", cfg(4), d, targs(4), stages=[{"n_layers": 1}, {"method": "magic", "n_layers": 4}])
    with pytest.raises(GrowthError, match="depths"):
        run_schedule("mslt", cfg(4), d, targs(4), depths=[2, 1, 4])
    with pytest.raises(GrowthError, match="vocab"):
        run_schedule("chain", cfg(4), d, targs(4), source=TransformerLM(cfg(2, vocab_size=64)))
    assert split_steps(10, [0.05, 0.05, 0.15, 0.75]) == [0, 1, 1, 8]


# ---------------------------------------------------------------------------- CLI
SMALL = ["--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "300000", "--seq-len", "32", "--batch-size", "4",
         "--d-model", "32"]


def test_cli_schedule_end_to_end(tmp_path):
    src = tmp_path / "src"
    cli("train", *SMALL, "--n-layers", 1, "--max-steps", 4, "--out", src)
    out = tmp_path / "two"
    res = cli("train", *SMALL, "--n-layers", 4, "--max-steps", 8, "--out", out, "--schedule", "two-stage",
              "--source", src, "--schedule-opt", "l_b=2", "--schedule-opt", "stage1_fraction=0.5",
              "--schedule-opt", "method=stack")
    assert "done: step 8" in res.output
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["schedule"] == "two-stage" and lineage["parents"][0]["flops"] > 0
    assert ckpt.total_flops(out) == pytest.approx(lineage["flops"] + ckpt.total_flops(src))
    assert sorted(p.name for p in out.glob("stage*")) == ["stage0-submodels", "stage1-full"]
    metrics = json.loads(cli("eval", out, "--json").stdout.strip().splitlines()[-1])
    assert math.isfinite(metrics["val_loss"])
    # recipe form with a chain
    recipe = tmp_path / "chain.yaml"
    recipe.write_text("model: {preset: tiny, n_layers: 4, d_model: 32}\n"
                      "data: {corpus: stdlib, max_bytes: 300000, seq_len: 32, batch_size: 4}\n"
                      "train: {max_steps: 6, eval_every: 2, warmup_steps: 1}\n"
                      "schedule:\n  name: chain\n  stages:\n    - {n_layers: 2}\n"
                      "    - {method: stack, n_layers: 4, fraction: 0.5}\n")
    out2 = tmp_path / "chain"
    cli("train", "--config", recipe, "--out", out2)
    assert json.loads((out2 / "lineage.json").read_text())["stages"][1]["method"] == "stack"
    # bad input: one clear line, exit 2
    bad = cli("train", *SMALL, "--max-steps", 4, "--out", tmp_path / "bad", "--schedule", "zigzag", code=2)
    assert "unknown schedule" in bad.output
    bad = cli("train", *SMALL, "--n-layers", 2, "--max-steps", 4, "--out", tmp_path / "bad2", "--schedule",
              "two-stage", "--schedule-opt", "l_b=3", code=2)
    assert "l_b=3" in bad.output
    bad = cli("train", *SMALL, "--n-layers", 4, "--max-steps", 8, "--out", out, "--schedule", "two-stage", "--source",
              src, code=2)
    assert "resume auto" in bad.output


def test_stage_boundaries_are_seamless():
    """Two stages that train the same full model equal one plain fit: the global step drives data, LR and eval,
    and AdamW moments carry across the boundary."""
    from morphlm.grow.schedules import fresh_model
    from morphlm.train.loop import fit

    target = cfg(2)
    res = run_schedule("two-stage", target, data(), targs(10), l_b=2, stage1_fraction=0.5, seed=4)
    plain = fresh_model(target, 4)
    evals = []

    class Curve:
        def on_eval(self, st, met):
            evals.append((st.step, st.flops, met["val_loss"]))

    fit(plain, None, data(), targs(10), [Curve()])
    a, b = res.model.state_dict(), plain.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    # the schedule evaluates at the global cadence and also at the end of every stage
    assert [p["step"] for p in res.curve] == [4, 5, 8, 10]
    ours = [p for p in res.curve if p["step"] != 5]
    assert [(p["step"], p["flops"]) for p in ours] == [(s, f) for s, f, _ in evals]
    assert [p["val_loss"] for p in ours] == pytest.approx([v for _, _, v in evals], abs=1e-5)
