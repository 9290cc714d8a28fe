"""The progressive schedules run by :func:`morphlm.grow.schedules.run_schedule` (bert2BERT, arXiv 2110.07143;
MSLT, Yang et al. 2020, arXiv 2011.13635; Apollo, Pan et al., AAAI 2024, arXiv 2401.09192).

two-stage (bert2BERT, Chen et al. 2022, §1)
    Stage 1 (``stage1_fraction`` of the steps, default 0.125) samples, every step, one bottom-prefix
    sub-model of the target — depths l_b, 2·l_b, …, L (uniformly) — and updates only its top ``l_b``
    layers (default 3) and the head above them: the layers below run without autograd and get no gradient,
    layers above the sub-model are not run. Stage 2 trains the full model. Reconstructions: the depth set
    {k·l_b} ∪ {L} sampled uniformly, the default fraction 0.125 (≈ E_b = 5 of 40 epochs, the
    best E_b of bert2BERT's ablation), and that the input embeddings train only when the sampled
    sub-model has no frozen layer (a tied LM head still trains as the head). With a ``source`` of another shape the target is first
    grown with ``method`` (default aki, bert2BERT's best) and ``grow_opts``.

apollo (Pan et al. 2024, §5; public code checked)
    The model physically holds L layers; stage k has N_k unique layers (default N = L·{1/12, 1/4, 1/2, 1},
    rounded, at least 1, switching at 2, 4, 10 of 40 epochs = fractions 0.05, 0.10, 0.25). Every step LVPS
    samples the effective depth: x ~ U(1e-6, 1), r = L/N, b = r + 0.4, e = 0.6, n = (b·x_min − e)/(e − b),
    m = e(n+1), y = clip(m/(x+n), 1, r), L(t) = ⌊y·N⌋; the forward uses layers ⌊i·N/L(t)⌋ for i < L(t)
    (weight sharing: each unique layer repeats consecutively). At a stage boundary unique layer j of the new
    stage copies old unique layer ⌊j·N_old/N_new⌋ (interpolation). Evaluation runs the full-depth shared
    model (layers ⌊i·N/L⌋, i < L). Reconstruction: the unique counts for L ≠ 12 (scaled from {1, 3, 6, 12}).

mslt (MSLT / Progressive Stacking 2.0, §2)
    Depths ``depths`` (default: the source's depth, else L/4, doubling up to L). Without a source the first
    depth is trained from scratch (all layers). Each growth stage stacks copies of the top layers
    (:func:`morphlm.grow.depth.top_copy_layers`) and trains only the new top layers and the head: older
    layers (and position/segment embeddings; the token embedding unless tied to the head) have
    ``requires_grad=False`` and run forward-only. A final stage (``final_fraction``, default 0.5) trains
    everything. Reconstructions: the step split (growth stages share 1 − final_fraction equally) and the
    frozen embeddings.

chain (multi-step growth from a recipe)
    ``stages``: a list of mappings. Without a source the first has no ``method`` and is trained from a
    fresh init; every later one grows the previous model with ``method`` (any registered growth method:
    fpi, aki, stack, interpolate, msg, ligo, mango) and trains it. Each mapping may set ModelConfig fields
    (n_layers, d_model, ...; the rest come from the target and the last stage must equal the target),
    ``fraction`` (its share of the steps; default equal shares) and method options (e.g. ``depth``,
    ``ramp_steps``, ``steps`` for learned operators). Default: depths L/4 → L/2 → L by ``stack``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import torch

from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from .api import LEARNED_METHODS, available_methods, grow_model
from .depth import carry_optimizer_state, expand_depth, top_copy_layers
from ..surgery import interpolate_layers
from .errors import GrowthError
from .schedules import (Stage, _modes_for, forward_view, fresh_model, register_schedule, remap_layers_state,
                        split_steps, view_flops_per_token)

APOLLO_UNIQUE_FRACTIONS = (1 / 12, 1 / 4, 1 / 2, 1.0)
APOLLO_SWITCH = (0.05, 0.10, 0.25)  # epochs 2, 4, 10 of 40
LVPS_X_MIN = 1e-6


def _identity(state: dict) -> dict:
    return state


def _no_unknown(name: str, opts: dict, allowed: Sequence[str]) -> None:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise GrowthError(f"schedule {name}: unknown option(s) {unknown}; it accepts {sorted(allowed)}")


def _step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    # kept below 2**63 so any seed works (values for small seeds are unchanged)
    return torch.Generator().manual_seed(((seed * 1_000_003 + salt) * 10_000_019 + step) % (2**63 - 1))


class _StepValue:
    """fit callback: computes ``fn(global_step)`` at each step's start (the loss function reads ``value``)."""

    def __init__(self, fn, offset: int) -> None:
        self.fn, self.offset, self.value = fn, offset, None

    def on_step_begin(self, fstate) -> None:
        self.value = self.fn(self.offset + fstate.step)


def _loss(out):
    return out.loss


# ---------------------------------------------------------------------------- bert2BERT two-stage
def two_stage_depths(n_layers: int, l_b: int) -> list[int]:
    """Depths of the bottom-prefix sub-models: l_b, 2·l_b, …, and always the full depth."""
    return sorted({min(k * l_b, n_layers) for k in range(1, math.ceil(n_layers / l_b) + 1)})


def two_stage_depth_at(step: int, depths: Sequence[int], seed: int) -> int:
    g = _step_generator(seed, step, 21)
    return int(depths[int(torch.randint(len(depths), (1,), generator=g))])


def _initial_target(target: ModelConfig, source: TransformerLM | None, seed: int, method: str, grow_opts: dict,
                    data, resuming: bool, stage: Stage) -> TransformerLM:
    if source is None:
        return fresh_model(target, seed)
    if source.config.to_dict() == target.to_dict():
        return copy.deepcopy(source)
    if resuming and method in LEARNED_METHODS:
        return fresh_model(target, seed)  # fit loads the stage's own weights; the operator cost is on record
    opts = dict(grow_opts)
    if method in LEARNED_METHODS:
        opts.setdefault("data", data)
    out = grow_model(source, target, method, seed=seed, **opts)
    stage.operator_flops = float(out.flops)
    return out.model


@register_schedule("two-stage")
def two_stage(target: ModelConfig, data, args, *, source=None, seed: int = 0, **opts: Any) -> list[Stage]:
    _no_unknown("two-stage", opts, ("l_b", "stage1_fraction", "method", "grow_opts"))
    L = target.n_layers
    l_b = int(opts.get("l_b", 3))
    frac = float(opts.get("stage1_fraction", 0.125))
    method = opts.get("method", "aki")
    grow_opts = dict(opts.get("grow_opts") or {})
    if not 1 <= l_b <= L:
        raise GrowthError(f"l_b={l_b} must be between 1 and the target's {L} layers (bert2BERT uses 3)")
    if not 0 <= frac < 1:
        raise GrowthError(f"stage1_fraction={frac} must be in [0, 1): stage 2 trains the full model")
    if source is not None and method not in available_methods():
        raise GrowthError(f"unknown growth method {method!r}; choose one of {', '.join(available_methods())}")
    depths = two_stage_depths(L, l_b)
    n1, n2 = split_steps(args.max_steps, [frac, 1 - frac])
    sampler = _StepValue(lambda s: two_stage_depth_at(s, depths, seed), 0)

    def loss_fn(model, batch):
        if not model.training:
            return _loss(model(**batch))
        D = sampler.value
        out = forward_view(model, batch, list(range(D)), n_no_grad=D - l_b)
        return out.loss, {"sub_depth": torch.tensor(float(D))}

    def step_flops(step: int, tokens: int, T: int) -> float:
        D = two_stage_depth_at(step, depths, seed)
        modes = _modes_for(D, [i >= D - l_b for i in range(D)])
        return view_flops_per_token(target, T, modes) * tokens

    stage1 = Stage("submodels", n1, None, loss_fn, step_flops, [sampler],
                   {"l_b": l_b, "depths": depths, "method": method if source is not None else None})
    stage1.enter = lambda prev, resuming: (_initial_target(target, source, seed, method, grow_opts, data,
                                                           resuming, stage1), None)
    stage2 = Stage("full", n2, lambda prev, resuming: (prev, _identity))
    return [stage1, stage2]


# ---------------------------------------------------------------------------- Apollo
def lvps_depth(x: float, n_unique: int, n_max: int, x_min: float = LVPS_X_MIN) -> int:
    """Apollo's low-value-prioritized sampling: x ∈ [x_min, 1] → effective depth in [n_unique, n_max]."""
    r = n_max / n_unique
    b, e = r + 0.4, 0.6
    n = (b * x_min - e) / (e - b)
    m = e * (n + 1)
    y = min(max(m / (x + n), 1.0), r)
    return int(min(max(math.floor(y * n_unique + 1e-9), n_unique), n_max))


def lvps_sample(step: int, n_unique: int, n_max: int, seed: int) -> int:
    u = float(torch.rand((), generator=_step_generator(seed, step, 37), dtype=torch.float64))
    return lvps_depth(LVPS_X_MIN + (1 - LVPS_X_MIN) * u, n_unique, n_max)


def apollo_plan(n_layers: int, unique: Sequence[int] | None = None,
                switch: Sequence[float] | None = None) -> tuple[list[int], list[float]]:
    """(unique-layer counts per stage, stage start fractions)."""
    if unique is None:
        cands = [max(1, round(n_layers * f)) for f in APOLLO_UNIQUE_FRACTIONS]
        starts_all = [0.0, *APOLLO_SWITCH]
        unique, starts = [], []
        for n, s in zip(cands, starts_all):
            if n not in unique:
                unique.append(min(n, n_layers))
                starts.append(s)
        if switch is not None:
            raise GrowthError("apollo: pass `switch` together with `unique`")
    else:
        unique = [int(n) for n in unique]
        switch = list(APOLLO_SWITCH[:len(unique) - 1]) if switch is None else [float(s) for s in switch]
        if len(switch) != len(unique) - 1:
            raise GrowthError(f"apollo: {len(unique)} stages (unique={unique}) need {len(unique) - 1} switch "
                              f"fractions, got {switch}")
        starts = [0.0, *switch]
    if any(a >= b for a, b in zip(unique, unique[1:])) or unique[0] < 1 or unique[-1] != n_layers:
        raise GrowthError(f"apollo: unique layer counts {unique} must increase from >= 1 to the target's "
                          f"{n_layers} layers")
    if any(a >= b for a, b in zip(starts, starts[1:])) or any(not 0 < s < 1 for s in starts[1:]):
        raise GrowthError(f"apollo: switch fractions {starts[1:]} must increase strictly within (0, 1)")
    return unique, starts


@register_schedule("apollo")
def apollo(target: ModelConfig, data, args, *, source=None, seed: int = 0, **opts: Any) -> list[Stage]:
    _no_unknown("apollo", opts, ("unique", "switch"))
    if source is not None:
        raise GrowthError("apollo trains the target from scratch with layer sharing (Pan et al., AAAI 2024); it takes "
                          "no source — use two-stage, mslt or chain to start from a smaller model")
    L = target.n_layers
    unique, starts = apollo_plan(L, opts.get("unique"), opts.get("switch"))
    fracs = [b - a for a, b in zip(starts, [*starts[1:], 1.0])]
    steps = split_steps(args.max_steps, fracs)
    stages, offset = [], 0
    for k, (N, n_steps) in enumerate(zip(unique, steps)):
        sampler = _StepValue(lambda s, N=N: lvps_sample(s, N, L, seed), offset)

        def loss_fn(model, batch, N=N, sampler=sampler):
            if not model.training:
                return _loss(forward_view(model, batch, interpolate_layers(N, L)))
            Lt = sampler.value
            out = forward_view(model, batch, interpolate_layers(N, Lt))
            return out.loss, {"depth": torch.tensor(float(Lt))}

        def step_flops(step: int, tokens: int, T: int, N=N) -> float:
            return view_flops_per_token(target, T, ["train"] * lvps_sample(step, N, L, seed)) * tokens

        def enter(prev, resuming, k=k, N=N):
            if k == 0:
                return fresh_model(target, seed), None
            n_old = unique[k - 1]
            layer_map = interpolate_layers(n_old, N)
            state = {name: t.detach().clone() for name, t in prev.state_dict().items()}
            new_state = expand_depth(state, layer_map + list(range(N, L)), state)
            with torch.no_grad():
                prev.load_state_dict(new_state)
            return prev, lambda st, lm=layer_map: remap_layers_state(st, [*lm, *[None] * (L - N)])

        stages.append(Stage(f"unique{N}", n_steps, enter, loss_fn if N < L else None,
                            step_flops if N < L else None, [sampler] if N < L else [], {"unique_layers": N}))
        offset += n_steps
    return stages


# ---------------------------------------------------------------------------- MSLT
def _same_shape(a: ModelConfig, b: ModelConfig) -> bool:
    return {**a.to_dict(), "name": ""} == {**b.to_dict(), "name": ""}


def _freeze_below(model: TransformerLM, n_frozen: int) -> None:
    for k, block in enumerate(model.blocks):
        block.requires_grad_(k >= n_frozen)
    for name in ("pos_emb", "seg_emb", "emb_norm"):
        mod = getattr(model, name, None)
        if mod is not None:
            mod.requires_grad_(n_frozen == 0)
    model.tok_emb.requires_grad_(n_frozen == 0 or model.lm_head is None and model.config.head != "cls")


@register_schedule("mslt")
def mslt(target: ModelConfig, data, args, *, source=None, seed: int = 0, **opts: Any) -> list[Stage]:
    _no_unknown("mslt", opts, ("depths", "final_fraction"))
    L = target.n_layers
    if source is not None and not _same_shape(source.config.replace(n_layers=L), target):
        raise GrowthError("mslt grows depth only: the source must have the target's width and architecture "
                          "(differing fields besides n_layers); use the chain schedule with a width method first")
    L0 = source.config.n_layers if source is not None else max(1, L // 4)
    depths = opts.get("depths")
    if depths is None:
        depths = [L0]
        while depths[-1] < L:
            depths.append(min(2 * depths[-1], L))
    depths = [int(d) for d in depths]
    if any(a >= b for a, b in zip(depths, depths[1:])) or depths[-1] != L or depths[0] < 1:
        raise GrowthError(f"mslt: depths {depths} must increase strictly and end at the target's {L} layers")
    if source is not None and depths[0] != L0:
        raise GrowthError(f"mslt: depths {depths} must start at the source's {L0} layers")
    final = float(opts.get("final_fraction", 0.5))
    if not 0 < final <= 1:
        raise GrowthError(f"mslt: final_fraction={final} must be in (0, 1]")
    n_grow = len(depths) - 1 + (source is None)
    fracs = [(1 - final) / n_grow] * n_grow + [final] if n_grow else [1.0]
    steps = split_steps(args.max_steps, fracs)
    stages: list[Stage] = []
    if source is None:
        stages.append(Stage(f"base{depths[0]}", steps[0],
                            lambda prev, resuming: (fresh_model(target.replace(n_layers=depths[0]), seed), None),
                            info={"n_layers": depths[0], "trainable_layers": list(range(depths[0]))}))
    for i, (old, new) in enumerate(zip(depths, depths[1:])):
        cfg = target.replace(n_layers=new)

        def enter(prev, resuming, old=old, cfg=cfg):
            prev = prev if prev is not None else source
            fresh = fresh_model(cfg, seed)
            state = {k: v.detach().cpu() for k, v in prev.state_dict().items()}
            fresh.load_state_dict(expand_depth(state, top_copy_layers(old, cfg.n_layers), fresh.state_dict()))
            _freeze_below(fresh, old)
            return fresh, _identity

        def loss_fn(model, batch, old=old, new=new):
            if not model.training:
                return _loss(model(**batch))
            return _loss(forward_view(model, batch, list(range(new)), n_no_grad=old))

        def step_flops(step: int, tokens: int, T: int, old=old, new=new, cfg=cfg) -> float:
            return view_flops_per_token(cfg, T, ["forward"] * old + ["train"] * (new - old)) * tokens

        stages.append(Stage(f"grow{new}", steps[len(stages)], enter, loss_fn, step_flops,
                            info={"n_layers": new, "trainable_layers": list(range(old, new)),
                                  "layer_map": top_copy_layers(old, new)}))

    def enter_full(prev, resuming):
        prev = prev if prev is not None else copy.deepcopy(source)
        prev.requires_grad_(True)
        return prev, _identity

    stages.append(Stage("full", steps[-1], enter_full, info={"n_layers": L, "trainable_layers": list(range(L))}))
    return stages


# ---------------------------------------------------------------------------- chains
_CFG_FIELDS = {f.name for f in dataclasses.fields(ModelConfig) if f.init}


@register_schedule("chain")
def chain(target: ModelConfig, data, args, *, source=None, seed: int = 0, **opts: Any) -> list[Stage]:
    _no_unknown("chain", opts, ("stages",))
    L = target.n_layers
    specs = opts.get("stages")
    if specs is None:  # default: double the depth by StackBERT stacking (width growth, if any, is FPI)
        depths = [source.config.n_layers if source is not None else max(1, L // 4)]
        while depths[-1] < L:
            depths.append(min(2 * depths[-1], L))
        if source is None:
            specs = [{"n_layers": depths[0]}] + [{"method": "stack", "n_layers": d} for d in depths[1:]]
        else:
            specs = [{"method": "stack", "n_layers": d} for d in (depths[1:] or depths)]
    if not isinstance(specs, (list, tuple)) or not specs or not all(isinstance(s, dict) for s in specs):
        raise GrowthError("chain: `stages` must be a non-empty list of mappings such as "
                          "[{n_layers: 2}, {method: stack, n_layers: 4}]")
    specs = [dict(s) for s in specs]
    if source is None and "method" in specs[0]:
        raise GrowthError("chain without a source: the first stage trains a fresh model and takes no method "
                          "(pass a source to grow from it)")
    if source is not None and any("method" not in s for s in specs):
        raise GrowthError("chain with a source: every stage grows the previous model, so each needs a method")
    if source is None and any("method" not in s for s in specs[1:]):
        raise GrowthError("chain: every stage after the first needs a growth method (fpi, aki, stack, ...)")
    methods = available_methods()
    cfgs, fracs, given = [], [], []
    for i, s in enumerate(specs):
        if "method" in s and s["method"] not in methods:
            raise GrowthError(f"chain stage {i}: unknown growth method {s['method']!r}; "
                              f"choose one of {', '.join(methods)}")
        cfg_over = {k: s[k] for k in s if k in _CFG_FIELDS}
        cfgs.append(target.replace(**cfg_over))
        given.append(s.get("fraction"))
    prev_cfg = source.config if source is not None else None
    for i, cfg in enumerate(cfgs):
        if prev_cfg is not None and cfg.n_layers < prev_cfg.n_layers:
            raise GrowthError(f"chain stage {i}: {cfg.n_layers} layers is shallower than the previous "
                              f"{prev_cfg.n_layers}; a chain only grows")
        prev_cfg = cfg
    if not _same_shape(cfgs[-1], target):
        want = target.to_dict()
        diff = {k: (v, want[k]) for k, v in cfgs[-1].to_dict().items() if k != "name" and want[k] != v}
        raise GrowthError(f"chain: the last stage's model differs from the target (stage vs target: {diff}); "
                          f"end the chain at the target's shape")
    rest = [f for f in given if f is not None]
    if sum(rest) > 1 + 1e-9:
        raise GrowthError(f"chain: stage fractions {rest} add up to more than 1")
    n_free = sum(f is None for f in given)
    fill = (1 - sum(rest)) / n_free if n_free else 0.0
    fracs = [fill if f is None else float(f) for f in given]
    steps = split_steps(args.max_steps, fracs)
    stages: list[Stage] = []
    for i, (s, cfg, n_steps) in enumerate(zip(specs, cfgs, steps)):
        method = s.get("method")
        mopts = {k: v for k, v in s.items() if k not in _CFG_FIELDS and k not in ("method", "fraction")}
        if method == "msg":
            mopts.setdefault("ramp_steps", max(1, n_steps // 4))
            if int(mopts["ramp_steps"]) > n_steps:
                raise GrowthError(f"chain stage {i}: ramp_steps={mopts['ramp_steps']} exceeds the stage's {n_steps} "
                                  f"steps; the MSG mask must reach 1 before the next growth")
        stage = Stage(f"{i}-{method or 'init'}{cfg.n_layers}x{cfg.d_model}", n_steps, None,
                      info={"method": method, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
                            "options": {k: v for k, v in mopts.items() if k != "data"}})

        def enter(prev, resuming, method=method, cfg=cfg, mopts=mopts, stage=stage):
            stage.callbacks = []
            if method is None:
                return fresh_model(cfg, seed), None
            prev = prev if prev is not None else source
            if resuming and method in LEARNED_METHODS:
                return fresh_model(cfg, seed), None
            kw = dict(mopts)
            if method in LEARNED_METHODS:
                kw.setdefault("data", data)
            out = grow_model(prev, cfg, method, seed=seed, **kw)
            stage.operator_flops = float(out.flops)
            if out.masks is not None:
                out.masks.start_step = 0
                stage.callbacks = [out.masks]
            if out.plan is None:  # a learned operator without index maps: the next stage starts a fresh AdamW
                return out.model, None
            return out.model, lambda state, prev=prev, new=out.model, plan=out.plan: carry_optimizer_state(
                prev, state, new, plan)

        stage.enter = enter
        stages.append(stage)
    return stages
