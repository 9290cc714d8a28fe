"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 losses equal the single-process run within 1e-5."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from morphlm.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from toydata import ToyData
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.loop import TrainArgs, fit
torch.manual_seed(0)
m = TransformerLM(ModelConfig.from_name("tiny-llama"))
fit(m, None, ToyData(batch_size=8), TrainArgs(out_dir=sys.argv[2], max_steps=int(sys.argv[3]), schedule_steps=30,
    warmup_steps=2, lr=3e-3, progress=False, parallel=sys.argv[1], save_every=3, resume="auto",
    micro_batch_size=int(sys.argv[4]), precision="fp32"))  # fp32: bf16 rounds 1 x 8 and 2 x 2 x 2 batches apart
"""


def _run(tmp_path, mode, out, steps=6, nproc=1, micro=8):
    script = tmp_path / "train_dist.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--standalone", str(script)]
    proc = subprocess.run(cmd + [mode, str(out), str(steps), str(micro)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_single_process(tmp_path, mode):
    single = _run(tmp_path, "none", tmp_path / "single")
    multi = _run(tmp_path, mode, tmp_path / mode, nproc=2, micro=2)  # 2 ranks x 2 micro-batches of 2
    assert len(single) == len(multi) == 6
    assert max(abs(a - b) for a, b in zip(single, multi)) < 1e-5
    # the checkpoint is the unwrapped model (no module./_orig_mod. prefixes) and loads in one process
    a, b = ckpt.load_model(tmp_path / "single"), ckpt.load_model(tmp_path / mode)
    assert set(a.state_dict()) == set(b.state_dict())
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5)
    # a distributed run resumes from its own checkpoint
    resumed = _run(tmp_path, mode, tmp_path / mode, steps=8, nproc=2, micro=2)
    single8 = _run(tmp_path, "none", tmp_path / "single", steps=8)
    assert resumed[:6] == multi and len(resumed) == 8
    assert max(abs(a - b) for a, b in zip(single8, resumed)) < 1e-5
