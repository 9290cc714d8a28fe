"""The pieces fit() (morphlm.train.loop) is assembled from: loading the run to resume, batch geometry and
device placement, evaluation, the metrics file, and the optimizer of a loss's auxiliary modules. Nothing here
holds a run's state across steps except :class:`MetricsWriter` (an open file) and :class:`AuxOptimizer`."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from . import checkpoint as ckpt
from .optim import RUN_DEFINING, TrainArgs, build_optimizer
from .parallel import DistInfo, unwrap

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], Any]


@functools.lru_cache(maxsize=None)
def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX tiles), so bf16 autocast speeds it
    up (oneDNN's bf16 matmul is several times its fp32 one there) instead of emulating bf16 in fp32.
    ``MORPHLM_CPU_BF16=0`` (or ``1``) overrides the detection, e.g. to reproduce fp32 numbers of older runs."""
    env = os.environ.get("MORPHLM_CPU_BF16", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(fn()) for fn in checks if callable(fn))


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a run on ``device`` computes in: ``bf16`` or ``fp32``. ``auto`` is bf16 autocast on CUDA and
    on CPUs with native bf16 matmuls (:func:`cpu_bf16_supported`), fp32 elsewhere."""
    if precision in ("bf16", "fp32"):
        return precision
    if precision != "auto":
        raise ValueError(f"precision={precision!r}: choose auto, fp32 or bf16")
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported()):
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` resolves to bf16 on ``device`` (:func:`resolve_precision`), else nothing."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def slice_batch(batch: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    return {k: v[lo:hi] for k, v in batch.items()}


def split_loss(result) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss`` or ``(loss, {name: scalar})`` -> (loss, extras)."""
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


def routing_terms(model: nn.Module, device: torch.device) -> tuple[torch.Tensor | None,
                                                                  dict[str, torch.Tensor]]:
    """A mixture-of-experts model's routing losses of its last forward — the sum fit() adds to the loss it
    differentiates (None when there are none) — and its routing metrics for metrics.jsonl: ``loss_aux`` (0 when
    no loss applied to this micro-batch) and the per-layer load statistics (``TransformerLM.moe_metrics``).
    A Switch Attention model's regulariser joins the same sum (``loss_switch``, with the per-layer realised full
    fraction of ``TransformerLM.switch_metrics``). (None, {}) for a dense full-attention model."""
    cfg = getattr(model, "config", None)
    aux, metrics = None, {}
    if getattr(cfg, "moe_experts", 0) and hasattr(model, "moe_aux_loss"):
        aux = model.moe_aux_loss()
        metrics = {"loss_aux": aux.detach().float() if aux is not None else torch.zeros((), device=device)}
        metrics.update(model.moe_metrics())
    if getattr(cfg, "attention", "full") == "switch" and hasattr(model, "switch_aux_loss"):
        # Switch Attention: the regulariser λ·ρ̄ of every layer joins the same sum (logged as loss_switch)
        reg = model.switch_aux_loss()
        metrics["loss_switch"] = reg.detach().float() if reg is not None else torch.zeros((), device=device)
        metrics.update(model.switch_metrics())
        if reg is not None:
            aux = reg if aux is None else aux + reg
    return aux, metrics


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batches: Iterable[dict[str, torch.Tensor]],
             device: torch.device, precision: str = "auto") -> dict[str, float]:
    """Mean loss (and mean extra metrics) over batches, weighted by sequences per batch."""
    was_training = model.training
    model.eval()
    total_w, sums = 0, {}
    for batch in batches:
        batch = to_device(batch, device)
        with autocast(device, precision):
            loss, extra = split_loss(loss_fn(model, batch))
        w = batch["input_ids"].shape[0]
        total_w += w
        sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss) * w
        for k, v in extra.items():
            sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) * w
    model.train(was_training)
    if total_w == 0:
        raise ValueError("evaluation got no batches: the validation split is empty; use a larger corpus")
    out = {k: v / total_w for k, v in sums.items()}
    out["val_ppl"] = math.exp(min(out["val_loss"], 50.0))
    return out


def load_resume(out_dir: Path | None, args: TrainArgs, model: nn.Module):
    """Load the run in ``out_dir`` into ``model`` (if there is one): (trainer state or None, optimizer tensors).
    Fills ``args.schedule_steps`` from the saved run when it is not given (extending a run keeps its
    schedule); whether the rest is the same run is :func:`run_changes`' question."""
    if out_dir is None or not ckpt.has_trainer_state(out_dir):
        return None, {}
    if args.resume != "auto":
        raise ckpt.CheckpointError(
            f"{out_dir} already holds a training run; pass --resume auto to continue it, "
            f"or choose another --out so nothing is overwritten")
    resume_state, optim_tensors = ckpt.load_trainer_state(out_dir)
    if args.schedule_steps is None:
        args.schedule_steps = resume_state.get("schedule_steps")
    state, _ = ckpt.load_state_dict(out_dir)
    unwrap(model).load_state_dict(state)
    return resume_state, optim_tensors


# data-spec entries that the batch geometry also names (reported once, under these names)
_GEOMETRY_KEYS = ("batch_size", "seq_len")


def run_changes(saved: dict[str, Any], args: TrainArgs, extra_state: dict[str, Any] | None,
                geometry: "Geometry") -> dict[str, tuple[Any, Any]]:
    """What a resume would change of the saved run: {setting: (saved, asked)} over the run-defining
    arguments (optim.RUN_DEFINING; ``schedule_steps`` after it was filled from the saved run), every
    ``extra_state`` entry the saved state has too (data and tokenizer fingerprints, the data spec entry by
    entry, ...), and the shape of the batch of the saved step (``geometry``: sequences, tokens per sequence —
    per step, since padded batches vary in length) against ``geometry``, the resume's first batch, which is
    that same step's. Entries the saved run did not record (older checkpoints) are not compared."""
    changes: dict[str, tuple[Any, Any]] = {}
    saved_args = saved.get("args") if isinstance(saved.get("args"), dict) else {}
    for key in RUN_DEFINING:
        old = saved.get("schedule_steps") if key == "schedule_steps" else saved_args.get(key)
        new = getattr(args, key)
        if old is not None and old != new:
            changes[key] = (old, new)
    for key, new in (extra_state or {}).items():
        old = saved.get(key)
        if old is None or new is None:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    changes[sub if key == "data_spec" else f"{key}.{sub}"] = (old.get(sub), new.get(sub))
        elif old != new:
            changes[key] = (old, new)
    geo_now = {"batch_size": geometry.global_batch, "seq_len": geometry.seq_len}
    geo_saved = saved.get("geometry")
    if isinstance(geo_saved, dict):  # the shape of the batch of the saved step (which the resume starts with)
        for key in _GEOMETRY_KEYS:
            if key in geo_saved and geo_saved[key] != geo_now[key] and key not in changes:
                changes[key] = (geo_saved[key], geo_now[key])
    return changes


@dataclass
class Geometry:
    """How one optimizer step's global batch splits over ranks and micro-batches."""

    global_batch: int
    seq_len: int
    per_rank: int
    micro: int
    n_micro: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @classmethod
    def of(cls, first_batch: dict[str, torch.Tensor], info: DistInfo, micro_batch_size: int | None) -> "Geometry":
        global_batch, seq_len = (int(n) for n in first_batch["input_ids"].shape)
        if global_batch % info.world_size:
            raise ValueError(f"the global batch of {global_batch} sequences is not divisible by the "
                             f"{info.world_size} processes; pick a batch size that is")
        per_rank = global_batch // info.world_size
        micro = micro_batch_size or per_rank
        if per_rank % micro:
            raise ValueError(f"micro_batch_size={micro} must divide the per-process batch of {per_rank} sequences")
        return cls(global_batch, seq_len, per_rank, micro, per_rank // micro)

    def micro_batches(self, global_batch: dict[str, torch.Tensor], info: DistInfo,
                      device: torch.device) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of a global batch, already on their way to the device."""
        local = slice_batch(global_batch, info.rank * self.per_rank, (info.rank + 1) * self.per_rank)
        out = []
        for i in range(self.n_micro):
            mb = slice_batch(local, i * self.micro, (i + 1) * self.micro)
            if device.type == "cuda":
                mb = {k: v.pin_memory() for k, v in mb.items()}
            out.append(to_device(mb, device))
        return out


class AuxOptimizer:
    """fit(aux_modules=...): the loss's own trainable parameters (distillation's projections), moved to the
    device and updated by an AdamW with the model's settings. Their weights and optimizer state are stored
    among the optimizer tensors as ``aux.param::NAME`` and ``aux.state::I::KEY`` (param groups in the trainer
    state's ``aux_param_groups``), so resume is exact."""

    def __init__(self, modules: nn.Module | None, args: TrainArgs, device: torch.device,
                 resume_state: dict[str, Any] | None, optim_tensors: dict[str, torch.Tensor]) -> None:
        self.modules = modules
        self.params: list[torch.nn.Parameter] = []
        self.opt: torch.optim.Optimizer | None = None
        if modules is None:
            return
        modules.to(device)
        self.params = [p for p in modules.parameters() if p.requires_grad]
        if resume_state is not None:
            saved = {k.split("::", 1)[1]: v for k, v in optim_tensors.items() if k.startswith("aux.param::")}
            if saved:
                modules.load_state_dict(saved)
        if not self.params:
            return
        self.opt = build_optimizer(modules, args, device)
        if resume_state is not None and resume_state.get("aux_param_groups"):
            state: dict[int, dict[str, torch.Tensor]] = {}
            for name, t in optim_tensors.items():
                if name.startswith("aux.state::"):
                    _, idx, key = name.split("::")
                    state.setdefault(int(idx), {})[key] = t
            self.opt.load_state_dict({"state": state, "param_groups": resume_state["aux_param_groups"]})

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups if self.opt is not None else []

    def step(self) -> None:
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def save_into(self, tensors: dict[str, torch.Tensor]) -> list[dict] | None:
        """Add the modules' weights and optimizer state to ``tensors``; returns the param groups (or None)."""
        if self.modules is None:
            return None
        for name, t in self.modules.state_dict().items():
            tensors[f"aux.param::{name}"] = t.detach().cpu()
        if self.opt is None:
            return None
        sd = self.opt.state_dict()
        for idx, entry in sd["state"].items():
            for key, value in entry.items():
                tensors[f"aux.state::{idx}::{key}"] = (value if torch.is_tensor(value)
                                                       else torch.tensor(value)).detach().cpu()
        return sd["param_groups"]


class MetricsWriter:
    """metrics.jsonl (one JSON record per step) and, optionally, TensorBoard scalars."""

    def __init__(self, path: Path | None, resume_step: int, enabled: bool) -> None:
        self.path = path if enabled else None
        self.tb = None
        if self.path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a run killed between checkpoints logged steps the checkpoint never saw: drop them
            ckpt.trim_metrics(path, resume_step)
            self.f = ckpt.open_append(path)  # refuses a symbolic link: nothing is written outside the run

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.path is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()
