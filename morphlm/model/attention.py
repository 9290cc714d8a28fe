"""Multi-head / grouped-query self-attention with optional rotary positions.

The fast path is ``scaled_dot_product_attention``. When the caller asks for attention scores
(distillation needs them) the explicit path runs instead and returns the *raw pre-softmax* scores
``q·kᵀ/√d_head`` of shape (B, H, T, T), before any mask is added: a distillation loss applies its own
mask, so padded or future positions never leak -inf into an MSE.

Incremental decoding passes a :class:`KVCache` view (``kv``): the new tokens' keys and values are written into
the layer's buffers after the rotary positions, and the queries attend to the cached keys up to their own
position (within the window for sliding attention; Switch Attention's router picks per token, as without a cache).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .norms import LayerNorm, RMSNorm
from .switch_attention import SwitchRouter, variant_attention


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T_max, d_head) in the LLaMA "rotate half" convention."""
    dh = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.float32, device=device) / dh))
    t = torch.arange(cfg.max_seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (T_max, dh/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T_max, dh)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, Dh); cos/sin: (T, Dh)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCacheFullError(ValueError):
    """A decoding step would write past the end of a :class:`KVCache`; the message says how to fix it."""


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    ``max_len`` positions are reserved per layer; each layer's buffers (B, Hkv, max_len, Dh) are allocated at its
    first write, in the dtype and on the device of its keys. ``length`` is the number of cached positions: the
    model writes every layer's keys at ``length .. length + T - 1`` and then calls :meth:`advance`."""

    def __init__(self, n_layers: int, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"a KV cache needs room for at least one position, got max_len={max_len}")
        self.max_len = int(max_len)
        self.length = 0
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def check_room(self, T: int) -> None:
        if self.length + T > self.max_len:
            raise KVCacheFullError(
                f"the KV cache holds {self.max_len} positions and {self.length} are used: {T} more token(s) do "
                f"not fit; ask for fewer new tokens (or a shorter prompt), or build the cache with a larger "
                f"max_len (at most the model's max_seq_len)")

    def repeat(self, n: int) -> "KVCache":
        """A new cache holding this (batch-1) cache's positions for ``n`` sequences: a shared prefix (one prompt)
        continued by ``n`` different suffixes."""
        out = KVCache(len(self.keys), self.max_len)
        out.length = self.length
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                if k.shape[0] != 1:
                    raise ValueError(f"only a cache of one sequence can be repeated, this one holds {k.shape[0]}")
                out.keys[i], out.values[i] = k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)
        return out

    def layer(self, i: int) -> "LayerKV":
        return LayerKV(self, i)

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer ``i``'s new keys/values (B, Hkv, T, Dh) at the current length; return every cached one."""
        B, Hkv, T, Dh = k.shape
        self.check_room(T)
        if self.keys[i] is None:
            self.keys[i] = k.new_zeros(B, Hkv, self.max_len, Dh)
            self.values[i] = v.new_zeros(B, Hkv, self.max_len, Dh)
        kb, vb = self.keys[i], self.values[i]
        if kb.shape[0] != B:
            raise ValueError(f"this KV cache was filled with a batch of {kb.shape[0]} sequences, not {B}; use one "
                             f"cache per batch")
        end = self.length + T
        kb[:, :, self.length:end] = k
        vb[:, :, self.length:end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def advance(self, T: int) -> None:
        self.check_room(T)
        self.length += T


class LayerKV:
    """One layer's view of a :class:`KVCache` (what :class:`Attention` receives)."""

    def __init__(self, cache: KVCache, index: int) -> None:
        self.cache, self.index = cache, index

    @property
    def start(self) -> int:
        return self.cache.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.append(self.index, k, v)


class Attention(nn.Module):
    """Self-attention. ``qkv`` is one fused projection whose output rows are [q; k; v]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.causal = cfg.causal
        self.dropout = cfg.dropout
        self.q_dim = cfg.d_model
        self.kv_dim = cfg.kv_dim
        qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias  # Qwen2-MoE: q/k/v biased, o_proj not
        self.qkv = nn.Linear(cfg.d_model, self.q_dim + 2 * self.kv_dim, bias=qkv_bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        # QK-norm (cfg.qk_norm): "head" normalises each head's q/k over head_dim (Qwen3), "full" the whole q and k
        # projections (OLMoE); both before the rotary positions
        self.qk_norm = cfg.qk_norm
        if self.qk_norm != "none":
            q_dim, k_dim = (self.head_dim, self.head_dim) if self.qk_norm == "head" else (self.q_dim, self.kv_dim)

            def norm(dim: int) -> nn.Module:
                if cfg.norm == "rmsnorm":
                    return RMSNorm(dim, cfg.norm_eps)
                return LayerNorm(dim, cfg.norm_eps, bias=cfg.bias)

            self.q_norm, self.k_norm = norm(q_dim), norm(k_dim)
        # attention variant (switch_attention.py): "sliding" window, or "switch" with this layer's router
        self.variant, self.window = cfg.attention, cfg.window
        self.switch = SwitchRouter(cfg) if cfg.attention == "switch" else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos/sin (T_max or T, Dh) or (B, 1, T, Dh)
        mask: torch.Tensor | None = None,
        return_scores: bool = False,
        kv: LayerKV | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, D). mask: optional bool (B, 1, T, T), True = may attend (already causal if needed).
        ``kv``: this layer's KV-cache view (incremental decoding, full causal attention only); ``rope`` then
        holds the tables of the new tokens' positions (the model passes them)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            if cos.dim() == 2:  # the model's full (T_max, Dh) tables; gathered ones are already (…, T, Dh)
                cos, sin = cos[:T], sin[:T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        drop = self.dropout if self.training else 0.0
        scores = None
        if kv is not None:
            if return_scores or mask is not None or not self.causal:
                raise ValueError("a KV cache serves causal attention without scores or padding masks; run this "
                                 "forward without the cache")
            y = self._cached(x, q, k, v, kv, drop)
        elif self.variant != "full":
            y = variant_attention(self.switch, self.variant, self.window, x, q, k, v, mask, drop)
            if return_scores:
                rep = self.n_heads // self.n_kv_heads
                kr = k.repeat_interleave(rep, dim=1) if rep > 1 else k
                scores = (q @ kr.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T), raw
        elif return_scores:
            if self.n_kv_heads != self.n_heads:
                rep = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T), raw
            allowed = mask
            if allowed is None and self.causal:
                allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
            probs = F.dropout(masked.float().softmax(dim=-1).to(q.dtype), drop, self.training)
            y = probs @ v  # (B, H, T, Dh)
        else:
            gqa = self.n_kv_heads != self.n_heads
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=drop,
                is_causal=self.causal and mask is None, enable_gqa=gqa,
            )  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, self.q_dim)  # (B, T, D)
        return self.proj(y), scores

    def _cached(self, x, q, k, v, kv: LayerKV, drop: float) -> torch.Tensor:
        """Attention of the new queries (B, H, T, Dh) at positions start .. start+T-1 over every cached key.
        Full: keys 0 .. t. Sliding: keys t-w+1 .. t. Switch: the router picks per token between the two, as the
        uncached layer does (its regulariser statistics are not recorded: decoding is not training)."""
        T, start = q.shape[2], kv.start
        k, v = kv.append(k, v)  # (B, Hkv, start + T, Dh)
        gqa = self.n_kv_heads != self.n_heads
        diff = (torch.arange(start, start + T, device=q.device)[:, None]
                - torch.arange(start + T, device=q.device)[None, :])  # query position - key position
        if self.variant == "full" or self.variant == "switch":
            # a prefill from an empty cache takes the uncached kernel; later chunks see keys 0 .. t
            allowed = diff >= 0 if T > 1 and start > 0 else None
            full = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop,
                                                  is_causal=T > 1 and start == 0, enable_gqa=gqa)
            if self.variant == "full":
                return full
        local = F.scaled_dot_product_attention(q, k, v, attn_mask=(diff >= 0) & (diff < self.window),
                                               dropout_p=drop, enable_gqa=gqa)
        if self.variant == "sliding":
            return local
        gate = self.switch.probs(x) > 0.5  # (B, T)
        return torch.where(gate[:, None, :, None], full, local)
