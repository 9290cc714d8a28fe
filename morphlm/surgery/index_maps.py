"""Index maps: select / duplicate units of a weight along its axes (shared by growth and extraction).

An :class:`IndexMap` describes one axis of a target tensor (rows, columns, heads, neurons): target unit
``i`` comes from source unit ``g(i)``, or from nowhere (``g(i) = -1``: a *fresh* unit whose value is taken
from a freshly initialised tensor). This is bert2BERT's ``g`` (Chen et al., ACL 2022, arXiv 2110.07143, §3):

    in-dimension:  Ũ[:, i] = W[:, g_in(i)] / C_{g_in(i)},   C_x = |{i' : g_in(i') = x}|
    out-dimension: U[j, :] = Ũ[g_out(j), :]

(torch's ``(out, in)`` weight layout: rows are outputs). Growth uses maps with ``n_target >= n_source``
that contain every source unit; extraction (e.g. Extract-then-Distill) uses maps that *select* a subset
(``IndexMap.select``), with no count normalisation. "Source" is the model whose tensors are read (a growth
source, an extraction teacher), "target" the model being built.

API
---
``IndexMap(index, n_source)``                one axis; ``index`` is a LongTensor with values in [-1, n_source)
``IndexMap.identity(n)``                     g(i) = i
``IndexMap.grow(n_source, n_target, gen)``   g(i) = i for i < n_source, the rest sampled uniformly *without
                                             replacement* (fresh permutations when more than n_source extras
                                             are needed), so every count C_x differs by at most 1 and a
                                             growth by an integer factor duplicates every unit equally often
``IndexMap.extend(n_source, n_target)``      identity prefix, the rest fresh (-1)
``IndexMap.select(indices, n_source)``       keep these source units, in this order (extraction / pruning)
``IndexMap.cat(maps)``                       a fused axis ([q; k; v], [gate; up]); source offsets are added
``m.per_unit(k)``                            a unit map → a row map where every unit spans k rows (head → dims);
                                             ``per_unit(k, within=...)`` keeps some rows of each unit (head dims)
``m.without_duplicates()``                   every repeated unit becomes fresh (masked growth: new units are new)
``m.counts`` (n_source,)  ``m.scale`` (n_target,) = 1/C_{g(i)}  ``m.is_new``: fresh or not the first copy
``remap(t, maps, divide=(), fresh=None)``    apply one map per dim (None = keep the axis); divide the dims in
                                             ``divide`` by the counts; fresh entries come from ``fresh``
``new_entries(maps, shape)``                 bool mask of entries that are not an original source entry
``ParamMap(source, maps, divide)``           recipe of one target tensor from one source tensor
``apply_plan(plan, source_state, fresh)``    run the recipes → a target state dict
``SurgeryPlan``                              per-parameter recipes + the layer map (what optimizer carry-over
                                             and masked growth need to know)
``compose_depth(width_plan, layer_map)``     recipes over source layers + a layer map → recipes over target layers
``first_copies(layer_map)``                  which target layers are the first copy of their source layer
Layer maps themselves (one type, one convention, one parser) are :mod:`morphlm.surgery.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .errors import SurgeryError


def _perm(n: int, generator: torch.Generator | None) -> list[int]:
    return torch.randperm(n, generator=generator).tolist()


@dataclass(frozen=True)
class IndexMap:
    index: torch.Tensor  # (n_target,) long, values in [-1, n_source)
    n_source: int

    def __post_init__(self) -> None:
        idx = torch.as_tensor(self.index, dtype=torch.long).reshape(-1)
        object.__setattr__(self, "index", idx)
        if idx.numel() and (int(idx.min()) < -1 or int(idx.max()) >= self.n_source):
            raise ValueError(f"index map values must lie in [-1, {self.n_source}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def identity(cls, n: int) -> "IndexMap":
        return cls(torch.arange(n), n)

    @classmethod
    def grow(cls, n_source: int, n_target: int, generator: torch.Generator | None = None) -> "IndexMap":
        if n_target < n_source:
            raise SurgeryError(f"cannot grow an axis of {n_source} units to {n_target}; use IndexMap.select to shrink")
        extra: list[int] = []
        while len(extra) < n_target - n_source:
            extra.extend(_perm(n_source, generator))
        return cls(torch.tensor(list(range(n_source)) + extra[: n_target - n_source], dtype=torch.long), n_source)

    @classmethod
    def extend(cls, n_source: int, n_target: int) -> "IndexMap":
        if n_target < n_source:
            raise SurgeryError(f"cannot extend an axis of {n_source} units to {n_target}")
        return cls(torch.cat([torch.arange(n_source), torch.full((n_target - n_source,), -1)]), n_source)

    @classmethod
    def select(cls, indices: Sequence[int] | torch.Tensor, n_source: int) -> "IndexMap":
        return cls(torch.as_tensor(indices, dtype=torch.long), n_source)

    @classmethod
    def cat(cls, maps: Sequence["IndexMap"]) -> "IndexMap":
        parts, offset = [], 0
        for m in maps:
            parts.append(torch.where(m.index >= 0, m.index + offset, m.index))
            offset += m.n_source
        return cls(torch.cat(parts), offset)

    # ------------------------------------------------------------------ derived
    @property
    def n_target(self) -> int:
        return int(self.index.numel())

    def per_unit(self, k: int, within: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None
                 ) -> "IndexMap":
        """Unit map → row map where unit u spans rows [u·k, (u+1)·k) (e.g. heads → their head_dim rows).

        ``within`` keeps only some rows of every unit, in the given order: one list of offsets in [0, k) shared
        by every target unit, or one list per target unit (extraction keeps a subset of each head's dims).
        """
        if within is None:
            offsets = torch.arange(k)[None, :].expand(self.n_target, k)
        else:
            offsets = torch.as_tensor(within, dtype=torch.long)
            if offsets.dim() == 1:
                offsets = offsets[None, :].expand(self.n_target, -1)
            if offsets.dim() != 2 or offsets.shape[0] != self.n_target:
                raise ValueError(f"within= must give one offset list, or one per target unit ({self.n_target}); "
                                 f"got shape {tuple(offsets.shape)}")
            if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) >= k):
                raise ValueError(f"within= offsets must lie in [0, {k})")
        rows = self.index[:, None] * k + offsets  # (n_target, k or len(within))
        rows = torch.where(self.index[:, None] >= 0, rows, torch.full_like(rows, -1))
        return IndexMap(rows.reshape(-1), self.n_source * k)

    @property
    def counts(self) -> torch.Tensor:
        """C_x: how many target units copy source unit x (fresh units are not counted)."""
        valid = self.index[self.index >= 0]
        return torch.bincount(valid, minlength=self.n_source)

    @property
    def scale(self) -> torch.Tensor:
        """1 / C_{g(i)} for every target unit (1 for fresh units): the FPI in-dimension factor."""
        counts = self.counts.clamp(min=1).to(torch.float64)
        safe = self.index.clamp(min=0)
        return torch.where(self.index >= 0, 1.0 / counts[safe], torch.ones(()))

    @property
    def is_fresh(self) -> torch.Tensor:
        return self.index < 0

    @property
    def is_new(self) -> torch.Tensor:
        """True for fresh units and for every copy of a source unit but its first (in target order)."""
        order = torch.argsort(self.index, stable=True)  # equal values keep their target order
        ordered = self.index[order]
        later = torch.zeros_like(ordered, dtype=torch.bool)
        later[1:] = ordered[1:] == ordered[:-1]
        out = torch.empty_like(later)
        out[order] = later
        return out | (self.index < 0)

    def without_duplicates(self) -> "IndexMap":
        return IndexMap(torch.where(self.is_new, torch.full_like(self.index, -1), self.index), self.n_source)

    def to_list(self) -> list[int]:
        return self.index.tolist()


# ---------------------------------------------------------------------------- applying maps
def _view(vec: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return vec.view(shape)


def new_entries(maps: Sequence[IndexMap | None], shape: Sequence[int], which: str = "new") -> torch.Tensor:
    """Bool mask (``shape``) of entries with a new (``which='new'``) or fresh (``'fresh'``) index on any dim."""
    out = torch.zeros(tuple(shape), dtype=torch.bool)
    for dim, m in enumerate(maps):
        if m is not None:
            flag = m.is_new if which == "new" else m.is_fresh
            out = out | _view(flag, dim, len(shape))
    return out


def remap(tensor: torch.Tensor, maps: Sequence[IndexMap | None], divide: Sequence[int] = (),
          fresh: torch.Tensor | None = None) -> torch.Tensor:
    """Select/duplicate ``tensor`` along every dim that has a map; divide dims in ``divide`` by the counts.

    Fresh entries (index -1 on any dim) are taken from ``fresh`` (zeros when it is None).
    """
    out = tensor
    for dim, m in enumerate(maps):
        if m is None:
            continue
        if m.n_source != out.shape[dim]:
            raise ValueError(f"index map for dim {dim} expects {m.n_source} source units, tensor has {out.shape[dim]}")
        out = out.index_select(dim, m.index.clamp(min=0).to(out.device))
        if dim in divide:
            out = out * _view(m.scale.to(out.device, out.dtype), dim, out.dim())
    if any(m is not None and bool(m.is_fresh.any()) for m in maps):
        mask = new_entries(maps, out.shape, which="fresh").to(out.device)
        out = out.masked_fill(mask, 0.0) if fresh is None else torch.where(mask, fresh.to(out), out)
    return out.contiguous()


@dataclass
class ParamMap:
    """Target tensor = remap(source_state[source], maps, divide); ``source=None``: entirely fresh."""

    source: str | None
    maps: tuple[IndexMap | None, ...] = ()
    divide: tuple[int, ...] = ()


@dataclass
class SurgeryPlan:
    """How every target parameter derives from the source model (width maps composed with a layer map).

    ``new_layers``: target layers that are not the first copy of their source layer (growth duplicates)."""

    params: dict[str, ParamMap]
    layer_map: list[int]
    new_layers: list[int] = field(default_factory=list)


def apply_plan(plan: Mapping[str, ParamMap], source_state: Mapping[str, torch.Tensor],
               fresh_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run each recipe of ``plan`` → {target name: tensor}; shapes are checked against ``fresh_state``."""
    out: dict[str, torch.Tensor] = {}
    for name, pm in plan.items():
        fresh = fresh_state[name]
        if pm.source is None:
            out[name] = fresh.detach().clone()
            continue
        t = remap(source_state[pm.source].detach(), pm.maps, pm.divide, fresh.detach())
        if t.shape != fresh.shape:
            raise ValueError(f"{name}: recipe gives shape {tuple(t.shape)}, target needs {tuple(fresh.shape)}")
        out[name] = t.to(fresh.dtype)
    return out


# ---------------------------------------------------------------------------- depth
def first_copies(layer_map: Sequence[int]) -> list[bool]:
    """True at the first target position of each source layer (the 'old' layers), False at later copies."""
    seen: set[int] = set()
    out = []
    for s in layer_map:
        out.append(s not in seen)
        seen.add(s)
    return out


def compose_depth(width_plan: Mapping[str, ParamMap], layer_map: Sequence[int], fresh_layers: Sequence[int] = (),
                  prefix: str = "blocks.") -> SurgeryPlan:
    """Plan over source layers (width maps) + layer map → plan over the target layers.

    Target ``blocks.k.X`` takes the recipe of ``blocks.{layer_map[k]}.X``; layers in ``fresh_layers`` are
    entirely fresh. Non-layer parameters keep their recipes.
    """
    params: dict[str, ParamMap] = {}
    per_layer: dict[int, dict[str, ParamMap]] = {}
    for name, pm in width_plan.items():
        if name.startswith(prefix):
            idx, rest = name[len(prefix):].split(".", 1)
            per_layer.setdefault(int(idx), {})[rest] = pm
        else:
            params[name] = pm
    for k, s in enumerate(layer_map):
        for rest, pm in per_layer[s].items():
            params[f"{prefix}{k}.{rest}"] = ParamMap(None) if k in fresh_layers else pm
    firsts = first_copies(layer_map)
    return SurgeryPlan(params, list(layer_map), [k for k, first in enumerate(firsts) if not first])
