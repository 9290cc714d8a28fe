"""Growth-only plan building on top of :mod:`morphlm.surgery`: attention-head maps that keep GQA groups
together, and growth's layer-map parsing (``stack`` | ``interpolate`` | an explicit 0-based list)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..surgery import IndexMap, LayerMap, parse_layer_map
from .errors import GrowthError


def _perm(n: int, generator: torch.Generator | None) -> list[int]:
    return torch.randperm(n, generator=generator).tolist()


def resolve_layer_map(spec: str | Sequence[int] | None, n_source: int, n_target: int) -> LayerMap:
    """'stack' (default) | 'interpolate' | an explicit 0-based list (or '0,0,1,1') → a validated
    :class:`~morphlm.surgery.LayerMap` of length n_target (the one convention of :mod:`morphlm.surgery.layers`)."""
    return parse_layer_map(spec, n_source, n_target, names=("stack", "interpolate"), default="stack",
                           roles=("source", "target"), error=GrowthError)


def gqa_head_maps(h: int, hkv: int, H: int, Hkv: int,
                  generator: torch.Generator | None = None) -> tuple[IndexMap, IndexMap]:
    """(query-head map H → h, kv-head map Hkv → hkv) such that every target query head attends with a copy
    of its source query head's kv head, and every source query head appears at least once.

    A source kv group s (its ``h/hkv`` query heads) is given ``ceil((h/hkv) / (H/Hkv))`` target groups (adjacent)
    plus, balanced, any spare target groups; its query heads fill those groups' slots first in order, then
    uniformly sampled (balanced) heads of the same group. Plain multi-head attention is the case hkv = h.
    """
    rep, R = h // hkv, H // Hkv
    need = max(1, math.ceil(rep / R))
    if hkv * need > Hkv:
        raise GrowthError(
            f"cannot grow attention from {h} query / {hkv} kv heads to {H} / {Hkv}: each of the {hkv} kv groups "
            f"holds {rep} query heads and needs {need} target kv heads of {R} query heads, i.e. n_kv_heads >= "
            f"{hkv * need}; raise n_kv_heads or keep n_heads/n_kv_heads <= {rep} x more heads per group")
    kv = [s for s in range(hkv) for _ in range(need)]
    spare: list[int] = []
    while len(spare) < Hkv - len(kv):
        spare.extend(_perm(hkv, generator))
    kv += spare[: Hkv - len(kv)]
    q = [0] * H
    for s in range(hkv):
        slots = [t * R + r for t, v in enumerate(kv) if v == s for r in range(R)]
        heads = list(range(s * rep, (s + 1) * rep))
        while len(heads) < len(slots):
            heads.extend(s * rep + r for r in _perm(rep, generator))
        for slot, head in zip(slots, heads):
            q[slot] = head
    return IndexMap.select(q, h), IndexMap.select(kv, hkv)
