"""Training arguments, the learning-rate schedule, the optimizer and its (de)serialisation.

Split out of loop.py; ``fit`` and every method that trains import these from here (loop.py re-exports
them for convenience).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
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
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 turns clipping off
    eval_every: int = 0  # 0 -> evaluate only at the end
    eval_at_end: bool = True
    save_every: int = 0  # 0 -> save only at the end
    resume: str = "never"  # never | auto
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16 matmuls, else fp32) | fp32 | bf16
    compile: bool = False
    parallel: str = "none"  # none | ddp | fsdp
    expert_parallel: int = 1  # shard each MoE layer's experts over groups of this many ranks (1 = off)
    progress: bool = True
    tensorboard: bool = False
    flops_per_step: float | None = None  # override (e.g. distillation adds the teacher's forward)
    override: bool = False  # resume even though run-defining settings changed (each change is recorded)
    stop_grace_s: float = 10.0  # after a stop signal, a step still running this long is aborted unsaved
    check_memory: bool = True  # refuse a run whose estimated memory exceeds the memory available

    def validate(self) -> None:
        """Check every field's type and range; raises ValueError naming the field, its value and the fix."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid training arguments: {msg}")

        hints = typing.get_type_hints(TrainArgs)
        for f in fields(self):
            value = getattr(self, f.name)
            need(_fits_type(value, hints[f.name]),
                 f"{f.name}={_short(value)} must be {_describe_type(hints[f.name])}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "adam_eps", "grad_clip",
                     "flops_per_step", "stop_grace_s"):
            value = getattr(self, name)
            need(value is None or math.isfinite(value), f"{name}={value} is not a finite number")
        need(self.max_steps > 0, f"max_steps={self.max_steps} must be > 0")
        need(self.micro_batch_size is None or self.micro_batch_size > 0,
             f"micro_batch_size={self.micro_batch_size} must be > 0 (or None: the whole per-process batch)")
        need(self.lr > 0, f"lr={self.lr} must be > 0")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio={self.min_lr_ratio} must be between 0 and 1")
        need(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be >= 0")
        need(self.schedule in ("cosine", "linear", "constant"), f"schedule={self.schedule!r}: cosine|linear|constant")
        need(self.schedule_steps is None or self.schedule_steps > 0,
             f"schedule_steps={self.schedule_steps} must be > 0 (or None: max_steps)")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
             f"beta1={self.beta1}, beta2={self.beta2}: AdamW's betas must be in [0, 1)")
        need(self.adam_eps > 0, f"adam_eps={self.adam_eps} must be > 0")
        need(self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0 (0 turns clipping off)")
        need(self.eval_every >= 0, f"eval_every={self.eval_every} must be >= 0 (0: only at the end)")
        need(self.save_every >= 0, f"save_every={self.save_every} must be >= 0 (0: only at the end)")
        need(self.resume in ("never", "auto"), f"resume={self.resume!r}: never|auto")
        need(0 <= self.seed < 2**62, f"seed={self.seed} must be between 0 and 2**62")
        need(self.parallel in ("none", "ddp", "fsdp"), f"parallel={self.parallel!r}: none|ddp|fsdp")
        need(self.expert_parallel >= 1, f"expert_parallel={self.expert_parallel} must be >= 1 (1: experts not "
                                        f"sharded)")
        need(self.precision in ("auto", "fp32", "bf16"), f"precision={self.precision!r}: auto|fp32|bf16")
        need(self.flops_per_step is None or self.flops_per_step >= 0,
             f"flops_per_step={self.flops_per_step} must be >= 0")
        need(self.stop_grace_s > 0, f"stop_grace_s={self.stop_grace_s} must be > 0 seconds")

    @property
    def horizon(self) -> int:
        """The steps the LR schedule spans: ``schedule_steps``, else ``max_steps``."""
        return self.schedule_steps or self.max_steps


# TrainArgs that define a run: a resume that changes one of them is no longer the same run (see the loop's
# resume check); the others (max_steps, micro-batching, device, logging, ...) only say how it is carried out.
RUN_DEFINING = ("seed", "lr", "min_lr_ratio", "warmup_steps", "schedule", "schedule_steps", "weight_decay",
                "beta1", "beta2", "adam_eps", "grad_clip", "precision")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fits_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` has a type ``hint`` allows (int | None, float, str, bool): a bool is not a number,
    an int is a float."""
    for t in typing.get_args(hint) or (hint,):
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is str and isinstance(value, str):
            return True
    return False


def _describe_type(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "None"}
    return " or ".join(names.get(t, str(t)) for t in (typing.get_args(hint) or (hint,)))


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
    """AdamW; weight decay on matrices and embeddings only (not on norms and biases). Expert-parallel shards
    (expert_parallel.py) get a group of their own, marked ``expert_parallel`` (under FSDP2 the fused kernel cannot
    mix them, plain tensors, with the DTensors); checkpoints merge it back into the decay group."""
    from . import expert_parallel as ep_mod
    from .parallel import unwrap

    ep = ep_mod.of(unwrap(model))
    shards = set(ep.params()) if ep is not None else set()
    decay, no_decay, experts = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            (experts if p in shards else decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"params": experts, "weight_decay": args.weight_decay, "expert_parallel": True}]
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
