"""G-MAP's memory fusion modules (the ``gmap`` submodule a TransformerLM with ``gmap_layers`` builds).

The formulas, the paper and what is a reconstruction are in :mod:`morphlm.model.gmap`, which also holds
:class:`~morphlm.model.gmap.GMAPModel`, the model that supplies the frozen memory these modules read. This
module imports no model class, so transformer.py can build the fusion modules without an import cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def memory_sources(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """For each augmented domain layer (ascending), the general layers its fusion reads."""
    layers, n_gen = cfg.gmap_layer_ids, cfg.gmap_memory_layers
    if cfg.gmap_fusion == "single":
        return [(n_gen - 1,) for _ in layers]
    if cfg.gmap_fusion in ("multiple", "gated"):
        return [tuple(range(n_gen)) for _ in layers]
    out, prev = [], -1
    for i, layer in enumerate(layers):
        end = n_gen - 1 if i == len(layers) - 1 else layer
        out.append(tuple(range(prev + 1, end + 1)))
        prev = layer
    return out


class MemoryFusion(nn.Module):
    """One augmented layer's fusion of the general layers ``sources`` into M, and its fusion weight λ."""

    def __init__(self, cfg: ModelConfig, sources: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, self.sources = cfg.gmap_fusion, sources
        self.weight_init = cfg.gmap_weight_init
        self.fusion_weight = nn.Parameter(torch.empty(()))  # λ
        if self.kind == "multiple":
            self.layer_logits = nn.Parameter(torch.empty(len(sources)))
        elif self.kind in ("gated", "chunk_gated"):
            self.gate = nn.Parameter(torch.empty(cfg.d_model))  # w_g
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.fusion_weight.fill_(self.weight_init)
        if self.kind == "multiple":
            self.layer_logits.zero_()
        elif self.kind in ("gated", "chunk_gated"):
            self.gate.zero_()

    def hook(self, module: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """Forward pre-hook of the block's output projection: its input, the attention context, is replaced."""
        owner = self.owner
        if owner.states is None:
            raise RuntimeError("this is a G-MAP domain model: its augmented layers need the frozen general "
                               "model's memory; run it as a GMAPModel (morphlm.model.gmap) or load the "
                               "checkpoint with load_model, which re-opens the frozen parent")
        return (owner.read(self.block, self, args[0]),)

    def forward(self, states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """states: the general model's block outputs, each (B, T, D) -> M (B, T, D)."""
        if self.kind == "single":
            return states[self.sources[0]]
        m = torch.stack([states[j] for j in self.sources], dim=2)  # (B, T, J, D)
        if self.kind == "multiple":
            w = self.layer_logits.softmax(0).to(m.dtype)
            return (m * w[:, None]).sum(2)
        g = (m @ self.gate.to(m.dtype)).float().softmax(dim=-1).to(m.dtype)  # (B, T, J)
        return (m * g[..., None]).sum(2)


class GMAPMemory(nn.Module):
    """The fusion modules of a G-MAP domain model (``model.gmap``) and the hooks that apply them: a forward
    pre-hook on each augmented layer's output projection rewrites the attention context it receives. The
    memory of the current forward is set by :class:`GMAPModel` (``states``, ``mask``) and cleared after it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer_ids = cfg.gmap_layer_ids
        self.fusions = nn.ModuleDict({str(layer): MemoryFusion(cfg, src)
                                      for layer, src in zip(self.layer_ids, memory_sources(cfg))})
        self.states: tuple[torch.Tensor, ...] | None = None
        self.mask: torch.Tensor | None = None

    def reset_parameters(self) -> None:
        for fusion in self.fusions.values():
            fusion.reset_parameters()

    def attach(self, blocks: nn.ModuleList) -> None:
        """Hook the augmented blocks. Each hook is a bound method of a fusion module, which refers to its block
        and to this module outside the module tree, so ``copy.deepcopy`` of the model hooks the copy's own."""
        for layer in self.layer_ids:
            fusion = self.fusions[str(layer)]
            object.__setattr__(fusion, "block", blocks[layer])
            object.__setattr__(fusion, "owner", self)
            blocks[layer].attn.proj.register_forward_pre_hook(fusion.hook)

    def read(self, block: nn.Module, fusion: MemoryFusion, context: torch.Tensor) -> torch.Tensor:
        """The context (B, T, D) of ``block``'s attention, blended with its attention over the fused memory."""
        attn = block.attn
        memory = fusion(self.states).to(context.dtype)
        if block.placement != "post":
            memory = block.norm1(memory)
        B, T, _ = context.shape
        W, b = attn.qkv.weight, attn.qkv.bias
        kv = slice(attn.q_dim, attn.q_dim + 2 * attn.kv_dim)
        k, v = F.linear(memory, W[kv], None if b is None else b[kv]).split((attn.kv_dim, attn.kv_dim), dim=-1)
        if attn.qk_norm == "full":
            k = attn.k_norm(k)
        q = context.view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = v.view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        if attn.qk_norm == "head":
            k = attn.k_norm(k)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.mask, dropout_p=attn.dropout if attn.training else 0.0,
            is_causal=attn.causal and self.mask is None, enable_gqa=attn.n_kv_heads != attn.n_heads)
        out = out.transpose(1, 2).reshape(B, T, attn.q_dim)
        lam = fusion.fusion_weight.to(context.dtype)
        return context + lam * (out - context)
