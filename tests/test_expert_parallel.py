"""Expert parallelism: experts sharded over 2 gloo processes (all-to-all token exchange) train like one process.

One chain of runs of a tiny MoE (4 experts, top-2, a shared expert, loss-free balancing, z-loss):
one process for 8 steps; 2 processes, expert-parallel 2 under FSDP2, for 4 steps; resumed by 2 processes,
expert-parallel 2 under DDP, to step 6; resumed by ONE process to step 8 (the checkpoint holds the full experts).
Every loss matches the single-process run within 1e-5, and so do the final weights and routing buffers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train.expert_parallel import ExpertParallelError, check_expert_parallel
from morphlm.train.loop import TrainArgs, fit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toydata import ToyData  # noqa: E402

MOE = dict(moe_experts=4, moe_top_k=2, moe_shared_experts=1, moe_expert_d_ff=32, moe_balance="loss_free",
           moe_bias_update=1e-2, moe_z_coef=1e-3)

SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from toydata import ToyData
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.loop import TrainArgs, fit
torch.manual_seed(0)
m = TransformerLM(ModelConfig.from_name("tiny-llama", **{moe!r}))
mode, out, steps, micro, ep = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
fit(m, None, ToyData(batch_size=8), TrainArgs(out_dir=out, max_steps=steps, schedule_steps=30, warmup_steps=2,
    lr=3e-3, progress=False, parallel=mode, save_every=4, resume="auto", micro_batch_size=micro,
    expert_parallel=ep))
if ep > 1:  # after fit() the model holds its full experts again and routes locally
    assert m.blocks[0].mlp.experts.w1.shape[0] == 4 and m.blocks[0].mlp.dispatcher is None
"""


def _run(tmp_path, out, steps, *, mode="none", nproc=1, micro=8, ep=1):
    script = tmp_path / "train_ep.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), moe=MOE))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
               str(script)]
    proc = subprocess.run(cmd + [mode, str(out), str(steps), str(micro), str(ep)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_expert_parallel_matches_one_process_and_resumes_on_any_world_size(tmp_path):
    single = _run(tmp_path, tmp_path / "single", 8)
    ep = tmp_path / "ep"
    first = _run(tmp_path, ep, 4, mode="fsdp", nproc=2, micro=2, ep=2)  # 2 ranks x 2 micro-batches of 2
    assert len(first) == 4 and max(abs(a - b) for a, b in zip(single, first)) < 1e-5
    # the expert-parallel checkpoint holds the full expert tensors, as one process saves them
    state, _ = ckpt.load_state_dict(ep)
    assert state["blocks.0.mlp.experts.w1"].shape == (4, 64, 64)
    more = _run(tmp_path, ep, 6, mode="ddp", nproc=2, micro=4, ep=2)  # resume under DDP
    assert more[:4] == first and len(more) == 6
    last = _run(tmp_path, ep, 8)  # resume in one process, without expert parallelism
    assert len(last) == 8
    assert max(abs(a - b) for a, b in zip(single, last)) < 1e-5
    a, b = ckpt.load_model(tmp_path / "single"), ckpt.load_model(ep)
    assert set(a.state_dict()) == set(b.state_dict())
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5), k
    # the loss-free bias moved (it follows the global loads, identical on every rank)
    assert a.state_dict()["blocks.0.mlp.router.score_bias"].abs().sum() > 0


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
    model = TransformerLM(cfg)
    with pytest.raises(ExpertParallelError, match="does not divide the 3 experts"):
        fit(model, None, ToyData(batch_size=8), TrainArgs(out_dir=str(out), max_steps=1, progress=False,
                                                          parallel="ddp", expert_parallel=2))
    assert not out.exists()
    with pytest.raises(ValueError, match="expert_parallel=0 must be >= 1"):
        TrainArgs(expert_parallel=0).validate()
