"""The weight-shared super-model: sub-architectures as leading slices (:class:`SubnetView`), its training
through ``fit`` (:class:`SupernetLoss`, :func:`train_supernet`), standalone sub-models and the proxy fitness."""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ...model.attention import rope_tables
from ...model.config import ModelConfig
from ...model.transformer import ModelOutput, TransformerLM
from ...surgery import remap
from ..errors import CompressionError
from ..extract import choose_units, extract, extraction_plan
from .space import Arch, SearchSpace, arch_config, sample_arch


# ---------------------------------------------------------------------------- sub-models of the super-model
_PLANS: dict[tuple, Any] = {}


def _leading_plan(super_cfg: ModelConfig, sub_cfg: ModelConfig):
    key = (super_cfg.to_json(), sub_cfg.to_json())
    if key not in _PLANS:
        if len(_PLANS) > 256:
            _PLANS.clear()
        choice = choose_units(super_cfg, sub_cfg, "leading", layers="bottom")
        with torch.device("meta"):
            shell = TransformerLM(sub_cfg)
        plan = extraction_plan(super_cfg, sub_cfg, choice)
        # maps that are a prefix on every dim are plain slices: take a view instead of an index_select copy
        slices = {}
        for name, pm in plan.params.items():
            if all(m is None or torch.equal(m.index, torch.arange(m.n_target)) for m in pm.maps):
                slices[name] = tuple(slice(None) if m is None else slice(0, m.n_target) for m in pm.maps)
        _PLANS[key] = (plan, shell, slices)
    return _PLANS[key]


class SubnetView:
    """A callable with the model's forward signature that runs sub-architecture ``arch`` of ``super_model``
    on leading slices of its (shared, trainable) parameters; see the module docstring."""

    def __init__(self, super_model: TransformerLM, arch: Arch) -> None:
        self.super_model = super_model
        self.arch = arch
        self.config = arch_config(super_model.config, arch)
        self.plan, self.shell, self._slices = _leading_plan(super_model.config, self.config)

    @property
    def training(self) -> bool:
        return self.super_model.training

    def tensors(self) -> dict[str, torch.Tensor]:
        own = dict(self.super_model.named_parameters())
        out = {name: own[pm.source][self._slices[name]] if name in self._slices else remap(own[pm.source], pm.maps)
               for name, pm in self.plan.params.items()}
        if self.config.position == "rope":
            device = next(iter(own.values())).device
            out["rope_cos"], out["rope_sin"] = rope_tables(self.config, device=device)
        return out

    def __call__(self, *args, **kwargs) -> ModelOutput:
        self.shell.train(self.super_model.training)
        return functional_call(self.shell, self.tensors(), args, kwargs, strict=False)

    forward = __call__


def subnet(super_model: TransformerLM, arch: Arch | Mapping[str, int]) -> TransformerLM:
    """The standalone TransformerLM of ``arch`` (a copy of the super-model's leading slices)."""
    arch = arch if isinstance(arch, Arch) else Arch.from_dict(arch)
    cfg = arch_config(super_model.config, arch)
    return extract(super_model, cfg, method="leading", layers="bottom").model


class SupernetLoss:
    """``fit`` loss function *and* callback: samples the sub-architecture of each step (seeded by the step),
    runs ``inner(view, batch)`` on it (default: the model's own loss), and evaluates the full super-model."""

    def __init__(self, space: SearchSpace, seed: int = 0, inner: Callable | None = None) -> None:
        from ...train.loop import model_loss

        self.space, self.seed, self.inner = space, seed, inner or model_loss
        self.step = 0
        self.archs_seen: list[Arch] = []

    def arch_at(self, step: int) -> Arch:
        from ...data.batches import derive_seed

        return sample_arch(self.space, random.Random(derive_seed("supernet", self.seed, step)))

    def on_step_begin(self, state) -> None:
        self.step = state.step

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        from ...train.parallel import unwrap

        raw = unwrap(model)
        if not raw.training:  # fit's evaluation: the whole super-model
            return self.inner(raw, batch)
        return self.inner(SubnetView(raw, self.arch_at(self.step)), batch)


def train_supernet(super_model: TransformerLM, data: Any, args: Any, space: SearchSpace, *,
                   loss_fn: Callable | None = None, seed: int | None = None, callbacks: Iterable[Any] = (),
                   tokenizer_json: str | None = None, lineage: Mapping[str, Any] | None = None,
                   extra_state: Mapping[str, Any] | None = None):
    """Train the weight-shared super-model through ``fit`` (single process); returns fit's FitResult.

    ``loss_fn(view, batch)`` is run on the sampled sub-model (a :class:`SubnetView`, callable like the model);
    default: the model's own loss. ``seed`` (default ``args.seed``) seeds the arch sampling."""
    from ...train import checkpoint as ckpt
    from ...train import flops as flops_mod
    from ...train.loop import fit

    sizes = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")
    if any(getattr(super_model.config, k) != getattr(space.base, k) for k in sizes):
        raise CompressionError("the super-model's shape differs from the search space's base config; build the "
                               "super-model as TransformerLM(space.base)")
    loss = SupernetLoss(space, args.seed if seed is None else seed, loss_fn)
    if args.flops_per_step is None:
        start = 0
        if args.out_dir and args.resume == "auto" and ckpt.has_trainer_state(args.out_dir):
            start = int((ckpt.read_trainer_json(args.out_dir) or {}).get("step", 0))
        B, T = (int(n) for n in data.train_batch(0)["input_ids"].shape)
        per = [flops_mod.training_flops_per_token(space.arch_config(loss.arch_at(s)), T) * B * T
               for s in range(start, max(args.max_steps, start + 1))]
        args = dataclasses.replace(args, flops_per_step=sum(per) / len(per))
    lin = {"verb": "supernet", "space": space.to_dict(), "arch_seed": loss.seed, **(lineage or {})}
    extra = {"supernet_space": space.to_dict(), **(extra_state or {})}
    return fit(super_model, loss, data, args, [loss, *callbacks], tokenizer_json=tokenizer_json, lineage=lin,
               extra_state=extra)


# ---------------------------------------------------------------------------- fitness and baselines
def proxy_fitness(super_model: TransformerLM, batches: Sequence[Mapping[str, torch.Tensor]], *,
                  metric: str = "auto", finetune_data: Any = None,
                  finetune_args: Any = None) -> Callable[[Arch], float]:
    """Fitness = dev metric of the sub-model with inherited weights (accuracy for classifiers, −loss otherwise;
    ``metric='accuracy'|'neg_loss'`` forces one). With ``finetune_data`` and ``finetune_args`` (TrainArgs,
    no out_dir) a standalone copy is first fine-tuned through ``fit`` for ``finetune_args.max_steps`` steps."""
    from ...train.loop import evaluate, fit, model_loss

    if metric == "auto":
        metric = "accuracy" if super_model.config.head == "cls" else "neg_loss"
    if metric not in ("accuracy", "neg_loss"):
        raise CompressionError(f"metric={metric!r}: auto | accuracy | neg_loss")
    batches = list(batches)
    if not batches:
        raise CompressionError("proxy fitness needs at least one dev batch")
    device = next(super_model.parameters()).device

    def fitness(arch: Arch) -> float:
        if finetune_data is not None and finetune_args is not None:
            model = subnet(super_model, arch)
            fit(model, model_loss, finetune_data, dataclasses.replace(finetune_args, out_dir=None, progress=False))
        else:
            model = SubnetView(super_model, arch)
        was = super_model.training
        super_model.eval()
        try:
            with torch.no_grad():
                m = _evaluate_view(model, batches, device) if isinstance(model, SubnetView) else \
                    evaluate(model, model_loss, batches, device)
        finally:
            super_model.train(was)
        if metric == "accuracy":
            if "val_accuracy" not in m:
                raise CompressionError("metric 'accuracy' needs classification batches (a cls super-model)")
            return float(m["val_accuracy"])
        return -float(m["val_loss"])

    return fitness


def _evaluate_view(view: SubnetView, batches, device) -> dict[str, float]:
    from ...train.loop import model_loss

    total, sums = 0, {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, extra = model_loss(view, batch)
        w = batch["input_ids"].shape[0]
        total += w
        sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss) * w
        for k, v in extra.items():
            sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) * w
    return {k: v / total for k, v in sums.items()}
