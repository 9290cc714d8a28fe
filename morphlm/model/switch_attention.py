"""Switch Attention and sliding-window attention: the ``attention = "switch" | "sliding"`` variants of the core model.

Switch Attention (Zhao, Li, Wu et al., 2026): in every layer each token is routed either to full causal attention
or to causal sliding-window attention over the keys ``[t-w+1, t]``; both branches share the layer's q/k/v.
The public material gives the idea, the continual pretraining from a full-attention model and a forward-only
prefill kernel; the details below are a **reconstruction** where it is silent:

* Router: ``p_t = sigmoid(w_l · RMSNorm(x_t) + b_l)`` on the attention input ``x_t`` (the block's normalised
  hidden state), the RMSNorm without a gain of its own (``w_l`` already scales it), computed in fp32. ``w_l``
  starts at zero and ``b_l`` at :data:`ROUTER_BIAS_INIT` (p = 0.95 for every token): a model converted from a
  full-attention checkpoint starts as that model, logits equal.
* Hard gate ``g_t = 1[p_t > 0.5]``: ``y_t = Full_t`` where ``g_t`` else ``SWA_t``.
* Gradient estimators (``switch_estimator``), both exact in the forward pass and identical for q/k/v (only the
  chosen branch carries gradient), differing only in the router's gradient:

  - ``two_branch`` (the reference): straight-through, ``y = hard + (p − sg(p))·(Full − SWA)``, so
    ``∂y/∂p = Full − SWA``; needs both branches at every token.
  - ``one_branch`` (efficient, a reconstruction): each token's chosen branch is scaled by a factor that is 1 in
    value, ``p/sg(p)`` when full-routed and ``(1−p)/sg(1−p)`` when local-routed, so
    ``∂y/∂p = Full/p`` or ``−SWA/(1−p)``: the single-sample likelihood-ratio form of ``∂E_g[y]/∂p`` for
    ``g ~ Bernoulli(p)``, evaluated at the hard gate. It needs only the chosen branch.

* Regulariser ``L_reg = λ·ρ̄`` per layer, ``ρ̄`` = mean ``p_t`` over the tokens with position ``t ≥ w``
  (0-based; for ``t < w`` the window covers the whole prefix, so both branches are the same function and those
  tokens are excluded). ``λ`` (a buffer, saved with the weights) follows dual ascent once per optimizer step,
  outside autograd: ``λ ← max(0, λ + η(ρ_hard − ρ*))`` with ``ρ_hard`` the REALISED full fraction (hard gates,
  ``t ≥ w``) over the last step's training forwards (accumulated in buffers too, so a resumed run updates ``λ``
  bit-exactly). Driving λ with the soft ``ρ̄`` instead let every router collapse to local attention: p can sit
  near 0.3 everywhere (soft mean on target) while no token passes the 0.5 threshold; on the realised fraction λ
  falls to 0 as soon as too few tokens go full, and the language-model loss can reopen them (a reconstruction:
  the paper does not publish its update). One multiplier per layer: each layer
  is steered toward ``ρ*`` (the paper does not say whether the constraint is per layer or global).

Execution. Without a padding mask the local branch is banded window attention (on CPU explicit matmuls over
blocks of 64 queries × 64 + w keys, :func:`banded_window`; elsewhere blocks of ``w`` queries × ``2w`` keys through
SDPA; cost O(T·w)); full attention then runs only for the gathered full-routed queries at ``t ≥ w``
(one SDPA call over the padded gather, keys/values shared), and its rows are scattered over the local result. The
``two_branch`` estimator in training computes full attention for every token (it needs ``Full − SWA``); without
gradients (evaluation, generation) both estimators take the efficient path. With a padding mask both branches run
densely with boolean masks. This SDPA path runs on every device and is the one the CPU tests exercise. In CUDA
training with the one-branch estimator (no dropout, no padding mask) one compiled FlexAttention call computes
the routed attention instead, full-routed queries permuted first so that the local queries' blocks stay sparse
(:func:`flex_routed`; ``MORPHLM_SWITCH_FLEX=0`` turns it off); on CPU FlexAttention has no backward.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

ROUTER_BIAS_INIT = 3.0  # sigmoid(3) = 0.953 > 0.5: every token starts full-routed (the source model's function)


class SwitchRouter(nn.Module):
    """One layer's router and the state of its adaptive regulariser (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        self.eps = cfg.norm_eps
        self.window = cfg.window
        self.target = cfg.full_fraction
        self.lambda_lr = cfg.switch_lambda_lr
        self.estimator = cfg.switch_estimator
        self.proj = nn.Linear(cfg.d_model, 1, bias=True)
        self.register_buffer("lam", torch.zeros(()))  # the regulariser's multiplier λ
        self.register_buffer("rho_sum", torch.zeros(()))  # Σ ρ̄ over this step's training forwards
        self.register_buffer("rho_calls", torch.zeros(()))
        self.reg_loss: torch.Tensor | None = None  # λ·ρ̄ of the last training forward
        self.last_full: torch.Tensor | None = None  # realised full fraction (hard, t >= w) of the last forward
        self.last_rho: torch.Tensor | None = None  # ρ̄ (mean p, t >= w) of the last forward

    @torch.no_grad()
    def reset_router(self) -> None:
        """Start as full attention: w = 0, b = ROUTER_BIAS_INIT."""
        self.proj.weight.zero_()
        self.proj.bias.fill_(ROUTER_BIAS_INIT)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> p (B, T) in fp32 (also under bf16 autocast: the route is a threshold on p)."""
        with torch.autocast(x.device.type, enabled=False):
            n = F.rms_norm(x.float(), (self.d_model,), eps=self.eps)
            return torch.sigmoid(F.linear(n, self.proj.weight.float(), self.proj.bias.float())).squeeze(-1)

    def account(self, p: torch.Tensor, gate: torch.Tensor) -> None:
        """Record the regulariser and the statistics of one forward (p, gate: (B, T))."""
        eligible = p[:, self.window:]
        if eligible.numel() == 0:  # a sequence no longer than the window: both branches are one function
            self.reg_loss = None
            self.last_full = self.last_rho = torch.zeros((), device=p.device)
            return
        rho = eligible.mean()
        self.last_rho = rho.detach()
        self.last_full = gate[:, self.window:].float().mean()
        if self.training and torch.is_grad_enabled():
            self.reg_loss = self.lam * rho
            with torch.no_grad():  # the constraint is on the REALISED (hard) fraction: see update_lambda
                self.rho_sum += self.last_full
                self.rho_calls += 1
        else:
            self.reg_loss = None

    @torch.no_grad()
    def update_lambda(self) -> None:
        """Dual ascent, once per optimizer step: λ ← max(0, λ + η(ρ_hard − ρ*)) with ρ_hard the realised full
        fraction (tokens with p > 0.5, t ≥ w) of the last step's forwards."""
        if float(self.rho_calls) > 0:
            rho = self.rho_sum / self.rho_calls
            self.lam.copy_((self.lam + self.lambda_lr * (rho - self.target)).clamp_min(0.0))
        self.rho_sum.zero_()
        self.rho_calls.zero_()


# ---------------------------------------------------------------------------------------------------- branches
def full_branch(q, k, v, mask, drop: float) -> torch.Tensor:
    """Full causal attention, (B, H, T, Dh); ``mask`` (B, 1, T, T) allowed (causal folded in) or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=mask is None)


def window_mask(T: int, window: int, device) -> torch.Tensor:
    """(T, T) bool: query t may attend key s iff t - window < s <= t."""
    t = torch.arange(T, device=device)
    diff = t[:, None] - t[None, :]
    return (diff >= 0) & (diff < window)


def local_branch(q, k, v, window: int, mask, drop: float) -> torch.Tensor:
    """Causal sliding-window attention over keys [t-w+1, t], (B, H, T, Dh). Without a padding mask: banded — on
    CPU :func:`banded_window` (explicit matmuls over blocks of :data:`CPU_BAND_BLOCK` queries), elsewhere blocks of
    ``w`` queries against their ``2w`` keys through SDPA."""
    B, H, T, Dh = q.shape
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask & window_mask(T, window, q.device),
                                              dropout_p=drop)
    if T <= window:
        return full_branch(q, k, v, None, drop)
    if q.device.type == "cpu":
        return banded_window(q, k, v, window, drop)
    return banded_window_sdpa(q, k, v, window, drop)


def banded_window_sdpa(q, k, v, window: int, drop: float) -> torch.Tensor:
    """Causal sliding-window attention (B, H, T, Dh) without a padding mask through SDPA: blocks of ``w`` queries
    against their ``2w`` keys (the previous block and their own) under a boolean band mask."""
    B, H, T, Dh = q.shape
    w = window
    n = -(-T // w)
    pad = n * w - T
    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, n, w, Dh)
    kp = F.pad(k, (0, 0, w, pad))  # (B, H, (n+1)·w, Dh): w zero keys in front of block 0
    vp = F.pad(v, (0, 0, w, pad))
    kb = kp.unfold(2, 2 * w, w).transpose(-1, -2)  # (B, H, n, 2w, Dh)
    vb = vp.unfold(2, 2 * w, w).transpose(-1, -2)
    i = torch.arange(w, device=q.device)[:, None]
    c = torch.arange(2 * w, device=q.device)[None, :]
    band = (c > i) & (c <= i + w)  # (w, 2w): key c of the block pair is within the window of query i
    first = band & (c >= w)  # block 0: the w padding keys in front are not keys
    allowed = torch.stack([first] + [band] * (n - 1)) if n > 1 else first[None]  # (n, w, 2w)
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed, dropout_p=drop)  # (B, H, n, w, Dh)
    return y.reshape(B, H, n * w, Dh)[:, :, :T]


CPU_BAND_BLOCK = 64
"""Queries per block of :func:`banded_window`. Each block of b queries reads b + w keys, so smaller blocks waste
fewer scores (b = 64, w = 128: 192 columns per query for 128 useful ones, against 256 with b = w) but make smaller
matmuls; 64 was the fastest of 32/64/128/256 at w = 128, T = 1024, head dim 32, bf16, one thread on this
project's 2-core CPU (forward+backward, thread CPU time: ≈ 0.7× SDPA's causal kernel, where SDPA over the same
bands with a boolean mask took ≈ 1.35×)."""


def banded_window(q, k, v, window: int, drop: float, block: int | None = None) -> torch.Tensor:
    """Causal sliding-window attention (B, H, T, Dh) without a padding mask as explicit batched matmuls: the
    queries in blocks of ``block`` (default :data:`CPU_BAND_BLOCK`, at most ``window``), each block against the
    ``block + window`` keys that can reach it, masked to [t-w+1, t], softmax, times the values. O(T·(b+w)) scores;
    on CPU faster than SDPA's fused kernel, which gains nothing from a banded boolean mask."""
    B, H, T, Dh = q.shape
    w = window
    b = max(1, min(block or CPU_BAND_BLOCK, w))
    n = -(-T // b)
    pad = n * b - T
    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, n, b, Dh)
    kp = F.pad(k, (0, 0, w, pad))  # w zero keys in front: block j's keys start at padded index j·b
    vp = F.pad(v, (0, 0, w, pad))
    kb = kp.unfold(2, b + w, b).transpose(-1, -2)  # (B, H, n, b + w, Dh)
    vb = vp.unfold(2, b + w, b).transpose(-1, -2)
    i = torch.arange(b, device=q.device)[:, None]
    c = torch.arange(b + w, device=q.device)[None, :]
    position = torch.arange(n, device=q.device)[:, None, None] * b + c[None] - w  # key position of column c
    allowed = ((c > i) & (c <= i + w))[None] & (position >= 0)  # (n, b, b + w)
    scores = (qb @ kb.transpose(-1, -2)) * (Dh ** -0.5)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    if drop > 0.0:
        probs = F.dropout(probs, p=drop)
    return (probs @ vb).reshape(B, H, n * b, Dh)[:, :, :T]


def gathered_full(q, k, v, select: torch.Tensor, drop: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Full causal attention for the selected queries only. select (B, T) bool. Returns (rows (B, H, M, Dh), scatter
    index (B, M) with T marking padding), or None when nothing is selected."""
    B, H, T, Dh = q.shape
    counts = select.sum(dim=1)
    M = int(counts.max())
    if M == 0:
        return None
    order = torch.argsort((~select).to(torch.uint8), dim=1, stable=True)[:, :M]  # selected first, in position order
    valid = torch.arange(M, device=q.device)[None, :] < counts[:, None]
    pos = torch.where(valid, order, torch.zeros_like(order))  # padding rows read position 0 (discarded)
    qg = q.gather(2, pos[:, None, :, None].expand(B, H, M, Dh))
    allowed = torch.arange(T, device=q.device)[None, None, :] <= pos[:, :, None]  # (B, M, T)
    rows = F.scaled_dot_product_attention(qg, k, v, attn_mask=allowed[:, None], dropout_p=drop)  # (B, H, M, Dh)
    return rows, torch.where(valid, order, torch.full_like(order, T))


def scatter_rows(base: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``base`` (B, H, T, Dh) with rows (B, H, M, Dh) written at positions ``index`` (B, M); index T = padding."""
    B, H, T, Dh = base.shape
    ext = torch.cat([base, base.new_zeros(B, H, 1, Dh)], dim=2)
    ext = ext.scatter(2, index[:, None, :, None].expand(B, H, index.shape[1], Dh), rows)
    return ext[:, :, :T]


# ---------------------------------------------------------------------------------------------------- CUDA
def flex_enabled() -> bool:
    """FlexAttention is used for routed layers on CUDA unless ``MORPHLM_SWITCH_FLEX=0`` (then the SDPA path runs,
    as on CPU, where FlexAttention has no backward)."""
    return os.environ.get("MORPHLM_SWITCH_FLEX", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_routed(q, k, v, gate: torch.Tensor, window: int, kernel=None) -> torch.Tensor:
    """Routed attention (B, H, T, Dh) in one FlexAttention call (CUDA only): the queries are permuted so that the
    full-routed ones come first (their blocks are the only dense ones; the local blocks' block mask stays sparse),
    the mask_mod reads each permuted query's position and route, and the output is permuted back. ``kernel``: the
    flex_attention to call (default: the compiled one). Used in CUDA training (fixed shapes: one compilation);
    evaluation and generation, whose lengths vary, take the SDPA path. Forward and backward equal the SDPA path's
    (tests/test_switch_attention.py checks the forward on CPU with the eager kernel, and forward and backward on
    CUDA where a GPU is present)."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, H, T, Dh = q.shape
    order = torch.argsort((~gate).to(torch.uint8), dim=1, stable=True)  # (B, T): full-routed first
    inverse = torch.argsort(order, dim=1)
    routed_full = gate.gather(1, order)  # (B, T) route of each permuted query

    def mask_mod(b, h, q_idx, kv_idx):
        pos = order[b, q_idx]
        return (kv_idx <= pos) & (routed_full[b, q_idx] | (pos - kv_idx < window))

    block_mask = create_block_mask(mask_mod, B, None, T, T, device=q.device)
    qp = q.gather(2, order[:, None, :, None].expand(B, H, T, Dh))
    y = (kernel or _compiled_flex())(qp, k, v, block_mask=block_mask)
    return y.gather(2, inverse[:, None, :, None].expand(B, H, T, Dh))


# ---------------------------------------------------------------------------------------------------- the variant
def variant_attention(router: SwitchRouter | None, attention: str, window: int, x: torch.Tensor, q: torch.Tensor,
                      k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, drop: float) -> torch.Tensor:
    """The attention output (B, H, T, Dh) of a sliding-window (``router`` None) or Switch Attention layer.
    q (B, H, T, Dh), k/v (B, Hkv, T, Dh) after positions; x (B, T, D) the attention input the router reads."""
    if k.shape[1] != q.shape[1]:  # grouped-query attention: the heads share their kv head
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if attention == "sliding":
        return local_branch(q, k, v, window, mask, drop)
    T = q.shape[2]
    p = router.probs(x)  # (B, T) fp32
    gate = p > 0.5
    router.account(p, gate)
    needs_grad = torch.is_grad_enabled() and p.requires_grad
    two_branch = router.estimator == "two_branch" and needs_grad
    g = gate[:, None, :, None]
    if needs_grad and not two_branch and mask is None and q.is_cuda and drop == 0.0 and flex_enabled():
        hard = flex_routed(q, k, v, gate, window)  # CUDA training: one FlexAttention call, full-routed queries first
        return hard * _one_branch_scale(p, gate, q.dtype)
    local = local_branch(q, k, v, window, mask, drop)
    if two_branch or mask is not None:
        full = full_branch(q, k, v, mask, drop)
        hard = torch.where(g, full, local)
        if not needs_grad:
            return hard
        if two_branch:  # straight-through: ∂y/∂p = Full − SWA
            st = (p - p.detach()).to(q.dtype)[:, None, :, None]  # 0 in value
            return hard + st * (full - local)
        return hard * _one_branch_scale(p, gate, q.dtype)
    select = gate.clone()
    select[:, :window] = False  # t < w: the window covers the prefix, the local result is the full one
    got = gathered_full(q, k, v, select, drop)
    hard = local if got is None else scatter_rows(local, *got)
    if not needs_grad:
        return hard
    # one-branch estimator: the chosen branch times a factor equal to 1 in value (module docstring)
    return hard * _one_branch_scale(p, gate, q.dtype)


def _one_branch_scale(p: torch.Tensor, gate: torch.Tensor, dtype) -> torch.Tensor:
    """(B, 1, T, 1): p/sg(p) where full-routed, (1−p)/sg(1−p) where local-routed — 1 in value (x/x is exact in
    fp32). The chosen denominator is >= 0.5; the other is clamped so a saturated p gives no 0/0 in the backward."""
    tiny = torch.finfo(torch.float32).tiny
    full = p / p.detach().clamp_min(tiny)
    local = (1 - p) / (1 - p).detach().clamp_min(tiny)
    return torch.where(gate, full, local).to(dtype)[:, None, :, None]
