"""Depth growth (StackBERT, interpolation, any layer map), MSG-style masked growth, optimizer carry-over.

Depth (StackBERT, Gong et al., ICML 2019; bert2BERT, Chen et al. 2022, arXiv 2110.07143): target layer l
copies source layer ``layer_map[l]`` — StackBERT stacks (``l mod L``: 0 1 0 1), interpolation repeats each layer in place (``⌊l·L/L'⌋``: 0 0 1 1). Neither is
function-preserving: every copy adds its residual contribution again. They copy weights exactly.

MSG (Yao et al., ICLR 2024, arXiv:2305.02869): new structure is multiplied by a mask m that ramps 0 → 1, so
the grown model is exactly the source function at m = 0 whatever the new weights are. The masks are model
state (:mod:`morphlm.model.growth_masks`: which layers, residual dims, heads and neurons are new, m and the
ramp position), saved in the grown checkpoint, so every verb that loads it computes the same function; the
model ramps them itself in every ``fit``. Here: :func:`msg_flags` reads the flags off a growth plan and
:class:`MaskedGrowth` puts them on a model (optionally also a ``fit`` callback, see its docstring).

Optimizer carry-over: :func:`carry_optimizer_state` maps AdamW moments through the same index maps
(entries of original source units keep their moments, new entries and new layers start at zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..model.growth_masks import masked_norm  # noqa: F401  (re-exported)
from ..train.optim import load_optimizer_state as _load_optimizer_state
from ..surgery import SurgeryPlan as GrowthPlan, new_entries, remap
from .errors import GrowthError


def expand_depth(state: Mapping[str, torch.Tensor], layer_map: Sequence[int], target_state: Mapping[str, torch.Tensor],
                 fresh_layers: Sequence[int] = (), prefix: str = "blocks.") -> dict[str, torch.Tensor]:
    """Copy ``blocks.{layer_map[k]}.*`` of ``state`` to ``blocks.k.*`` for every name of ``target_state``.

    Layers in ``fresh_layers`` keep ``target_state``'s (fresh) tensors; non-layer tensors come from ``state``.
    """
    out: dict[str, torch.Tensor] = {}
    for name, fresh in target_state.items():
        if name.startswith(prefix):
            idx, rest = name[len(prefix):].split(".", 1)
            k = int(idx)
            src = fresh if k in fresh_layers else state[f"{prefix}{layer_map[k]}.{rest}"]
        else:
            src = state[name]
        if src.shape != fresh.shape:
            raise GrowthError(f"{name}: source tensor {tuple(src.shape)} does not fit the target {tuple(fresh.shape)}")
        out[name] = src.detach().clone()
    return out


def top_copy_layers(n_source: int, n_target: int) -> list[int]:
    """MSLT stacking: keep layers 0..L-1 and put copies of the top ``n_target - L`` layers (in order) on top,
    e.g. 3 → 5: 0 1 2 1 2; growing by more than L repeats the whole stack (StackBERT, l mod L)."""
    if not 0 < n_source <= n_target:
        raise GrowthError(f"cannot stack {n_source} layers into {n_target}; the target must be at least as deep")
    add = n_target - n_source
    if add <= n_source:
        return list(range(n_source)) + list(range(n_source - add, n_source))
    return [i % n_source for i in range(n_target)]


# ---------------------------------------------------------------------------- masked growth
def msg_flags(plan: GrowthPlan, cfg) -> dict[str, torch.Tensor]:
    """The growth masks' flags (:class:`~morphlm.model.growth_masks.GrowthMasks`) of an MSG plan: the residual
    dims, query-head rows, FFN neurons and layers its index maps mark as new."""
    params = plan.params
    d_map = params["tok_emb.weight"].maps[1]
    flags = {"residual": d_map.is_new if d_map is not None else None,
             "heads": torch.zeros(cfg.n_layers, cfg.n_heads * cfg.head_dim, dtype=torch.bool),
             "neurons": torch.zeros(cfg.n_layers, cfg.d_ff, dtype=torch.bool),
             "layers": torch.zeros(cfg.n_layers, dtype=torch.bool)}
    for k in range(cfg.n_layers):
        for rest, key in (("attn.proj.weight", "heads"), ("mlp.fc2.weight", "neurons")):
            pm = params.get(f"blocks.{k}.{rest}")
            if pm is not None and pm.maps and pm.maps[1] is not None:
                flags[key][k] = pm.maps[1].is_new
    flags["layers"][list(plan.new_layers)] = True
    return flags


class MaskedGrowth:
    """MSG masks of ``plan`` put on a grown :class:`~morphlm.model.TransformerLM` (as model state: see
    :mod:`morphlm.model.growth_masks`), and an optional ``fit`` callback.

    The model ramps its masks itself in every ``fit`` (mask 0 at its first step, 1 after ``ramp_steps``); as a
    callback this object can also start the ramp at ``start_step`` and, at the first step, load
    ``optimizer_state`` (from :func:`carry_optimizer_state`) into the loop's optimizer.
    """

    def __init__(self, model: nn.Module, plan: GrowthPlan, ramp_steps: int = 100, start_step: int | None = None,
                 optimizer_state: dict | None = None) -> None:
        if ramp_steps < 0:
            raise GrowthError(f"ramp_steps={ramp_steps} must be >= 0")
        self.model, self.plan = model, plan
        self.start_step = start_step
        self.optimizer_state = optimizer_state
        model.add_growth_masks(int(ramp_steps), **msg_flags(plan, model.config))

    @property
    def masks(self):
        return self.model.growth_masks

    @property
    def ramp_steps(self) -> int:
        return self.masks.ramp_steps if self.masks is not None else 0

    @property
    def mask(self) -> float:
        return self.masks.mask if self.masks is not None else 1.0

    def set_mask(self, value: float) -> None:
        self.masks.set_mask(value)

    def value_at(self, step: int) -> float:
        start = self.start_step if self.start_step is not None else step
        return self.masks.value_at(step - start)

    def on_step_begin(self, state) -> None:
        if self.start_step is None:
            self.start_step = state.step
        if self.optimizer_state is not None and state.optimizer is not None:
            load_optimizer_state(state.raw_model or self.model, state.optimizer, self.optimizer_state)
            self.optimizer_state = None
        if self.masks is not None:
            self.set_mask(self.value_at(state.step))

    @property
    def done(self) -> bool:
        return self.mask >= 1

    def remove(self) -> None:
        """Drop the masks (the model becomes the plain grown model whatever the mask was)."""
        self.model.remove_growth_masks()


# ---------------------------------------------------------------------------- optimizer carry-over
def _read_optimizer_state(old_model: nn.Module, old: Any) -> dict:
    from ..train import checkpoint as ckpt
    from ..train.loop import _unflatten_optimizer
    from ..train.parallel import full_optimizer_state

    if isinstance(old, (str, Path)):
        trainer, tensors = ckpt.load_trainer_state(old)
        if not any(k.startswith("state::") for k in tensors):
            raise GrowthError(f"{old} holds no optimizer state to carry over; pass a run saved by `morphlm train`")
        return _unflatten_optimizer(tensors, trainer["param_groups"])
    if isinstance(old, torch.optim.Optimizer):
        return full_optimizer_state(old_model, old)
    if isinstance(old, Mapping) and "state" in old:
        if any(not isinstance(k, str) for k in old["state"]):
            raise GrowthError("the optimizer state is keyed by integer ids; pass the optimizer itself or a "
                              "parameter-name keyed state (torch.distributed.checkpoint get_optimizer_state_dict)")
        return dict(old)
    raise GrowthError(f"cannot read an optimizer state from {type(old).__name__}; pass a run directory, a torch "
                      f"optimizer or a name-keyed state dict")


def _param_groups(old_groups: list[dict], old_model: nn.Module, new_model: nn.Module) -> list[dict]:
    """New groups with the old hyperparameters: matrices/embeddings vs vectors, as the loop's build_optimizer."""
    old_dims = {n: p.dim() for n, p in old_model.named_parameters()}
    names = {True: [], False: []}
    for n, p in new_model.named_parameters():
        if p.requires_grad:
            names[p.dim() >= 2].append(n)
    groups = []
    for g in old_groups:
        kinds = {old_dims.get(n, 2) >= 2 for n in g["params"]}
        hyper = {k: v for k, v in g.items() if k != "params"}
        if len(kinds) == 1:
            groups.append({**hyper, "params": names[kinds.pop()]})
        else:
            groups.append({**hyper, "params": names[True] + names[False]})
    return [g for g in groups if g["params"]]


def carry_optimizer_state(old_model: nn.Module, old_optimizer_state_or_dir: Any, new_model: nn.Module,
                          index_map: GrowthPlan) -> dict:
    """AdamW state for the grown model: old parameters' moments through ``index_map``'s maps, new ones zero.

    ``old_optimizer_state_or_dir``: a run directory (its ``state/optimizer.safetensors``), a torch optimizer
    over ``old_model``, or a parameter-name keyed state ``{"state": {fqn: {...}}, "param_groups": [...]}``.
    Returns the same name-keyed format (the loop's resume format before ``_flatten_optimizer``): moments of
    entries that copy an original source unit are kept (not rescaled: Adam's update is invariant to a common
    scale of m and √v), duplicated/fresh entries and every later layer copy get zero moments, and new layers
    restart at step 0. Load it with :func:`load_optimizer_state` or ``MaskedGrowth(optimizer_state=...)``.
    """
    old = _read_optimizer_state(old_model, old_optimizer_state_or_dir)
    new_layers = set(index_map.new_layers)
    state: dict[str, dict[str, torch.Tensor]] = {}
    for fqn, p in new_model.named_parameters():
        pm = index_map.params.get(fqn)
        entry_old = old["state"].get(pm.source) if pm is not None and pm.source is not None else None
        is_new_layer = fqn.startswith("blocks.") and int(fqn.split(".")[1]) in new_layers
        if entry_old is None or is_new_layer:
            state[fqn] = {"step": torch.zeros((), dtype=torch.float32),
                          "exp_avg": torch.zeros_like(p, device="cpu"), "exp_avg_sq": torch.zeros_like(p, device="cpu")}
            continue
        mask = new_entries(pm.maps, p.shape)
        entry = {}
        for key, value in entry_old.items():
            if key == "step" or not torch.is_tensor(value) or value.dim() == 0:
                entry[key] = torch.as_tensor(value, dtype=torch.float32).clone()
            else:
                entry[key] = remap(value.detach().cpu(), pm.maps).masked_fill(mask, 0.0)
        state[fqn] = entry
    return {"state": state, "param_groups": _param_groups(old["param_groups"], old_model, new_model)}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Put a name-keyed optimizer state (e.g. from :func:`carry_optimizer_state`) into a live torch optimizer."""
    try:
        _load_optimizer_state(model, optimizer, state)
    except ValueError as exc:
        raise GrowthError(str(exc)) from exc


def to_resume_format(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(flat tensors for state/optimizer.safetensors, param_groups for trainer.json), as the loop saves them."""
    from ..train.loop import _flatten_optimizer

    return _flatten_optimizer(state)
