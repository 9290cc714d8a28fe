"""Mixture-of-experts FFN: routers, balancing losses, sorted-token dispatch and UniPool's shared expert pools.

One layer, :class:`MoEFFN`, shaped by the ``moe_*`` fields of :class:`~morphlm.model.config.ModelConfig`:

* **Experts** (:class:`ExpertBank`): E FFNs stored as 3-D tensors ``w1`` (E, d_ff·(2 for SwiGLU), d) —
  SwiGLU rows [gate; up], the Hugging Face ``gate_up_proj`` order — and ``w2`` (E, d, d_ff), following the
  config's activation; no biases. ``moe_shared_experts`` always-on experts (DeepSeekMoE, Dai et al. 2024,
  arXiv 2401.06066, §3.2; Qwen2-MoE) are one dense FFN of width n_shared·d_ff_expert (``shared_w1``/``shared_w2``);
  ``moe_shared_gate`` scales their output per token by sigmoid(x·g), g = ``shared_gate`` (1, d), as Qwen2-MoE does.
* **Routers** (:class:`Router`), computed in fp32 whatever the autocast:
  softmax top-k (Switch, Fedus et al. 2021, arXiv 2101.03961, §2.1; Mixtral, Jiang et al. 2024, arXiv 2401.04088,
  §2.1 renormalises the top-k gates: ``moe_renormalize``); sigmoid scores (DeepSeek-V3, arXiv 2412.19437, §2.1.2:
  gates from the sigmoid scores, renormalised over the chosen experts when ``moe_renormalize``); UniPool's
  NormRouter (Huang et al. 2026, §3): s_i = σ·c·ReLU(z_i / (‖z‖₂ + ε)), σ a learnable scalar (init 1), c =
  E[1/‖top-k(ReLU(x/‖x‖))‖₂] for x ~ N(0, I_M) estimated once by Monte Carlo with a fixed generator, gate =
  the raw score (no renormalisation). (UniPool zeroes the logits of masked experts before the norm; here every
  expert of a layer's pool is always available, so no logit is masked.)
* **Loss-free balancing** (Wang et al. 2024, arXiv 2408.15664, Alg. 1): a per-expert bias b (a buffer, outside
  autograd, saved in the state dict) is added to the scores for SELECTION only; gates come from the unbiased
  scores. Each optimizer step :meth:`Router.update_bias` applies b ← b + u·sign(c̄ − c_i) from the loads c_i
  counted since the last update (then subtracts the mean of the update, as torchtitan does). The training loop
  calls it through ``TransformerLM.on_train_step_begin`` — the same moment as an optimizer pre-step hook of the
  previous step, and deterministic, so resume is bit-exact.
* **Balancing losses**, set on each training forward as ``aux_loss``: Switch's α·E·Σ_i f_i·P_i (f_i the
  fraction of the T·k assignments that went to expert i, not differentiated; P_i the mean router probability —
  for the sigmoid router the scores normalised to sum 1 per token, for the NormRouter its raw scores, as
  UniPool's pool loss uses them); the router z-loss
  (ST-MoE, Zoph et al. 2022, arXiv 2202.08906, eq. 5) (1/T)·Σ_t logsumexp(z_t)²; UniPool's pool loss
  α_pool·M·Σ_i f̄_i·P̄_i with f̄, P̄ averaged over the layers sharing the pool, P from the NormRouter's raw
  scores, f̄ DETACHED and taken one micro-batch behind (kept on the :class:`ExpertPool`), no loss on the very
  first micro-batch. The pool loss is linear in P̄, so each layer adds its own share α·M/L·Σ f̄_i·P_i^(l):
  no tensor crosses layers.
* **Dispatch**, deterministic: the T·k (token, expert) assignments are stably sorted by expert, counted
  (bincount), gathered (index_select), run through the experts as contiguous groups, put back in token order
  by the inverse permutation (index_select again) and combined as a (T, k, d) weighted sum — no scatter_add.
  Dropless by default; with ``moe_capacity_factor`` c each expert keeps the first ceil(c·k·T/E) assignments
  in token order and the rest are dropped (their gate contributes nothing; the residual carries the token).
  Kernels: ``torch.nn.functional.grouped_mm`` (bf16 under autocast or bf16 inputs; needs every dimension a
  multiple of 16 bytes) or a per-expert loop (the fp32 reference); ``moe_impl='auto'`` uses grouped_mm where it
  applies and falls back to the loop — saying why once — where it does not.
* **UniPool** (:class:`ExpertPool`): one bank of M experts shared by the MoE layers of a group; each layer keeps
  its own router over the M experts. The model owns the pools (``TransformerLM.expert_pools``); a layer only
  refers to its pool (not a submodule of the layer, so the weights appear once in the state dict).

Data parallelism: the routing state lives in buffers (the loss-free bias and its load count, a pool's f̄). DDP
broadcasts buffers from rank 0 before every forward, so every rank routes with rank 0's bias and pool state, which
follow rank 0's loads (a 1/world sample of the global batch; resume stays exact). FSDP2 broadcasts nothing: each
rank then balances on its own loads. Under expert parallelism (train/expert_parallel.py sets ``MoEFFN.dispatcher``)
the experts run on the ranks that own them and the counts are global: the balancing losses, the loss-free bias,
f̄ and the load statistics are those of the whole data-parallel batch, the same on every rank.

All-negative NormRouter logits (UniPool §3's pitfall: with few experts every ReLU score can be 0, probability
2^−M): a reconstruction — for such a token the scores are taken from the logits shifted by their minimum,
s_i = σ·c·(z_i − min_j z_j)/(‖z‖₂ + ε), so the token still reaches its best experts with a non-zero gate and the
router's gradient raises the chosen logit; a token whose logits are all equal (z = 0) gets σ/k per chosen
expert. How many tokens took this path is reported as ``norm_fallback`` in :attr:`MoEFFN.last_stats`.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .ffn import MLP, activation_fn

log = logging.getLogger(__name__)

NORM_ROUTER_EPS = 1e-6
NORM_ROUTER_SAMPLES = 100_000
_fallback_said: set[str] = set()


def _say_once(reason: str) -> None:
    if reason not in _fallback_said:
        _fallback_said.add(reason)
        log.warning("MoE experts run as a per-expert loop instead of grouped_mm: %s", reason)


@functools.lru_cache(maxsize=64)
def norm_router_constant(n_experts: int, top_k: int, samples: int = NORM_ROUTER_SAMPLES, seed: int = 0) -> float:
    """UniPool's c = E[1 / ‖top-k(ReLU(x/‖x‖))‖₂], x ~ N(0, I_M): Monte Carlo with a fixed CPU generator, so the
    constant is the same on every run and device. Samples whose top-k ReLU part is all zero are left out of the
    mean (their reciprocal is infinite). The top-k norm has a positive density at 0 (one barely positive
    coordinate, all others negative: probability ~ M·2^(1−M)), so the expectation itself diverges
    logarithmically and only the fixed generator and sample count define c; for the pools UniPool uses
    (M ≥ 16) that tail is below 10^−3 and the estimate is stable, for tiny M it is a convention."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    total, count, chunk = 0.0, 0, max(1, 2_000_000 // n_experts)
    done = 0
    while done < samples:
        n = min(chunk, samples - done)
        x = torch.randn(n, n_experts, generator=g, device="cpu", dtype=torch.float64)
        s = torch.relu(x / x.norm(dim=-1, keepdim=True))
        norm = s.topk(top_k, dim=-1).values.norm(dim=-1)
        ok = norm > 0
        total += float((1.0 / norm[ok]).sum())
        count += int(ok.sum())
        done += n
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------------- experts
class ExpertBank(nn.Module):
    """E FFN experts as 3-D tensors: ``w1`` (E, width, d) with width = 2·d_ff for SwiGLU ([gate; up]) else d_ff,
    ``w2`` (E, d, d_ff). :meth:`forward` runs rows already sorted by expert, ``counts[e]`` rows per expert."""

    def __init__(self, cfg: ModelConfig, n_experts: int, d_ff: int | None = None) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.d_ff = d_ff if d_ff is not None else cfg.expert_d_ff
        self.swiglu = cfg.activation == "swiglu"
        self.act = None if self.swiglu else activation_fn(cfg.activation)
        self.activation = cfg.activation
        width = 2 * self.d_ff if self.swiglu else self.d_ff
        self.w1 = nn.Parameter(torch.empty(n_experts, width, cfg.d_model))
        self.w2 = nn.Parameter(torch.empty(n_experts, cfg.d_model, self.d_ff))
        nn.init.normal_(self.w1, std=cfg.init_std)
        nn.init.normal_(self.w2, std=cfg.init_std)

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return self.act(h)

    def grouped_reason(self, x: torch.Tensor, dtype: torch.dtype) -> str | None:
        """Why grouped_mm cannot run these experts on ``x`` in ``dtype`` (None when it can)."""
        if not hasattr(F, "grouped_mm"):
            return f"this torch ({torch.__version__}) has no torch.nn.functional.grouped_mm"
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"grouped_mm does not take {dtype}"
        if x.device.type == "cuda":
            if dtype != torch.bfloat16:
                return "grouped_mm on CUDA takes bf16 only"
            if torch.cuda.get_device_capability(x.device)[0] < 8:
                return "grouped_mm on CUDA needs compute capability >= 8.0"
        elif x.device.type != "cpu":
            return f"grouped_mm is not used on {x.device.type}"
        if dtype == torch.float32 and torch.compiler.is_compiling():
            return "compiled grouped_mm takes bf16/fp16 only (its fp32 meta kernel fails)"
        mult = 16 // torch.empty((), dtype=dtype).element_size()
        dims = {"d_model": self.w2.shape[1], "expert d_ff": self.d_ff, "w1 rows": self.w1.shape[1]}
        bad = [f"{k}={v}" for k, v in dims.items() if v % mult]
        if bad:
            return f"{', '.join(bad)} not a multiple of {mult} ({dtype} rows need 16-byte strides)"
        return None

    def forward(self, xs: torch.Tensor, counts: torch.Tensor, impl: str = "loop") -> torch.Tensor:
        """xs (S, d) sorted by expert, counts (E,) rows per expert (sum S) -> (S, d). ``impl`` 'grouped' runs
        grouped_mm in xs's dtype, 'loop' one matmul pair per non-empty expert."""
        if impl == "grouped":
            offs = torch.cumsum(counts, 0).to(torch.int32)
            w1 = self.w1.to(xs.dtype).transpose(-2, -1)  # (E, d, width)
            w2 = self.w2.to(xs.dtype).transpose(-2, -1)  # (E, d_ff, d)
            h = F.grouped_mm(xs, w1, offs=offs)
            return F.grouped_mm(self._activate(h), w2, offs=offs)
        # one cast and one unbind for all experts: indexing w[e] per expert would make the backward allocate and
        # add a full (E, ...) gradient per expert. Empty experts run too: every weight takes part in the graph
        # (DDP sees no unused parameter).
        w1s, w2s = self.w1.to(xs.dtype).unbind(0), self.w2.to(xs.dtype).unbind(0)
        out = []
        for e, rows in enumerate(torch.split(xs, counts.tolist())):
            out.append(F.linear(self._activate(F.linear(rows, w1s[e])), w2s[e]))
        return torch.cat(out, 0)


class ExpertPool(nn.Module):
    """UniPool: one bank of M experts shared by the MoE layers ``layers`` of a group, and the pool loss's state:
    ``prev_load`` (M,) the layer-averaged assignment fractions f̄ of the previous training micro-batch (DETACHED),
    ``has_prev`` whether there was one, ``cur_load``/``cur_calls`` this micro-batch's sums so far. All are
    buffers (in the state dict), so a resumed run continues with the same f̄. ``layers_per_forward`` is the L of
    the 1/L average of P̄ (the group's layer count; a looped model that runs each layer R times raises it)."""

    def __init__(self, cfg: ModelConfig, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.n_experts = cfg.pool_size
        self.layers_per_forward = len(self.layers)
        self.experts = ExpertBank(cfg, self.n_experts)
        self.register_buffer("prev_load", torch.zeros(self.n_experts))
        self.register_buffer("cur_load", torch.zeros(self.n_experts))
        self.register_buffer("cur_calls", torch.zeros(()))
        self.register_buffer("has_prev", torch.zeros(()))

    @torch.no_grad()
    def begin_forward(self) -> None:
        """Start of a training micro-batch's forward: the load of the last one becomes f̄ (one micro-batch behind)."""
        if float(self.cur_calls) > 0:
            self.prev_load.copy_(self.cur_load / self.cur_calls)
            self.has_prev.fill_(1.0)
        self.cur_load.zero_()
        self.cur_calls.zero_()

    @torch.no_grad()
    def record(self, frac: torch.Tensor) -> None:
        """One layer's assignment fractions f^(l) (M,) in this micro-batch."""
        self.cur_load.add_(frac.float())
        self.cur_calls.add_(1.0)

    def stats(self) -> dict[str, torch.Tensor]:
        """Pool-wide load statistics of the current micro-batch (layer-averaged f̄), detached."""
        if float(self.cur_calls) == 0:
            return {}
        return load_stats(self.cur_load / self.cur_calls)


# ---------------------------------------------------------------------------------------------------- routing
def load_stats(load: torch.Tensor) -> dict[str, torch.Tensor]:
    """Balance of a per-expert load vector (counts or fractions): coefficient of variation (population std /
    mean), MaxVio = (max − mean)/mean (Wang et al. 2024, arXiv 2408.15664, §4.1), dead experts (load 0)."""
    load = load.detach().float()
    mean = load.mean().clamp_min(1e-12)
    return {"cv": load.std(unbiased=False) / mean, "max_vio": (load.max() - mean) / mean,
            "dead": (load == 0).sum().float()}


class Router(nn.Module):
    """Per-layer router over ``n_experts``: ``weight`` (E, d); ``sigma`` (NormRouter); ``score_bias`` and
    ``load_accum`` buffers for loss-free balancing; ``norm_c`` buffer (NormRouter's constant)."""

    def __init__(self, cfg: ModelConfig, n_experts: int) -> None:
        super().__init__()
        self.kind = cfg.moe_router
        self.n_experts = n_experts
        self.top_k = cfg.moe_top_k
        self.renormalize = cfg.moe_renormalize
        self.loss_free = cfg.moe_balance == "loss_free"
        self.bias_update = cfg.moe_bias_update
        self.weight = nn.Parameter(torch.empty(n_experts, cfg.d_model))
        nn.init.normal_(self.weight, std=cfg.init_std)
        if self.kind == "norm":
            self.sigma = nn.Parameter(torch.ones(1))
            c = norm_router_constant(n_experts, self.top_k)
            self.register_buffer("norm_c", torch.tensor(c, dtype=torch.float32, device="cpu"))
        if self.loss_free:
            self.register_buffer("score_bias", torch.zeros(n_experts))
            self.register_buffer("load_accum", torch.zeros(n_experts))

    def forward(self, x: torch.Tensor):
        """x (T, d) -> (expert ids (T, k) int64, gates (T, k) fp32, probs (T, E) fp32 for the balancing losses,
        logits (T, E) fp32, fallback (T,) bool: NormRouter tokens with all-negative logits)."""
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # (T, E)
            fallback = None
            if self.kind == "softmax":
                scores = torch.softmax(logits, dim=-1)
                probs = scores
            elif self.kind == "sigmoid":
                scores = torch.sigmoid(logits)
                probs = scores / scores.sum(-1, keepdim=True)
            else:
                scores, fallback = self._norm_scores(logits)
                probs = scores
            select = scores + self.score_bias if self.loss_free else scores
            idx = select.topk(self.top_k, dim=-1).indices  # (T, k)
            gates = scores.gather(-1, idx)
            if fallback is not None:
                flat = fallback & (gates.sum(-1) == 0)  # logits all equal: no score tells experts apart
                if bool(flat.any()):
                    gates = torch.where(flat[:, None], self.sigma.float() / self.top_k, gates)
            if self.renormalize and self.kind != "norm":
                gates = gates / gates.sum(-1, keepdim=True)
        if self.loss_free and self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.load_accum.add_(torch.bincount(idx.reshape(-1), minlength=self.n_experts).float())
        return idx, gates, probs, logits, fallback

    def _norm_scores(self, z: torch.Tensor):
        """NormRouter scores σ·c·ReLU(z/(‖z‖+ε)); tokens with every logit <= 0 use z − min z (module docstring)."""
        unit = z / (z.norm(dim=-1, keepdim=True) + NORM_ROUTER_EPS)
        scale = self.sigma.float() * self.norm_c
        relu = torch.relu(unit)
        fallback = (relu > 0).sum(-1) == 0  # (T,)
        if bool(fallback.any()):
            shifted = unit - unit.min(dim=-1, keepdim=True).values
            relu = torch.where(fallback[:, None], shifted, relu)
        return scale * relu, fallback

    @torch.no_grad()
    def update_bias(self) -> None:
        """Loss-free balancing: b ← b + u·sign(c̄ − c) − mean(u·sign(c̄ − c)) from the loads since the last
        call, then the count restarts. No-op without loss-free balancing or before any load was counted."""
        if not self.loss_free:
            return
        load = self.load_accum
        if float(load.sum()) == 0:
            return
        delta = self.bias_update * torch.sign(load.mean() - load)
        self.score_bias.add_(delta - delta.mean())
        load.zero_()


# ---------------------------------------------------------------------------------------------------- the layer
def _as_autocast_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class MoEFFN(nn.Module):
    """The routed FFN of layer ``layer_idx``: ``forward(x)`` (..., d) -> (..., d). Its own experts, or those of
    ``pool`` (UniPool; the pool belongs to the model, not to this layer). After each forward: ``aux_loss`` (a
    scalar tensor with the balancing and z losses of that forward, or None outside training or when there are
    none) and ``last_stats`` (detached per-layer load statistics: ``load`` (E,) assignment counts, ``cv``,
    ``max_vio``, ``dead``, ``dropped`` (capacity only), ``norm_fallback`` (NormRouter only))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, pool: ExpertPool | None = None) -> None:
        super().__init__()
        if cfg.moe_pool and pool is None:
            raise ValueError(f"layer {layer_idx}: moe_pool=true needs the ExpertPool of its group "
                             f"(TransformerLM builds them); pass pool=")
        self.layer_idx = layer_idx
        self.top_k = cfg.moe_top_k
        self.balance = cfg.moe_balance
        self.aux_coef = cfg.moe_aux_coef
        self.z_coef = cfg.moe_z_coef
        self.capacity_factor = cfg.moe_capacity_factor
        self.impl = cfg.moe_impl
        # the pool is held outside the module tree: the model registers it once (expert_pools)
        self._pool = [pool] if pool is not None else []
        n = pool.n_experts if pool is not None else cfg.moe_experts
        self.n_experts = n
        self.router = Router(cfg, n)
        self.experts = ExpertBank(cfg, n) if pool is None else None
        self.n_shared = cfg.moe_shared_experts
        if self.n_shared:
            width = self.n_shared * cfg.expert_d_ff
            self.shared_swiglu = cfg.activation == "swiglu"
            self.shared_act = None if self.shared_swiglu else activation_fn(cfg.activation)
            self.shared_w1 = nn.Parameter(torch.empty((2 if self.shared_swiglu else 1) * width, cfg.d_model))
            self.shared_w2 = nn.Parameter(torch.empty(cfg.d_model, width))
            nn.init.normal_(self.shared_w1, std=cfg.init_std)
            nn.init.normal_(self.shared_w2, std=cfg.init_std)
            # Qwen2-MoE's shared-expert gate: the shared output is scaled by sigmoid(x·g) per token
            self.shared_gate = nn.Parameter(torch.empty(1, cfg.d_model)) if cfg.moe_shared_gate else None
            if self.shared_gate is not None:
                nn.init.normal_(self.shared_gate, std=cfg.init_std)
        self.aux_loss: torch.Tensor | None = None
        self.last_stats: dict[str, torch.Tensor] = {}
        # expert parallelism: set by the training side (train/expert_parallel.py; the model imports no collective)
        # to an object with run(bank, xs, counts, impl) -> ys, the expert computation of sorted rows whose experts
        # may live on other ranks, and global_counts(counts) -> the assignments per expert over every rank
        self.dispatcher = None

    @property
    def pool(self) -> ExpertPool | None:
        return self._pool[0] if self._pool else None

    @property
    def bank(self) -> ExpertBank:
        return self.pool.experts if self.pool is not None else self.experts

    def update_bias(self) -> None:
        """Once per optimizer step (the model's on_train_step_begin): the loss-free balancing bias update."""
        self.router.update_bias()

    def _kernel(self, x: torch.Tensor, dtype: torch.dtype) -> str:
        if self.impl == "loop":
            return "loop"
        if self.impl == "auto" and dtype == torch.float32:
            return "loop"  # grouped_mm pays only in bf16 (and compiled); fp32 is the reference path
        reason = self.bank.grouped_reason(x, dtype)
        if reason is not None:
            _say_once(reason)
            return "loop"
        return "grouped"

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.shared_w1.to(x.dtype))
        if self.shared_swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = self.shared_act(h)
        y = F.linear(h, self.shared_w2.to(x.dtype))
        if self.shared_gate is not None:
            y = torch.sigmoid(F.linear(x, self.shared_gate.to(x.dtype))) * y
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (T, d)
        T, k, E = x2.shape[0], self.top_k, self.n_experts
        idx, gates, probs, logits, fallback = self.router(x2)
        flat = idx.reshape(-1)  # (T*k,) token-major
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E)
        token_of = order // k
        keep_sorted = None
        kept = counts
        if self.capacity_factor is not None:
            cap = math.ceil(self.capacity_factor * k * T / E)
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(T * k, device=x.device) - starts[flat[order]]
            keep_sorted = pos < cap  # first `cap` assignments of each expert, in token order
            kept = counts.clamp(max=cap)
            token_of = token_of[keep_sorted]
        dtype = _as_autocast_dtype(x2)
        xc = x2.to(dtype)  # cast once, before the k-fold gather
        xs = xc.index_select(0, token_of)
        if self.dispatcher is None:
            ys = self.bank(xs, kept, self._kernel(x2, dtype))  # (S, d)
            load = counts
        else:  # expert parallelism: rows travel to the ranks owning their experts and back, in the same order
            ys = self.dispatcher.run(self.bank, xs, kept, self._kernel(x2, dtype))
            load = self.dispatcher.global_counts(counts)  # (E,) over the whole data-parallel batch
            if self.router.loss_free and self.training and torch.is_grad_enabled():
                with torch.no_grad():  # the router counted this rank's share: add the others' (global bias)
                    self.router.load_accum.add_((load - counts).float())
        # back to (token, slot) order: row r of the sorted list holds assignment order[r]
        inv_rows = torch.empty_like(order)
        if keep_sorted is None:
            inv_rows[order] = torch.arange(T * k, device=x.device)
        else:  # dropped assignments read a zero row appended after the S kept ones
            rank = torch.cumsum(keep_sorted.long(), 0) - 1
            inv_rows[order] = torch.where(keep_sorted, rank, torch.full_like(rank, ys.shape[0]))
            ys = torch.cat([ys, ys.new_zeros(1, ys.shape[1])], 0)
        per_slot = ys.index_select(0, inv_rows).view(T, k, -1)
        y = (per_slot.float() * gates.unsqueeze(-1)).sum(1).to(ys.dtype)
        if self.n_shared:
            y = y + self._shared(xc)
        self._losses(load, probs, logits, T if self.dispatcher is None else None)
        with torch.no_grad():
            stats = {"load": load.detach().float(), **load_stats(load)}
            if keep_sorted is not None:
                stats["dropped"] = (T * k - keep_sorted.sum()).float()
            if fallback is not None:
                stats["norm_fallback"] = fallback.float().sum()
        self.last_stats = stats
        out_dtype = x.dtype if not torch.is_autocast_enabled(x.device.type) else y.dtype
        return y.to(out_dtype).view(*shape[:-1], -1)

    def _losses(self, counts: torch.Tensor, probs: torch.Tensor, logits: torch.Tensor, T: int | None) -> None:
        """Set ``aux_loss`` (training forwards with gradients only). ``T`` None: ``counts`` are global (expert
        parallelism), so f_i is taken over every rank's assignments."""
        self.aux_loss = None
        if not (self.training and torch.is_grad_enabled()):
            return
        terms = []
        frac = counts.float() / (T * self.top_k if T is not None else counts.sum())  # f_i, sums to 1
        P = probs.mean(0)  # (E,)
        if self.balance == "aux" and self.aux_coef > 0:
            terms.append(self.aux_coef * self.n_experts * (frac.detach() * P).sum())
        elif self.balance == "pool":
            pool = self.pool
            if self.aux_coef > 0 and float(pool.has_prev) > 0:
                share = self.aux_coef * self.n_experts / pool.layers_per_forward
                terms.append(share * (pool.prev_load * P).sum())
            pool.record(frac.detach())
        if self.balance != "pool" and self.pool is not None:
            self.pool.record(frac.detach())  # pool-wide load statistics whatever the balancing
        if self.z_coef > 0:
            terms.append(self.z_coef * torch.logsumexp(logits, dim=-1).square().mean())
        if terms:
            self.aux_loss = torch.stack(terms).sum()


def make_ffn(cfg: ModelConfig, layer_idx: int, pool: ExpertPool | None = None) -> nn.Module:
    """The FFN of layer ``layer_idx``: :class:`MoEFFN` when the config routes that layer, else the dense MLP."""
    if layer_idx in cfg.moe_layer_ids:
        return MoEFFN(cfg, layer_idx, pool)
    return MLP(cfg)


def build_pools(cfg: ModelConfig) -> nn.ModuleList | None:
    """UniPool: the shared expert pools of a config (one per group), or None without moe_pool."""
    if not cfg.moe_pool:
        return None
    return nn.ModuleList(ExpertPool(cfg, group) for group in cfg.pool_groups)


def pool_of(cfg: ModelConfig, pools: nn.ModuleList | None, layer_idx: int) -> ExpertPool | None:
    if pools is None:
        return None
    for pool in pools:
        if layer_idx in pool.layers:
            return pool
    return None


def weights_kind_hint(missing: list[str], unexpected: list[str]) -> str:
    """A sentence naming a dense/MoE mismatch between weights and a config (empty when there is none)."""
    def moe(names):
        return [n for n in names if ".router." in n or ".experts." in n or "expert_pools." in n]

    def dense(names):
        return [n for n in names if ".mlp.fc1." in n or ".mlp.fc2." in n]

    if moe(unexpected) and dense(missing):
        return (" — the weights hold mixture-of-experts FFNs but the config is dense: use the config saved with "
                "these weights (its moe_* fields, e.g. moe_experts)")
    if dense(unexpected) and moe(missing):
        return (" — the weights hold dense FFNs but the config asks for mixture-of-experts FFNs: set moe_experts=0 "
                "(dense) or start from an MoE checkpoint")
    if moe(missing) or moe(unexpected):
        return (" — the mixture-of-experts layout differs (moe_layers, moe_pool, moe_pool_groups, "
                "moe_shared_experts, moe_router or moe_balance): use the config saved with these weights")
    return ""
