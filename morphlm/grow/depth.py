"""Depth growth (StackBERT, interpolation, any layer map), MSG-style masked growth, optimizer carry-over.

Depth (refs/growth.md §1-2): target layer l copies source layer ``layer_map[l]`` — StackBERT stacks
(``l mod L``: 0 1 0 1), interpolation repeats each layer in place (``⌊l·L/L'⌋``: 0 0 1 1). Neither is
function-preserving: every copy adds its residual contribution again. They copy weights exactly.

MSG (Yao et al., ICLR 2024, refs/growth.md §7): new structure is multiplied by a mask m that ramps 0 → 1,
so the grown model is exactly the source function at m = 0 whatever the new weights are. Implemented with
forward hooks on the unmodified native model (state-dict names do not change), driven by the one training
loop through ``on_step_begin``:

* a new layer (a later copy in the layer map): ``h ← lerp(h, Block(h), m) = (1-m)·h + m·Block(h)``, the
  identity at m = 0 for pre- and post-norm blocks alike;
* new residual dimensions (d_model growth): embeddings, output projections and fc2 outputs are multiplied
  by c = [1 … 1, m … m]; every LayerNorm/RMSNorm computes its statistics with weights c (mean Σcᵢxᵢ/Σcᵢ,
  variance / mean square likewise) and multiplies its output by c. At m = 0 the statistics are exactly the
  source's over the old dimensions; at m = 1 it is the plain norm. (The public MSG code rescales an RMSNorm by
  √(Σc/D) instead, which is exact for RMSNorm without eps only; the weighted statistics are a reconstruction
  that is also exact for LayerNorm.) The classifier's input is masked the same way;
* new query heads / FFN neurons: the inputs of the output projection / fc2 are multiplied by a per-head /
  per-neuron mask.
At m >= 1 every hook returns the module's own output, so the model is bit-for-bit the plain grown model.
While the ramp runs with ``compile=True`` each new m value recompiles; train the ramp uncompiled.

Optimizer carry-over: :func:`carry_optimizer_state` maps AdamW moments through the same index maps
(entries of original source units keep their moments, new entries and new layers start at zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..model.norms import LayerNorm, RMSNorm
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
def masked_norm(module: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """LayerNorm/RMSNorm of x (…, D) with statistics weighted by c (D,) and the output multiplied by c."""
    dtype = x.dtype
    xf, w = x.float(), c.float()
    total = w.sum()
    if isinstance(module, RMSNorm):
        ms = (xf.square() * w).sum(-1, keepdim=True) / total
        y = module.weight * (xf * torch.rsqrt(ms + module.eps)).to(dtype)
    else:
        mu = (xf * w).sum(-1, keepdim=True) / total
        var = ((xf - mu).square() * w).sum(-1, keepdim=True) / total
        y = ((xf - mu) * torch.rsqrt(var + module.eps)).to(dtype) * module.weight
        if getattr(module, "bias", None) is not None:
            y = y + module.bias
    return y * c.to(y.dtype)


class MaskedGrowth:
    """MSG masks on a grown :class:`~morphlm.model.TransformerLM`, and a ``fit`` callback that ramps them.

    ``plan`` is the :class:`GrowthPlan` of the growth (its maps say which layers, residual dimensions, heads
    and neurons are new). The mask is 0 until ``start_step`` (default: the first step ``fit`` runs), then
    rises linearly to 1 over ``ramp_steps`` steps. ``optimizer_state`` (from :func:`carry_optimizer_state`)
    is loaded into the loop's optimizer at the first step.
    """

    def __init__(self, model: nn.Module, plan: GrowthPlan, ramp_steps: int = 100, start_step: int | None = None,
                 optimizer_state: dict | None = None) -> None:
        if ramp_steps < 0:
            raise GrowthError(f"ramp_steps={ramp_steps} must be >= 0")
        self.model, self.plan = model, plan
        self.ramp_steps, self.start_step = int(ramp_steps), start_step
        self.optimizer_state = optimizer_state
        self.mask = 0.0
        self._flags: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._install()

    # ------------------------------------------------------------------ hooks
    def _install(self) -> None:
        m, params = self.model, self.plan.params
        d_map = params["tok_emb.weight"].maps[1]
        if d_map is not None and bool(d_map.is_new.any()):
            self._flags["D"] = d_map.is_new
            for name in ("tok_emb", "pos_emb", "seg_emb"):
                if getattr(m, name, None) is not None:
                    self._out_hook(getattr(m, name), "D")
            for mod in m.modules():
                if isinstance(mod, (LayerNorm, RMSNorm)):
                    self._handles.append(mod.register_forward_hook(self._norm_hook))
            for block in m.blocks:
                self._out_hook(block.attn.proj, "D")
                self._out_hook(block.mlp.fc2, "D")
            if getattr(m, "classifier", None) is not None:
                self._in_hook(m.classifier, "D")
        for k, block in enumerate(m.blocks):
            for rest, mod in (("attn.proj.weight", block.attn.proj), ("mlp.fc2.weight", block.mlp.fc2)):
                pm = params.get(f"blocks.{k}.{rest}")
                if pm is not None and pm.maps and pm.maps[1] is not None and bool(pm.maps[1].is_new.any()):
                    key = f"{k}.{rest}"
                    self._flags[key] = pm.maps[1].is_new
                    self._in_hook(mod, key)
        for k in self.plan.new_layers:
            self._handles.append(m.blocks[k].register_forward_hook(self._block_hook))

    def _vec(self, key: str, like: torch.Tensor) -> torch.Tensor:
        ck = (key, like.device, like.dtype, self.mask)
        v = self._cache.get(ck)
        if v is None:
            v = torch.where(self._flags[key], torch.tensor(self.mask), torch.tensor(1.0)).to(like.device, like.dtype)
            self._cache[ck] = v
        return v

    def _out_hook(self, mod: nn.Module, key: str) -> None:
        def hook(module, args, out):
            return None if self.mask >= 1 else out * self._vec(key, out)
        self._handles.append(mod.register_forward_hook(hook))

    def _in_hook(self, mod: nn.Module, key: str) -> None:
        def hook(module, args):
            return None if self.mask >= 1 else (args[0] * self._vec(key, args[0]), *args[1:])
        self._handles.append(mod.register_forward_pre_hook(hook))

    def _norm_hook(self, module, args, out):
        if self.mask >= 1:
            return None
        return masked_norm(module, args[0], self._vec("D", args[0].float()))

    def _block_hook(self, module, args, out):
        if self.mask >= 1:
            return None
        h_out, scores = out
        return torch.lerp(args[0], h_out, self.mask), scores  # exactly args[0] at mask 0

    # ------------------------------------------------------------------ schedule
    def set_mask(self, value: float) -> None:
        self.mask = float(min(max(value, 0.0), 1.0))
        self._cache.clear()

    def value_at(self, step: int) -> float:
        start = self.start_step if self.start_step is not None else step
        if self.ramp_steps == 0:
            return 1.0
        return min(max((step - start) / self.ramp_steps, 0.0), 1.0)

    def on_step_begin(self, state) -> None:
        if self.start_step is None:
            self.start_step = state.step
        if self.optimizer_state is not None and state.optimizer is not None:
            load_optimizer_state(state.raw_model or self.model, state.optimizer, self.optimizer_state)
            self.optimizer_state = None
        self.set_mask(self.value_at(state.step))

    @property
    def done(self) -> bool:
        return self.mask >= 1

    def remove(self) -> None:
        """Detach every hook (the model becomes the plain grown model whatever the mask was)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


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
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for fqn, entry in state["state"].items():
        if fqn not in params:
            raise GrowthError(f"optimizer state names parameter {fqn!r} that the model lacks")
        p = params[fqn]
        g = group_of.get(id(p), {})
        on_device = g.get("fused") or g.get("capturable")
        # copies: the optimizer updates its state in place and must not alter the caller's
        optimizer.state[p] = {
            k: (v.to(p.device if on_device else "cpu", torch.float32, copy=True) if k == "step"
                else v.to(p.device, p.dtype, copy=True))
            for k, v in entry.items()}


def to_resume_format(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(flat tensors for state/optimizer.safetensors, param_groups for trainer.json), as the loop saves them."""
    from ..train.loop import _flatten_optimizer

    return _flatten_optimizer(state)
