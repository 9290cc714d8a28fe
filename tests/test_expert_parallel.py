"""Expert parallelism (morphlm/train/expert_parallel.py): experts sharded over gloo processes, tokens exchanged by
all-to-all, train like one process — losses within 1e-5, including resume on another world size.

2 processes (one torchrun launch) run, in order: the dispatcher alone on hand-made counts (empty splits, an empty
rank; outputs and gradients exact), then
  A. a tiny MoE (4 experts per layer, top-2, a shared expert, loss-free balancing, z-loss), expert-parallel 2 under
     DDP, 2 micro-batches of 2 sequences per rank, 4 steps (saved);
  A'. the same run resumed by expert-parallel 2 under FSDP2 (one micro-batch of 4 per rank) to step 6;
  L. A's model looped (LoopMoE, 2 unique blocks run twice) under FSDP2, 3 steps.
4 processes (2 expert-parallel groups of 2, so every shard has a replica) run:
  R. A's model under DDP, 1 sequence per micro-batch, 4 steps;
  B. a UniPool model (one pool of 4 experts shared by both layers, pool loss, f̄ one micro-batch behind) under
     FSDP2, one micro-batch of 2 per rank (the single run's micro-batch of 8 over the 4 ranks), 4 steps.
In this process: the single-process references of A (8 steps), L (3 steps) and B (4 steps), and A resumed by ONE
process to step 8 from the expert-parallel checkpoint (full experts on disk)."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train.expert_parallel import (ExpertParallel, ExpertParallelError, check_expert_parallel, cut_experts,
                                           merge_param_groups, num_parameters, split_param_groups)
from morphlm.train.loop import TrainArgs, fit
from clihelp import cli
from toydata import ToyData

ROOT = Path(__file__).resolve().parents[1]

MOE = dict(moe_experts=4, moe_top_k=2, moe_shared_experts=1, moe_expert_d_ff=32, moe_balance="loss_free",
           moe_bias_update=1e-2, moe_z_coef=1e-3)
LOOP = dict(MOE, loop_repeats=2)  # LoopMoE: the 2 unique blocks run twice
POOL = dict(moe_experts=2, moe_pool=True, moe_top_k=2, moe_expert_d_ff=32, moe_balance="pool", moe_aux_coef=0.1)
# fp32: the parity claim (1e-5) is about the parallel algorithm, not bf16 rounding differences between layouts
ARGS = dict(schedule_steps=30, warmup_steps=2, lr=3e-3, progress=False, save_every=4, resume="auto", precision="fp32")

SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from toydata import ToyData
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.loop import TrainArgs, fit
out, world = sys.argv[1], int(sys.argv[2])

def run(moe, name, steps, parallel, micro, ep):
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig.from_name("tiny-llama", **moe))
    fit(m, None, ToyData(batch_size=8), TrainArgs(out_dir=out + "/" + name, max_steps=steps, parallel=parallel,
        micro_batch_size=micro, expert_parallel=ep, **{args!r}))
    return m

def dispatch_check():
    # ExpertDispatcher alone: expert e scales its rows by e + 1; empty splits and an empty rank included
    import torch.distributed as dist
    from morphlm.train.expert_parallel import ExpertDispatcher
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    class Tag(torch.nn.Module):  # this rank's experts: 2·rank, 2·rank + 1
        def forward(self, xs, counts, impl):
            scale = torch.arange(2 * rank + 1, 2 * rank + 1 + counts.numel(), dtype=xs.dtype)
            return xs * torch.repeat_interleave(scale, counts)[:, None]

    for counts in ([[3, 0, 2, 0], [0, 0, 0, 0]], [[0, 1, 0, 2], [4, 0, 0, 1]]):
        c = torch.tensor(counts[rank])
        xs = torch.arange(int(c.sum()) * 3, dtype=torch.float32).view(-1, 3).requires_grad_(True)
        ys = ExpertDispatcher(None, 2, rank).run(Tag(), xs, c, "loop")
        want = torch.repeat_interleave(torch.arange(1.0, 5.0), c)[:, None]
        assert torch.equal(ys, xs * want), (counts, rank, ys, xs * want)
        ys.sum().backward()
        assert torch.equal(xs.grad, want.expand_as(xs)), (counts, rank, xs.grad)

if world == 2:
    dispatch_check()
    m = run({moe!r}, "ep", 4, "ddp", 2, 2)
    m = run({moe!r}, "ep", 6, "fsdp", 4, 2)
    # after fit() the model holds its full experts again and routes locally
    assert m.blocks[0].mlp.experts.w1.shape[0] == 4 and m.blocks[0].mlp.dispatcher is None
    run({loop!r}, "loop", 3, "fsdp", 2, 2)
else:  # 2 expert-parallel groups of 2: each shard has a replica
    run({moe!r}, "replicas", 4, "ddp", 1, 2)
    run({pool!r}, "pool", 4, "fsdp", 2, 2)
import torch.distributed as dist
dist.barrier()
dist.destroy_process_group()  # a gloo group alive at interpreter exit can abort the process
"""


def _losses(out: Path, key: str = "loss") -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def _single(moe: dict, out: Path, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny-llama", **moe))
    fit(model, None, ToyData(batch_size=8), TrainArgs(out_dir=str(out), max_steps=steps, **ARGS))
    return _losses(out)


@pytest.mark.slow
def test_expert_parallel_matches_one_process_and_resumes_on_any_world_size(tmp_path):
    script = tmp_path / "train_ep.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), moe=MOE, pool=POOL, loop=LOOP, args=ARGS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for world in (2, 4):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--standalone",
               str(script), str(tmp_path), str(world)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    ep, pool = tmp_path / "ep", tmp_path / "pool"
    # the expert-parallel checkpoint holds the full expert tensors, as one process saves them
    state, _ = ckpt.load_state_dict(ep)
    assert state["blocks.0.mlp.experts.w1"].shape == (4, 64, 64)
    distributed = _losses(ep)
    assert len(distributed) == 6
    single = _single(MOE, tmp_path / "single", 8)
    resumed = _single(MOE, ep, 8)  # one process continues the expert-parallel run
    assert resumed[:6] == distributed and len(resumed) == 8
    assert max(abs(a - b) for a, b in zip(single, resumed)) < 1e-5
    # the global gradient norm (clipped to 1) counts every expert shard once
    norms = _losses(tmp_path / "single", "grad_norm")
    assert max(abs(a - b) for a, b in zip(norms, _losses(ep, "grad_norm"))) < 1e-5
    assert max(abs(a - b) for a, b in zip(norms, _losses(tmp_path / "replicas", "grad_norm"))) < 1e-5
    a, b = ckpt.load_model(tmp_path / "single"), ckpt.load_model(ep)
    assert set(a.state_dict()) == set(b.state_dict())
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5), k
    assert a.state_dict()["blocks.0.mlp.router.score_bias"].abs().sum() > 0  # the bias moved (global loads)
    # 4 processes, expert-parallel 2: each shard's gradient is summed over its replica too
    replicas = _losses(tmp_path / "replicas")
    assert len(replicas) == 4 and max(abs(a - b) for a, b in zip(single, replicas)) < 1e-5
    # LoopMoE: each unique block's experts serve both iterations
    looped = _losses(tmp_path / "loop")
    assert len(looped) == 3
    assert max(abs(a - b) for a, b in zip(_single(LOOP, tmp_path / "loop1", 3), looped)) < 1e-5
    # UniPool: the pool loss's f̄ is the global load of the last micro-batch, the shared bank is sharded once
    pooled = _losses(pool)
    assert len(pooled) == 4
    assert max(abs(a - b) for a, b in zip(_single(POOL, tmp_path / "pool1", 4), pooled)) < 1e-5
    assert ckpt.load_state_dict(pool)[0]["expert_pools.0.experts.w1"].shape == (4, 64, 64)


class _Peer:
    """A stand-in dispatcher for one of two ranks: experts run here, the global counts add the other rank's
    (given per layer, in forward order)."""

    def __init__(self, others: list[torch.Tensor]) -> None:
        self.others = list(others)

    def run(self, bank, xs, counts, impl):
        return bank(xs, counts, impl)

    def global_counts(self, counts):
        return counts + self.others.pop(0)


def _loads(model: TransformerLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each MoE layer's assignments per expert on ``ids`` (no gradients: no routing state moves)."""
    with torch.no_grad():
        model(input_ids=ids)
    return [layer.last_stats["load"].long() for layer in model.moe_layers()]


@pytest.mark.parametrize("balance", ["aux", "loss_free", "pool"])
def test_routing_follows_the_global_loads(balance):
    """Two ranks with a dispatcher each, routing different sequences: the mean of their balancing losses, their
    loss-free load counts, UniPool's f̄ and the load statistics equal one process's on both ranks' sequences."""
    cfg = ModelConfig.from_name("tiny-llama", moe_experts=4, moe_top_k=2, moe_balance=balance,
                                moe_pool=balance == "pool", moe_aux_coef=0.1, moe_z_coef=1e-3)
    torch.manual_seed(0)
    ref = TransformerLM(cfg).train()
    ranks = [copy.deepcopy(ref), copy.deepcopy(ref)]
    for step in range(2):  # two micro-batches: the pool loss of the second uses the first's f̄
        ids = [torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(10 * step + r)) for r in (0, 1)]
        loads = [_loads(ref, x) for x in ids]
        outs = []
        for r, model in enumerate(ranks):
            peer = _Peer(loads[1 - r])  # one per rank: its layers take the other rank's counts in turn
            for layer in model.moe_layers():
                layer.dispatcher = peer
            outs.append(model(input_ids=ids[r], labels=ids[r]))
        both = torch.cat(ids)
        ref_out = ref(input_ids=both, labels=both)
        assert torch.allclose((outs[0].loss + outs[1].loss) / 2, ref_out.loss, atol=1e-6)
        for a, b, c in zip(ranks[0].moe_layers(), ranks[1].moe_layers(), ref.moe_layers()):
            assert torch.equal(a.last_stats["load"], c.last_stats["load"])
            assert (a.aux_loss is None) == (c.aux_loss is None)
            if c.aux_loss is not None:  # what DDP's gradient average sees: the mean of the ranks' losses
                assert torch.allclose((a.aux_loss + b.aux_loss) / 2, c.aux_loss, atol=1e-7)
            if balance == "loss_free":
                assert torch.equal(a.router.load_accum, c.router.load_accum)
    if balance == "pool":
        assert torch.equal(ranks[0].expert_pools[0].prev_load, ref.expert_pools[0].prev_load)
        assert ref.moe_layers()[0].aux_loss is not None


def test_a_rank_keeps_its_experts_and_counts_all_of_them():
    """Rank 1 of 2 keeps experts 2 and 3 of every bank (UniPool's shared bank once); the parameter count fit()
    reports still counts every expert."""
    model = TransformerLM(ModelConfig.from_name("tiny-llama", **POOL))
    w1 = model.expert_pools[0].experts.w1.detach().clone()  # (4, 64, 64)
    w2 = model.expert_pools[0].experts.w2.detach().clone()  # (4, 64, 32)
    total = model.num_parameters()
    cut_experts(model, ExpertParallel(size=2, rank=1, world=2, group=None, replicas=None))
    bank = model.expert_pools[0].experts
    assert torch.equal(bank.w1, w1[2:]) and torch.equal(bank.w2, w2[2:])
    assert model.moe_layers()[1].bank.w1 is model.expert_pools[0].experts.w1
    assert model.num_parameters() == total - (w1.numel() + w2.numel()) // 2  # the other rank's half
    assert num_parameters(model) == total


def test_optimizer_groups_merge_to_the_single_process_layout_and_split_back():
    order = ["emb", "a.w1", "a.experts.w1", "a.experts.w2", "norm", "b.w"]
    groups = [{"params": ["emb", "a.w1", "b.w"], "weight_decay": 0.1, "lr": 1.0},
              {"params": ["norm"], "weight_decay": 0.0, "lr": 1.0},
              {"params": ["a.experts.w1", "a.experts.w2"], "weight_decay": 0.1, "lr": 1.0, "expert_parallel": True}]
    merged = merge_param_groups(copy.deepcopy(groups), order)
    assert merged == [{"params": ["emb", "a.w1", "a.experts.w1", "a.experts.w2", "b.w"], "weight_decay": 0.1,
                       "lr": 1.0}, groups[1]]
    assert split_param_groups(merged, {"a.experts.w1", "a.experts.w2"}) == groups


def test_expert_parallel_size_must_divide_the_experts(tmp_path):
    cfg = ModelConfig.from_name("tiny-llama", moe_experts=3)
    with pytest.raises(ExpertParallelError, match=r"expert_parallel=2 does not divide the 3 experts.*\[1, 3\]"):
        check_expert_parallel(cfg, 2, world=2)
    pooled = ModelConfig.from_name("tiny-llama", moe_experts=2, moe_pool=True, moe_pool_size=6, moe_balance="pool")
    with pytest.raises(ExpertParallelError, match="moe_pool_size=6"):
        check_expert_parallel(pooled, 4, world=4)
    check_expert_parallel(pooled, 2, world=4)  # 2 divides both the pool and the 4 processes
    with pytest.raises(ExpertParallelError, match="dense FFNs"):
        check_expert_parallel(ModelConfig.from_name("tiny-llama"), 2, world=2)
    with pytest.raises(ExpertParallelError, match="needs a multiple of 2 processes, this run has 3"):
        check_expert_parallel(ModelConfig.from_name("tiny-llama", moe_experts=4), 2, world=3)
    with pytest.raises(ExpertParallelError, match="--parallel ddp or --parallel fsdp"):
        check_expert_parallel(ModelConfig.from_name("tiny-llama", moe_experts=4), 2, world=2, parallel="none")
    # fit() refuses before writing anything
    out = tmp_path / "run"
    with pytest.raises(ExpertParallelError, match="does not divide the 3 experts"):
        fit(TransformerLM(cfg), None, ToyData(batch_size=8),
            TrainArgs(out_dir=str(out), max_steps=1, progress=False, parallel="ddp", expert_parallel=2))
    assert not out.exists()
    with pytest.raises(ExpertParallelError, match="needs a multiple of 2 processes, this run has 1"):
        fit(TransformerLM(ModelConfig.from_name("tiny-llama", moe_experts=4)), None, ToyData(batch_size=8),
            TrainArgs(out_dir=str(out), max_steps=1, progress=False, parallel="ddp", expert_parallel=2))
    assert not out.exists()
    with pytest.raises(ValueError, match="expert_parallel=0 must be >= 1"):
        TrainArgs(expert_parallel=0).validate()
    # the CLI: a one-line error naming the setting and the fix, before any data is read (the corpus does not
    # exist), no run folder
    res = cli("train", "--preset", "tiny-llama", "--moe-experts", "3", "--parallel", "ddp", "--expert-parallel", "2",
              "--corpus", tmp_path / "missing.txt", "--out", out, code=2)
    assert "expert_parallel=2 does not divide the 3 experts" in res.output and not out.exists()
