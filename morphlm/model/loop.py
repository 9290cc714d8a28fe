"""LoopMoE: a looped, weight-shared (MoE) transformer whose blocks are told which iteration they run.

LoopMoE (Chen, Li, Huang et al., 2026) runs L_b unique blocks R times — block i of iteration k is block i — with
no re-injection of the input between iterations, and tells each block the iteration it is in through
**IterAdaLN**. Only the abstract is public; everything below the abstract's wording is a reconstruction:

* Iteration signal: v_k = MLP_iter(PE(k)), PE a sinusoidal encoding of the iteration index k (the timestep
  embedder of DiT, Peebles & Xie 2023, arXiv 2212.09748, §3.2), one MLP shared by all blocks.
* Modulation, conditioned jointly on the iteration and the token state (as the abstract says):
  c = RMSNorm(h) + v_k;  (γ1, β1, g1, γ2, β2, g2) = W_mod·SiLU(c), W_mod (and its bias) zero-initialised;
  h ← h + (1 + g1)⊙Attn(N1(h)⊙(1 + γ1) + β1);  h ← h + (1 + g2)⊙FFN(N2(h)⊙(1 + γ2) + β2).
  N1, N2 are the block's own pre-norms (with their gains), W_mod is one matrix per block.

Gates as ``1 + g`` (a reconstruction choice). DiT's adaLN-Zero multiplies each residual branch by g itself, so
with W_mod = 0 every block starts as the identity and the whole stack as the embedding→head map. We zero-initialise
W_mod the same way but put the gates on ``1 + g``: at initialisation the modulation is the identity —
(1 + γ)·N(h) + β = N(h) and unit gates — so a looped block *is* the plain pre-norm block, and LoopMoE with R = 1
is exactly the unlooped model with the same weights. The consequence: a new looped model starts as the plain
weight-tied looped transformer (depth n_layers·R, blind to the iteration index) rather than as the identity; the
iteration signal enters as W_mod learns (W_mod has a gradient from the first step, since SiLU(c) ≠ 0; MLP_iter
from the second, once W_mod ≠ 0). Pre-norm residual blocks with GPT-2's scaled output init already start close to
the identity, so nothing is lost in stability, and a trained dense/MoE block can be looped without changing its
function at the start. (That init keeps counting the n_layers unique blocks, as for any weight-tied model.)

The FFN is whatever the configuration builds for a block (:func:`make_ffn` of moe.py when the MoE layer is
present, the dense MLP otherwise; UniPool pools are passed through, and a pool's loss averages over the R·L
layer calls). A reused block's FFN sets its ``aux_loss`` and ``last_stats`` on every call, and forward hooks on a
reused block fire once per call, so :class:`Loop` reads them after each iteration: the auxiliary losses of the R
calls are summed back onto the FFN's ``aux_loss`` (R looped layers contribute as R vanilla layers would); routing
statistics are kept per iteration in :attr:`Loop.iter_stats` (``iter{k}``, with cos(h_{k-1}, h_k) between
successive iterations' outputs), and the FFN's ``last_stats`` becomes the statistics of its load summed over the R
calls plus ``iter{k}_{stat}`` per iteration (so a metrics writer that reads ``last_stats`` logs them per iteration).

The capacity-balancing rule (:func:`balance_loop_capacity`, a reconstruction of the paper's matching): a vanilla
MoE of L layers with attention parameters A, E experts of size s and top-k becomes L_b = L/R unique layers run R
times with A' = A, k's' = ks and E's' = R(A + Es) − A, so total parameters, per-token FLOPs and the active
attention-to-FFN ratio match; every parameter freed by looping goes into the expert pool.

No training, CLI or parallelism imports here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .config import ConfigError, ModelConfig
from .ffn import MLP
from .norms import RMSNorm, make_norm

try:  # the MoE layer builds dense or routed FFNs from the config; without it, every FFN is the dense MLP
    from .moe import load_stats as _load_stats
    from .moe import make_ffn as _moe_make_ffn
except ModuleNotFoundError as exc:  # only a missing moe.py, never an error inside it
    if exc.name != f"{__package__}.moe":
        raise
    _moe_make_ffn = _load_stats = None


def make_ffn(cfg: ModelConfig, layer_idx: int, pool: nn.Module | None = None) -> nn.Module:
    """The FFN of looped block ``layer_idx``: moe.py's factory when present (dense or MoE by the config)."""
    return MLP(cfg) if _moe_make_ffn is None else _moe_make_ffn(cfg, layer_idx, pool)


def iteration_encoding(k: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal encoding of the iteration index ``k``: (dim,) = [cos(k·f_j), sin(k·f_j)], f_j = P^(-j/(dim/2))
    for j < dim/2 (the transformer's position encoding, laid out as DiT's timestep embedder)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)  # (dim/2,)
    angle = float(k) * freqs
    return torch.cat([torch.cos(angle), torch.sin(angle)]).float()  # (dim,)


class IterationMLP(nn.Module):
    """v_k = MLP_iter(PE(k)): Linear(loop_iter_dim → d) · SiLU · Linear(d → d), shared by every block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = cfg.loop_iter_dim
        self.fc1 = nn.Linear(cfg.loop_iter_dim, cfg.d_model)
        self.fc2 = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, k: int) -> torch.Tensor:
        pe = iteration_encoding(k, self.dim).to(self.fc1.weight.device, self.fc1.weight.dtype)  # (iter_dim,)
        return self.fc2(F.silu(self.fc1(pe)))  # (D,)


class IterAdaLNBlock(nn.Module):
    """A pre-norm block (attention + FFN) modulated by IterAdaLN; with zero modulation it is the plain block.
    Parameter names of the plain block are kept (``attn``, ``mlp``, ``norm1``, ``norm2``), plus ``cond_norm``
    (the RMSNorm of the conditioning) and ``mod`` (W_mod, d → 6d, zero-initialised)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = Attention(cfg)
        self.mlp = make_ffn(cfg, layer_idx, pool)
        self.norm1 = make_norm(cfg)
        self.norm2 = make_norm(cfg)
        self.cond_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mod = nn.Linear(cfg.d_model, 6 * cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_modulation()

    @torch.no_grad()
    def reset_modulation(self) -> None:
        """adaLN-Zero: W_mod and its bias at zero, so the modulation starts as the identity (unit gates)."""
        self.mod.weight.zero_()
        self.mod.bias.zero_()

    def modulation(self, h: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(γ1, β1, g1, γ2, β2, g2), each (B, T, D), from the token state h (B, T, D) and iteration signal v (D,)."""
        c = self.cond_norm(h) + v  # (B, T, D)
        return self.mod(F.silu(c)).chunk(6, dim=-1)  # 6 × (B, T, D)

    def forward(self, h, v, rope=None, mask=None, return_scores=False):
        scale1, shift1, gate1, scale2, shift2, gate2 = self.modulation(h, v)
        a, scores = self.attn(self.norm1(h) * (1 + scale1) + shift1, rope, mask, return_scores)
        h = h + (1 + gate1) * self.drop(a)
        h = h + (1 + gate2) * self.drop(self.mlp(self.norm2(h) * (1 + scale2) + shift2))
        return h, scores


class Loop(nn.Module):
    """The iteration signal and the loop over the unique blocks. Owned by TransformerLM (as ``loop``); the
    blocks stay in ``TransformerLM.blocks`` (``blocks.i.*`` as in an unlooped model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.loop_repeats is None:
            raise ConfigError("Loop needs a looped config (loop_repeats >= 1)")
        self.repeats = cfg.loop_repeats
        self.iter_mlp = IterationMLP(cfg)
        #: per-iteration statistics of the last forward: {"iter{k}": {"layer{i}": {stat: value}, "cos_prev": tensor}}
        self.iter_stats: dict[str, dict[str, Any]] = {}

    @staticmethod
    def make_blocks(cfg: ModelConfig, pools: nn.ModuleList | None = None) -> nn.ModuleList:
        """The n_layers unique IterAdaLN blocks; ``pools`` (UniPool's shared expert pools, each with the
        ``layers`` it serves) are handed to the blocks of their layers, and each pool's loss, averaged over the
        layer calls of a forward, counts R calls per layer."""
        def pool_of(i):
            return next((p for p in pools if i in p.layers), None) if pools is not None else None

        for pool in pools if pools is not None else ():
            pool.layers_per_forward = len(pool.layers) * cfg.loop_repeats
        return nn.ModuleList(IterAdaLNBlock(cfg, i, pool_of(i)) for i in range(cfg.n_layers))

    def forward(self, blocks: nn.ModuleList, h: torch.Tensor, rope=None, mask=None,
                hidden: list | None = None, scores: list | None = None) -> torch.Tensor:
        """Run ``blocks`` R times on h (B, T, D); appends every block's output to ``hidden`` and its attention
        scores to ``scores`` when given (n_layers·R entries each)."""
        aux: dict[int, torch.Tensor] = {}
        stats: dict[str, dict[str, Any]] = {}
        prev = None
        for k in range(self.repeats):
            v = self.iter_mlp(k).to(h.dtype)  # (D,)
            record: dict[str, Any] = {}
            for i, block in enumerate(blocks):
                h, s = block(h, v, rope, mask, scores is not None)
                loss = getattr(block.mlp, "aux_loss", None)
                if loss is not None:
                    aux[i] = loss if i not in aux else aux[i] + loss
                layer_stats = getattr(block.mlp, "last_stats", None)
                if layer_stats:
                    record[f"layer{i}"] = dict(layer_stats)
                if hidden is not None:
                    hidden.append(h)
                if scores is not None:
                    scores.append(s)
            with torch.no_grad():  # a detached tensor: no host sync inside the forward
                out = h.detach().float()
                if prev is not None:  # cos(h_{k-1}, h_k), mean over tokens
                    record["cos_prev"] = F.cosine_similarity(prev, out, dim=-1).mean()
                prev = out
            stats[f"iter{k}"] = record
        for i, loss in aux.items():  # the R calls' auxiliary losses, summed: R looped layers count as R layers
            blocks[i].mlp.aux_loss = loss
        for i, block in enumerate(blocks):
            per_iter = [stats[f"iter{k}"].get(f"layer{i}") for k in range(self.repeats)]
            if all(per_iter):
                block.mlp.last_stats = self._combined(per_iter)
        self.iter_stats = stats
        return h

    @staticmethod
    def _combined(per_iter: list[dict[str, Any]]) -> dict[str, Any]:
        """One FFN's statistics over its R calls: those of the load summed over the calls (when the FFN reports
        a ``load`` vector and moe.py's ``load_stats`` is there), and every scalar per iteration as ``iter{k}_NAME``."""
        out: dict[str, Any] = {}
        if _load_stats is not None and all(torch.is_tensor(s.get("load")) for s in per_iter):
            load = torch.stack([s["load"] for s in per_iter]).sum(0)
            out.update({"load": load, **_load_stats(load)})
        for k, record in enumerate(per_iter):
            for name, value in record.items():
                if name != "load":
                    out[f"iter{k}_{name}"] = value
        return out

    def flat_stats(self) -> dict[str, float]:
        """:attr:`iter_stats` as flat ``iter{k}/layer{i}/{stat}`` and ``iter{k}/cos_prev`` scalars (metrics)."""
        out: dict[str, float] = {}
        for it, record in self.iter_stats.items():
            for key, value in record.items():
                if isinstance(value, dict):
                    for name, x in value.items():
                        if isinstance(x, (int, float)) or (torch.is_tensor(x) and x.numel() == 1):
                            out[f"{it}/{key}/{name}"] = float(x)
                else:
                    out[f"{it}/{key}"] = float(value)
        return out


# ---------------------------------------------------------------------------------------------- capacity balancing
@dataclass(frozen=True)
class LoopCapacity:
    """The numbers of the capacity-balancing rule for one vanilla → looped pair (per-layer matmul parameters).

    ``attention`` A (attention projections plus always-on shared experts), ``expert`` s (one routed expert),
    ``experts`` E, ``top_k`` k, ``layers`` L of the vanilla model; the looped model has ``loop_layers`` = L/R
    unique layers, the same A and k·s, and ``loop_experts`` E' = (R(A + Es) − A)/s experts."""

    layers: int
    repeats: int
    attention: int
    expert: int
    experts: int
    top_k: int
    loop_layers: int
    loop_experts: int

    @property
    def total(self) -> int:
        """Matched total parameters L(A + Es) = L_b(A + E's) (attention, shared and routed experts)."""
        return self.layers * (self.attention + self.experts * self.expert)

    @property
    def active(self) -> int:
        """Matched active parameters per token L(A + ks) = R·L_b(A + ks) (each looped layer runs R times)."""
        return self.layers * (self.attention + self.top_k * self.expert)


def loop_capacity(layers: int, attention: int, experts: int, expert: int, top_k: int, repeats: int) -> LoopCapacity:
    """The capacity-balancing rule on plain numbers; :class:`ConfigError` naming the field when the looped
    model cannot match exactly (layers not divisible by R, or E' not an integer — the nearest choices offered)."""
    for name, value, least in (("n_layers", layers, 1), ("attention params", attention, 0), ("moe_experts", experts, 1),
                               ("expert params", expert, 1), ("moe_top_k", top_k, 1), ("loop_repeats", repeats, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"capacity balancing: {name}={value!r} must be an integer >= {least}")
    if layers % repeats:
        divisors = [r for r in range(2, layers + 1) if layers % r == 0]
        raise ConfigError(f"capacity balancing: n_layers={layers} of the vanilla model is not divisible by "
                          f"loop_repeats={repeats}, so L_b = L/R is not an integer; choose loop_repeats from "
                          f"{divisors} (divisors of n_layers) or change n_layers")
    pool = repeats * (attention + experts * expert) - attention  # E'·s', with s' = s
    if pool % expert:
        lo, hi = pool // expert, pool // expert + 1
        layers_b = layers // repeats
        miss = {e: layers_b * (attention + e * expert) - layers * (attention + experts * expert) for e in (lo, hi)}
        raise ConfigError(f"capacity balancing: moe_experts cannot match exactly — E'·s = R(A + E·s) − A = {pool:,} "
                          f"parameters is not a multiple of the expert size s = {expert:,} (A = {attention:,}, "
                          f"E = {experts}, R = {repeats}); the nearest integer choices are moe_experts={lo} "
                          f"({miss[lo]:+,} total parameters) or moe_experts={hi} ({miss[hi]:+,}); pick one of them "
                          f"explicitly, or change the expert size (moe_expert_d_ff) or loop_repeats so it divides")
    return LoopCapacity(layers=layers, repeats=repeats, attention=attention, expert=expert, experts=experts,
                        top_k=top_k, loop_layers=layers // repeats, loop_experts=pool // expert)


def balance_loop_capacity(cfg: ModelConfig, repeats: int) -> tuple[ModelConfig, LoopCapacity]:
    """The LoopMoE config matched to the vanilla MoE ``cfg`` by the capacity-balancing rule: n_layers L/R,
    loop_repeats R, the same attention, top-k, expert width and shared experts, and E' = (R(A + Es) − A)/s routed
    experts per layer, so total and active (attention + shared + routed) parameters, per-token FLOPs and the
    active attention-to-FFN ratio match. A counts the attention projections and the always-on shared experts; the
    routers (d·E per layer), norms and IterAdaLN's own weights (W_mod, the iteration MLP) are outside the rule —
    the FLOPs ruler (train/flops.py) counts them, so the looped model's ruler FLOPs differ from the vanilla ones by
    exactly the router difference and W_mod. A :class:`ConfigError` names the field when the match is impossible."""
    if not getattr(cfg, "moe_experts", 0):
        raise ConfigError(f"capacity balancing matches a looped model to a vanilla mixture of experts; "
                          f"{cfg.name!r} has dense FFNs (moe_experts=0): set moe_experts (and moe_top_k)")
    if cfg.loop_repeats is not None:
        raise ConfigError(f"capacity balancing starts from an unlooped (vanilla) config; {cfg.name!r} already has "
                          f"loop_repeats={cfg.loop_repeats}: pass the vanilla config")
    if cfg.moe_pool:
        raise ConfigError("capacity balancing is defined for per-layer experts; moe_pool=true (UniPool's shared "
                          "pool) has no per-layer expert count to rebalance: use moe_pool=false")
    if len(cfg.moe_layer_ids) != cfg.n_layers:
        raise ConfigError(f"capacity balancing needs every layer to be an MoE layer (moe_layers='all'), got "
                          f"moe_layers={cfg.moe_layers!r}: looping mixed dense/MoE layers has no single E' to solve for")
    d, width = cfg.d_model, cfg.expert_d_ff
    expert = (3 if cfg.activation == "swiglu" else 2) * d * width  # in (2·width for SwiGLU) and out projections
    attention = d * (d + 2 * cfg.kv_dim) + d * d + cfg.moe_shared_experts * expert  # q, k, v, o + always-on experts
    cap = loop_capacity(cfg.n_layers, attention, cfg.moe_experts, expert, cfg.moe_top_k, repeats)
    looped = cfg.replace(n_layers=cap.loop_layers, loop_repeats=repeats, moe_experts=cap.loop_experts)
    return looped, cap
