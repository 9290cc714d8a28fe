"""Training arguments, the learning-rate schedule, the optimizer and its (de)serialisation.

Split out of loop.py; ``fit`` and every method that trains import these from here (loop.py re-exports
them for convenience).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class TrainArgs:
    out_dir: str | None = None
    max_steps: int = 100
    micro_batch_size: int | None = None  # sequences per forward on one rank; None -> the whole rank slice
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | linear | constant
    schedule_steps: int | None = None  # horizon of the decay; None -> max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 0  # 0 -> evaluate only at the end
    eval_at_end: bool = True
    save_every: int = 0  # 0 -> save only at the end
    resume: str = "never"  # never | auto
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    parallel: str = "none"  # none | ddp | fsdp
    progress: bool = True
    tensorboard: bool = False
    flops_per_step: float | None = None  # override (e.g. distillation adds the teacher's forward)

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid training arguments: {msg}")

        need(self.max_steps > 0, f"max_steps={self.max_steps} must be > 0")
        need(self.lr > 0, f"lr={self.lr} must be > 0")
        need(self.schedule in ("cosine", "linear", "constant"), f"schedule={self.schedule!r}: cosine|linear|constant")
        need(self.resume in ("never", "auto"), f"resume={self.resume!r}: never|auto")
        need(self.parallel in ("none", "ddp", "fsdp"), f"parallel={self.parallel!r}: none|ddp|fsdp")
        need(self.precision in ("auto", "fp32", "bf16"), f"precision={self.precision!r}: auto|fp32|bf16")
        need(self.warmup_steps >= 0, "warmup_steps must be >= 0")


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warmup to ``lr``, then cosine/linear decay to ``lr·min_lr_ratio`` at ``schedule_steps``."""
    horizon = args.schedule_steps or args.max_steps
    if args.warmup_steps and step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if args.schedule == "constant":
        return args.lr
    span = max(horizon - args.warmup_steps, 1)
    progress = min(max((step - args.warmup_steps) / span, 0.0), 1.0)
    floor = args.lr * args.min_lr_ratio
    if args.schedule == "linear":
        return args.lr - (args.lr - floor) * progress
    return floor + 0.5 * (args.lr - floor) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings only (not on norms and biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = dict(lr=args.lr, betas=(args.beta1, args.beta2), eps=args.adam_eps)
    if device.type in ("cuda", "cpu"):
        kwargs["fused"] = True  # one kernel per step; on CPU about 4x faster than the foreach default
    return torch.optim.AdamW([g for g in groups if g["params"]], **kwargs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


# ---------------------------------------------------------------------------- state (de)flattening
def _flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors: dict[str, torch.Tensor] = {}
    for fqn, entry in osd["state"].items():
        for key, value in entry.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state::{fqn}::{key}"] = t
    return tensors, osd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if not name.startswith("state::"):
            continue
        _, fqn, key = name.split("::")
        state.setdefault(fqn, {})[key] = t
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Put a parameter-name keyed optimizer state ``{"state": {fqn: {...}}, ...}`` into a live torch optimizer."""
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for fqn, entry in state["state"].items():
        if fqn not in params:
            raise ValueError(f"optimizer state names parameter {fqn!r} that the model lacks")
        p = params[fqn]
        g = group_of.get(id(p), {})
        on_device = g.get("fused") or g.get("capturable")
        # copies: the optimizer updates its state in place and must not alter the caller's
        optimizer.state[p] = {
            k: (v.to(p.device if on_device else "cpu", torch.float32, copy=True) if k == "step"
                else v.to(p.device, p.dtype, copy=True))
            for k, v in entry.items()}


class LoadOptimizerState:
    """fit() callback: at the first step, load a name-keyed optimizer state (e.g. the AdamW moments a growth
    verb carried into the grown checkpoint, see checkpoint.read_initial_optimizer_state) into the optimizer."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def on_step_begin(self, fstate) -> None:
        if self.state is not None and fstate.optimizer is not None:
            load_optimizer_state(fstate.raw_model, fstate.optimizer, self.state)
            self.state = None
